"""Refusals, keys, limits, health, readiness, metrics and draining, over real sockets."""

from __future__ import annotations

import http.client
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Service, free_port, openai_env, sim_prompt
from sseclient import collect, request, start, text_of, until_first_token

KEY_A = "key-alpha-0123456789"
KEY_B = "key-bravo-9876543210"
UPSTREAM_KEY = "sk-test-SECRETKEY-0123456789"


@pytest.fixture(scope="module")
def service(upstream: Any) -> Iterator[Service]:
    svc = Service(openai_env(upstream, API_KEYS=f"{KEY_A}, {KEY_B}", MAX_BODY_BYTES=2048,
                             ALLOWED_MODELS="sim-model,other-model", MAX_STREAMS_PER_KEY=2,
                             HEARTBEAT_INTERVAL=1))
    yield svc
    log = svc.log()
    svc.stop()
    for secret in (KEY_A, KEY_B, UPSTREAM_KEY):
        assert secret not in log


def auth(key: str = KEY_A) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


GOOD = {"messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(
    ("body", "headers", "status", "kind"),
    [
        pytest.param(b"{nope", {"Content-Type": "application/json"}, 400, "invalid_json",
                     id="invalid-json"),
        pytest.param(json.dumps(GOOD).encode(), {"Content-Type": "text/plain"}, 415,
                     "unsupported_media_type", id="not-json-type"),
        pytest.param(json.dumps(GOOD).encode(), {"Content-Type": None}, 415,
                     "unsupported_media_type",
                     id="no-content-type"),
        pytest.param(json.dumps({"messages": [{"role": "user", "content": "x" * 3000}]}).encode(),
                     {"Content-Type": "application/json"}, 413, "payload_too_large",
                     id="too-big"),
        pytest.param(json.dumps({**GOOD, "stream": False}).encode(),
                     {"Content-Type": "application/json"}, 422, "invalid_request",
                     id="unknown-field"),
        pytest.param(json.dumps({**GOOD, "model": "gpt-5"}).encode(),
                     {"Content-Type": "application/json"}, 422, "invalid_request",
                     id="model-not-allowed"),
        pytest.param(json.dumps({"messages": []}).encode(),
                     {"Content-Type": "application/json"}, 422, "invalid_request",
                     id="no-messages"),
    ],
)
def test_refused_requests(service: Service, sim: Any, body: bytes, headers: dict[str, Any],
                          status: int, kind: str) -> None:
    code, hdrs, raw = request(service.url, "POST", "/api/chat/stream", body,
                              {**headers, **auth()})
    assert code == status
    assert hdrs["content-type"] == "application/json"
    error = json.loads(raw)["error"]
    assert error["type"] == kind and error["message"]
    assert set(error) == {"type", "message"}
    assert not sim.requests, "a refused request reached the upstream"


def test_unknown_field_is_named(service: Service) -> None:
    _, _, raw = request(service.url, "POST", "/api/chat/stream", {**GOOD, "top_p": 1}, auth())
    assert "top_p" in json.loads(raw)["error"]["message"]


@pytest.mark.parametrize("headers", [{}, auth("wrong-key"), {"Authorization": KEY_A},
                                     {"Authorization": f"Basic {KEY_A}"}],
                         ids=["none", "wrong", "no-scheme", "basic"])
def test_api_key_required(service: Service, sim: Any, headers: dict[str, str]) -> None:
    code, hdrs, raw = request(service.url, "POST", "/api/chat/stream", GOOD, headers)
    assert code == 401
    assert json.loads(raw)["error"]["type"] == "unauthorized"
    assert hdrs["www-authenticate"] == "Bearer"
    assert not sim.requests


def test_only_the_starting_key_may_attach_or_cancel(service: Service, sim: Any) -> None:
    stream = start(service.url, {"messages": sim_prompt(tokens=5, stall_after=2)},
                   headers=auth(KEY_A))
    stream_id = stream.headers["X-Stream-Id"]
    assert sim.wait_for_requests(1, 10)
    for path, method in ((f"/api/chat/stream/{stream_id}", "GET"),
                         (f"/api/chat/stream/{stream_id}/cancel", "POST")):
        code, _, raw = request(service.url, method, path, headers=auth(KEY_B))
        assert code == 404, raw
        code, _, _ = request(service.url, method, path)
        assert code == 401
    code, _, _ = request(service.url, "POST", f"/api/chat/stream/{stream_id}/cancel",
                         headers=auth(KEY_A))
    assert code == 202
    assert collect(stream)[-2].json["finish_reason"] == "cancelled"
    assert sim.requests[0].wait_closed(5)
    # The upstream saw our upstream key, never the client's.
    assert sim.requests[0].headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"


def test_per_key_limit(service: Service, sim: Any) -> None:
    running = [start(service.url, {"messages": sim_prompt(tokens=5, stall_after=1)},
                     headers=auth(KEY_A)) for _ in range(2)]
    code, hdrs, raw = request(service.url, "POST", "/api/chat/stream", GOOD, auth(KEY_A))
    assert code == 429
    assert json.loads(raw)["error"]["type"] == "too_many_streams"
    assert int(hdrs["retry-after"]) >= 1
    assert len(sim.requests) <= 2
    # Another key is not held back by the first one's streams.
    other = start(service.url, {"messages": sim_prompt(tokens=2)}, headers=auth(KEY_B))
    assert text_of(collect(other)) == "t0 t1 "
    for stream in running:
        request(service.url, "POST",
                f"/api/chat/stream/{stream.headers['X-Stream-Id']}/cancel", headers=auth(KEY_A))
        collect(stream)


@pytest.mark.parametrize("value", ["abc", "-1", "1.5", ""])
def test_bad_last_event_id_is_400_first(service: Service, value: str) -> None:
    # Checked before the key and before the stream is looked up.
    for headers in ({"Last-Event-ID": value}, {"Last-Event-ID": value, **auth()}):
        code, _, raw = request(service.url, "GET", "/api/chat/stream/unknown", headers=headers)
        assert code == 400
        assert json.loads(raw)["error"]["type"] == "invalid_last_event_id"


def test_unknown_stream_is_404(service: Service) -> None:
    for method, path in (("GET", "/api/chat/stream/nope"),
                         ("POST", "/api/chat/stream/nope/cancel")):
        code, _, raw = request(service.url, method, path, headers=auth())
        assert code == 404
        assert json.loads(raw)["error"]["type"] == "not_found"


def test_wrong_method_is_json(service: Service) -> None:
    code, _hdrs, raw = request(service.url, "GET", "/api/chat/stream", headers=auth())
    assert code == 405
    assert json.loads(raw)["error"]["type"] == "method_not_allowed"


def test_global_stream_limit(service_factory: Any, sim: Any) -> None:
    svc = service_factory(openai_env(sim, MAX_STREAMS=1))
    first = start(svc.url, {"messages": sim_prompt(tokens=3, stall_after=1)})
    code, hdrs, _ = request(svc.url, "POST", "/api/chat/stream", GOOD)
    assert code == 429 and "retry-after" in hdrs
    request(svc.url, "POST", f"/api/chat/stream/{first.headers['X-Stream-Id']}/cancel")
    collect(first)
    # The slot is free again once the stream ended.
    assert collect(start(svc.url, GOOD))[-2].json["type"] == "done"


def test_health_ready_and_metrics(service_factory: Any, sim: Any) -> None:
    svc = service_factory({"SIMULATED_TOKENS_PER_SECOND": 500})
    code, _, raw = request(svc.url, "GET", "/healthz")
    assert (code, json.loads(raw)) == (200, {"status": "ok"})
    code, _, raw = request(svc.url, "GET", "/readyz")
    assert code == 200 and json.loads(raw)["provider"] == "simulated"
    events = collect(start(svc.url, GOOD))
    assert "Simulated provider" in text_of(events)
    assert events[-2].json["type"] == "done"
    code, hdrs, raw = request(svc.url, "GET", "/metrics")
    assert code == 200 and hdrs["content-type"].startswith("text/plain")
    text = raw.decode()
    assert 'llm_streams_ended_total{outcome="stop"} 1.0' in text
    assert "llm_streams_active 0.0" in text
    assert "llm_time_to_first_token_seconds_count 1.0" in text
    deltas = next(line for line in text.splitlines() if line.startswith("llm_deltas_relayed_total"))
    assert float(deltas.split()[1]) > 10


def test_metrics_sum_all_workers(service_factory: Any, sim: Any) -> None:
    svc = service_factory({"SIMULATED_TOKENS_PER_SECOND": 1000}, workers=2)
    for _ in range(6):
        collect(start(svc.url, {"messages": [{"role": "user", "content": "x"}],
                                "max_tokens": 3}))
    _, _, raw = request(svc.url, "GET", "/metrics")
    assert 'llm_streams_ended_total{outcome="length"} 6.0' in raw.decode()
    # Two workers on the in-memory store: the operator is told what will miss.
    assert "WEB_CONCURRENCY=2 with the in-memory store" in svc.log()


def test_one_worker_or_redis_gets_no_store_warning(service_factory: Any, sim: Any) -> None:
    svc = service_factory({})
    assert request(svc.url, "GET", "/healthz")[0] == 200
    assert "in-memory store" not in svc.log()


def test_readiness_follows_the_upstream(service_factory: Any, sim: Any) -> None:
    code, _, raw = request(service_factory(openai_env(sim)).url, "GET", "/readyz")
    assert code == 200 and json.loads(raw)["checks"]["provider"] is True
    dead = f"http://127.0.0.1:{free_port()}/v1"
    code, _, raw = request(service_factory(openai_env(sim, OPENAI_BASE_URL=dead)).url,
                           "GET", "/readyz")
    assert code == 503
    assert json.loads(raw)["checks"] == {"store": True, "provider": False, "draining": False}


def test_draining_answers_503_on_kept_alive_connections(service_factory: Any,
                                                        sim: Any) -> None:
    svc = service_factory(openai_env(sim, HEARTBEAT_INTERVAL=1))
    keep = http.client.HTTPConnection("127.0.0.1", svc.port, timeout=10)
    keep.request("GET", "/healthz")
    assert keep.getresponse().read()
    # A running stream holds the worker in its graceful period.
    running = start(svc.url, {"messages": sim_prompt(tokens=40, delay=0.1)})
    stream_id = running.headers["X-Stream-Id"]
    svc.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    status = 404
    while status == 404 and time.monotonic() < deadline:
        # Until the worker has the signal, an unknown stream is 404; then every request is 503.
        keep.request("GET", "/api/chat/stream/unknown")
        response = keep.getresponse()
        status = response.status
        body = response.read()
        if response.getheader("Connection", "").lower() == "close":
            break
    keep.close()
    assert status == 503
    assert json.loads(body)["error"]["type"] == "draining"
    # The stream that was running finishes untouched.
    events = collect(running)
    assert events[-2].json["finish_reason"] == "stop"
    assert text_of(events) == "".join(f"t{i} " for i in range(40))
    assert stream_id


def test_streams_left_at_shutdown_end_with_producer_lost(service_factory: Any,
                                                         sim: Any) -> None:
    svc = service_factory(openai_env(sim, HEARTBEAT_INTERVAL=1, GRACEFUL_TIMEOUT=5))
    running = start(svc.url, {"messages": sim_prompt(tokens=1000, delay=0.05)})
    until_first_token(running)
    stopped = time.monotonic()
    svc.proc.send_signal(signal.SIGTERM)
    events = collect(running)
    assert events[-2].json["type"] == "error"
    assert events[-2].json["code"] == "producer_lost"
    # Ended before gunicorn's kill at 5 s, and the worker then exits on its own.
    assert time.monotonic() - stopped < 5
    assert svc.proc.wait(10) == 0
    assert sim.requests[0].wait_closed(5)


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 1020 + b"]" * 1020,  # past orjson's nesting limit, within MAX_BODY_BYTES
        b'{"messages": [{"role": "user", "content": "\\ud800"}]}',
        b'{"messages": [{"role": "user", "content": "hi"}], "temperature": 1e400}',
        b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1e3}',
        b'{"messages": [{"role": "user", "content": {"text": "hi"}}]}',
        b'{"messages": [null]}',
        b'{"messages": {"0": {"role": "user", "content": "hi"}}}',
        b'"just a string"',
        b"\x00\x01\x02",
        b'{"messages": [{"role": "user", "content": "hi"}]} trailing',
    ],
    ids=["deep", "lone-surrogate", "inf", "float-tokens", "content-object", "null-message",
         "messages-object", "string", "binary", "trailing"],
)
def test_odd_bodies_are_4xx_never_5xx(service: Service, sim: Any, raw: bytes) -> None:
    code, _, body = request(service.url, "POST", "/api/chat/stream", raw,
                            {"Content-Type": "application/json", **auth()})
    assert code in (400, 422), body
    assert json.loads(body)["error"]["message"]
    assert not sim.requests


def test_open_files_limit_fits_two_sockets_per_stream(service_factory: Any, sim: Any) -> None:
    import resource
    import subprocess

    svc = service_factory({"WORKER_CONNECTIONS": 3000})
    worker = subprocess.run(["pgrep", "-P", str(svc.proc.pid)], capture_output=True,
                            text=True, check=True).stdout.split()[0]
    limits = Path(f"/proc/{worker}/limits").read_text()
    soft = int(next(line for line in limits.splitlines()
                    if line.startswith("Max open files")).split()[3])
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    wanted = 2 * 3000 + 256
    assert soft >= (wanted if hard == resource.RLIM_INFINITY else min(wanted, hard))
