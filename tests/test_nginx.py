"""Real nginx (Debian's) with our nginx.conf in front of the service."""

from __future__ import annotations

import http.client
import itertools
import json
import time
from collections.abc import Iterator
from typing import Any

from conftest import openai_env, sim_prompt
from nginxfix import needs_nginx
from sseclient import Comment, Event, collect, open_stream, start, text_of, until_first_token

pytestmark = needs_nginx


def test_tokens_arrive_one_by_one_through_nginx(service_factory: Any, nginx_factory: Any,
                                                sim: Any) -> None:
    service = service_factory(openai_env(sim, BUFFER_MAX_TOKENS=1))
    proxy = nginx_factory(service.port)
    words = [f"w{i} " for i in range(6)]
    stream = start(proxy.url, {"messages": sim_prompt(tokens=words, delay=0.4)})
    assert stream.status == 200
    assert "gzip" not in stream.headers.get("Content-Encoding", "")
    assert stream.headers["X-Accel-Buffering"] == "no"
    assert stream.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    events = collect(stream)
    tokens = [e for e in events[:-1] if e.json["type"] == "token"]
    assert [e.json["token"] for e in tokens] == words
    gaps = [b.at - a.at for a, b in itertools.pairwise(tokens)]
    # 0.4 s apart at the upstream: a buffering proxy would deliver them together.
    assert all(gap > 0.2 for gap in gaps), gaps


def test_heartbeats_keep_a_silent_stream_past_the_read_timeout(
        service_factory: Any, nginx_factory: Any, sim: Any) -> None:
    service = service_factory(openai_env(sim, HEARTBEAT_INTERVAL=1, FIRST_TOKEN_TIMEOUT=30))
    proxy = nginx_factory(service.port, read_timeout="3s")
    started = time.monotonic()
    stream = start(proxy.url, {"messages": sim_prompt(first_delay=6, tokens=["after ", "6s"])})
    items: list[Any] = []
    for item in stream:
        items.append(item)
        if isinstance(item, Event) and item.data == "[DONE]":
            break
    stream.close()
    assert time.monotonic() - started > 5.5
    assert sum(1 for i in items if isinstance(i, Comment) and i.text == "ping") >= 4
    events = [i for i in items if isinstance(i, Event)]
    assert text_of(events) == "after 6s"
    assert events[-2].json["type"] == "done"


def test_client_abort_reaches_the_service_through_nginx(service_factory: Any,
                                                        nginx_factory: Any, sim: Any) -> None:
    service = service_factory(openai_env(sim, RESUME_GRACE=0, HEARTBEAT_INTERVAL=30))
    proxy = nginx_factory(service.port)
    stream = start(proxy.url, {"messages": sim_prompt(tokens=20, stall_after=2)})
    until_first_token(stream)
    left = time.monotonic()
    stream.close()
    record = sim.requests[0]
    assert record.wait_closed(10)
    assert record.closed_at - left < 3.0


def test_metrics_and_readiness_stay_local(service_factory: Any, nginx_factory: Any,
                                          sim: Any) -> None:
    proxy = nginx_factory(service_factory(openai_env(sim)).port)
    for path in ("/metrics", "/readyz"):
        assert _get_from(proxy.port, "127.0.0.1", path)[0] == 200
        # Another address (still this machine's loopback, so the test stays on it): refused.
        assert _get_from(proxy.port, "127.0.0.2", path)[0] == 403
    assert _get_from(proxy.port, "127.0.0.2", "/healthz")[0] == 200


def test_a_flood_of_starts_meets_nginx_limit_in_the_contract_shape(
        service_factory: Any, nginx_factory: Any, sim: Any) -> None:
    proxy = nginx_factory(service_factory(openai_env(sim)).port)
    statuses = []
    refused = b""
    for _ in range(400):
        # Not JSON: the service refuses it at once (415), so only nginx's limit is measured.
        status, headers, raw = _post(proxy.port, "/api/chat/stream", b"x")
        statuses.append(status)
        if status == 429:
            refused, retry = raw, headers.get("retry-after")
    assert set(statuses) == {415, 429}, set(statuses)
    assert statuses[:200].count(415) == 200  # the burst passes
    assert json.loads(refused)["error"]["type"] == "too_many_requests" and retry == "1"
    assert sim.requests == []


def _get_from(port: int, source: str, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10,
                                      source_address=(source, 0))
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _post(port: int, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "text/plain"})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def test_every_format_streams_through_nginx_with_heartbeats(
        service_factory: Any, nginx_factory: Any, sim: Any) -> None:
    """/v1 (streamed and whole) and /api/chat get the native path's streaming rules: events as
    they come, heartbeats past a short read timeout, the contract's headers."""
    import openai

    service = service_factory(openai_env(sim, HEARTBEAT_INTERVAL=1, FIRST_TOKEN_TIMEOUT=30))
    proxy = nginx_factory(service.port, read_timeout="3s")
    slow = sim_prompt(first_delay=5, tokens=["after ", "5s"])
    # OpenAI's SDK, streamed: silent for longer than nginx's read timeout before the first token.
    with openai.OpenAI(base_url=proxy.url + "/v1", api_key="any", max_retries=0) as client:
        chunks = list(client.chat.completions.create(model="sim-model", messages=slow,
                                                     stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
            "after 5s"
        whole = client.chat.completions.create(model="sim-model",
                                               messages=sim_prompt(tokens=["all ", "at once"]))
        assert whole.choices[0].message.content == "all at once"
    raw = open_stream(proxy.url + "/v1/chat/completions", "POST",
                      {"model": "sim-model", "messages": slow, "stream": True})
    items = list(_until_done(raw))
    assert sum(1 for i in items if isinstance(i, Comment) and i.text == "ping") >= 3
    # The AI SDK's UI message stream.
    body = {"id": "chat-nginx", "trigger": "submit-message", "messages": [
        {"id": "u1", "role": "user", "parts": [{"type": "text", "text": slow[0]["content"]}]}]}
    ui = open_stream(proxy.url + "/api/chat", "POST", body)
    assert ui.headers["x-vercel-ai-ui-message-stream"] == "v1"
    assert ui.headers["Content-Type"].startswith("text/event-stream")
    items = list(_until_done(ui))
    assert sum(1 for i in items if isinstance(i, Comment) and i.text == "ping") >= 3
    parts = [i.json for i in items if isinstance(i, Event) and i.data != "[DONE]"]
    assert "".join(p["delta"] for p in parts if p["type"] == "text-delta") == "after 5s"
    assert parts[-1]["type"] == "finish"
    ended = open_stream(proxy.url + "/api/chat/chat-nginx/stream")
    assert ended.status == 204
    ended.close()


def _until_done(stream: Any) -> Iterator[Any]:
    try:
        for item in stream:
            yield item
            if isinstance(item, Event) and item.data == "[DONE]":
                return
    finally:
        stream.close()
