"""OpenAI Chat Completions at /v1, checked with the official clients (the `openai` Python SDK,
sync and async, and the `openai` npm package) against the service on the simulator: typed
chunks and completions, usage, tool calls, reasoning, errors, cancel, resume after a cut, and
the statuses of non-streamed answers."""

from __future__ import annotations

import asyncio
import http.client
import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from conftest import ROOT, TESTS, Service, openai_env, sim_prompt
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from sseclient import Comment, Event, collect, open_stream, request
from tcpproxy import TCPProxy
from upstream_sim import DEFAULT_TEXT, SECRET

from streaming import formats
from streaming.events import Done, Failed, Reasoning, Start, Token, ToolCall
from streaming.formats.openai import assemble
from streaming.stores import StreamMeta

KEY = "v1-test-key-0123456789"
TOOLS = [{"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'},
         {"name": "get_time", "arguments": '{"tz": "Europe/Paris"}'}]


@pytest.fixture(scope="module")
def service(upstream: Any) -> Iterator[Service]:
    # RESUME_GRACE far above the timeouts: an upstream closed within a second was cancelled
    # on purpose, not by the grace.
    svc = Service(openai_env(upstream, API_KEYS=KEY, ALLOWED_MODELS="sim-model,sim-model-large",
                             MAX_OUTPUT_TOKENS=500, HEARTBEAT_INTERVAL=1, FIRST_TOKEN_TIMEOUT=3,
                             IDLE_TIMEOUT=2, STREAM_TIMEOUT=30, RESUME_GRACE=10, STREAM_TTL=60,
                             UPSTREAM_RETRIES=0))
    yield svc
    log = svc.log()
    svc.stop()
    assert SECRET not in log and KEY not in log


@pytest.fixture
def client(service: Service) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=service.url + "/v1", api_key=KEY, max_retries=0) as c:
        yield c


def auth(**headers: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}", **headers}


def sse_post(service: Service, body: dict[str, Any]) -> Any:
    return open_stream(service.url + "/v1/chat/completions", "POST", body, auth())


def check_events(events: list[Event], first_seq: int = 0) -> list[dict[str, Any]]:
    """Ids without gaps, [DONE] last without an id; the chunks as JSON."""
    assert events[-1].data == "[DONE]" and events[-1].id is None
    assert [e.id for e in events[:-1]] == [str(i) for i in range(first_seq,
                                                                 first_seq + len(events) - 1)]
    return [e.json for e in events[:-1]]


def content(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def text_of(events: list[Event]) -> str:
    """The content of raw chunk events (the error object and [DONE] have none)."""
    return "".join(e.json["choices"][0]["delta"].get("content", "") for e in events
                   if e.data != "[DONE]" and e.json.get("choices"))


def test_streamed_completion_parses_into_typed_chunks(client: openai.OpenAI, sim: Any) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="sim-model", messages=[{"role": "user", "content": "Hi"}], stream=True)
    stream_id = raw.headers["X-Stream-Id"]
    with raw.parse() as stream:
        chunks = list(stream)
    assert all(isinstance(c, ChatCompletionChunk) for c in chunks)
    assert content(chunks) == DEFAULT_TEXT
    assert {c.id for c in chunks} == {f"chatcmpl-{stream_id}"}
    assert {c.model for c in chunks} == {"sim-model"}
    assert len({c.created for c in chunks}) == 1 and abs(chunks[0].created - time.time()) < 60
    first = chunks[0].choices[0].delta
    assert (first.role, first.content) == ("assistant", "")
    assert [c.choices[0].finish_reason for c in chunks] == [None] * (len(chunks) - 1) + ["stop"]
    assert chunks[-1].choices[0].delta.content is None
    # Usage was not asked for: no usage chunk, no usage anywhere.
    assert all(c.choices and c.usage is None for c in chunks)
    # The upstream is asked for usage whatever the client asked.
    (record,) = sim.requests
    assert record.body["stream"] is True
    assert record.body["stream_options"] == {"include_usage": True}


def test_openai_fields_are_passed_on(client: openai.OpenAI, sim: Any) -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    fields: dict[str, Any] = {
        "temperature": 0.2, "top_p": 0.9, "max_completion_tokens": 50, "stop": ["\n\n"],
        "seed": 7, "presence_penalty": 0.5, "frequency_penalty": -0.5, "logit_bias": {"42": -5},
        "user": "u-1", "tools": tools, "tool_choice": "auto", "parallel_tool_calls": False,
        "response_format": {"type": "text"}, "reasoning_effort": "low",
        "metadata": {"team": "a"},
    }
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    completion = client.chat.completions.create(model="sim-model-large", messages=messages,
                                                n=1, **fields)
    assert completion.choices[0].message.content == DEFAULT_TEXT
    (record,) = sim.requests
    sent = {k: v for k, v in record.body.items()
            if k not in ("model", "messages", "stream", "stream_options")}
    assert sent == fields
    assert record.body["model"] == "sim-model-large" and record.body["messages"] == messages


def test_usage_tool_calls_and_reasoning_async(service: Service, sim: Any) -> None:
    async def run() -> tuple[list[ChatCompletionChunk], list[ChatCompletionChunk]]:
        async with openai.AsyncOpenAI(base_url=service.url + "/v1", api_key=KEY,
                                      max_retries=0) as client:
            messages = sim_prompt(reasoning=["Let me ", "think."], tokens=["Calling."],
                                  tool_calls=TOOLS)
            stream = await client.chat.completions.create(
                model="sim-model", messages=messages, stream=True,
                stream_options={"include_usage": True})
            with_usage = [chunk async for chunk in stream]
            stream = await client.chat.completions.create(
                model="sim-model", messages=sim_prompt(tokens=3), stream=True,
                stream_options={"include_usage": False})
            without = [chunk async for chunk in stream]
            return with_usage, without

    chunks, without = asyncio.run(run())
    # The usage chunk is last, with empty choices; the finish reason is on the one before.
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 2 + 1 + 0  # reasoning and content deltas
    assert chunks[-1].usage.total_tokens == (chunks[-1].usage.prompt_tokens
                                             + chunks[-1].usage.completion_tokens)
    assert chunks[-2].choices[0].finish_reason == "tool_calls"
    reasoning = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or ""
                        for c in chunks if c.choices)
    assert reasoning == "Let me think."
    assert content(chunks) == "Calling."
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            entry = calls.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
            if call.id:
                assert call.type == "function"
                entry["id"] = call.id
            assert call.function is not None
            entry["name"] += call.function.name or ""
            entry["arguments"] += call.function.arguments or ""
    assert calls == {i: {"id": f"call_sim{i}", **t} for i, t in enumerate(TOOLS)}
    assert content(without) == "t0 t1 t2 "
    assert all(c.choices and c.usage is None for c in without)


def test_non_streamed_completion(client: openai.OpenAI, sim: Any) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="sim-model", messages=sim_prompt(reasoning=["Hmm."], tool_calls=TOOLS[:1]))
    completion = raw.parse()
    assert isinstance(completion, ChatCompletion)
    assert completion.object == "chat.completion"
    assert completion.id == "chatcmpl-" + raw.headers["X-Stream-Id"]
    (choice,) = completion.choices
    assert choice.finish_reason == "tool_calls"
    assert choice.message.role == "assistant" and choice.message.content == DEFAULT_TEXT
    assert getattr(choice.message, "reasoning_content", None) == "Hmm."
    (call,) = choice.message.tool_calls or []
    assert call.type == "function" and call.id == "call_sim0"
    assert (call.function.name, call.function.arguments) == (TOOLS[0]["name"],
                                                             TOOLS[0]["arguments"])
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    # A length finish, async this time.

    async def run() -> ChatCompletion:
        async with openai.AsyncOpenAI(base_url=str(client.base_url), api_key=KEY,
                                      max_retries=0) as aclient:
            return await aclient.chat.completions.create(
                model="sim-model", messages=sim_prompt(tokens=10), max_tokens=4)

    short = asyncio.run(run())
    assert short.choices[0].message.content == "t0 t1 t2 t3 "
    assert short.choices[0].finish_reason == "length"


def test_the_wire_is_strict_sse_with_typed_chunks(service: Service, sim: Any) -> None:
    # The upstream answers 2 s late; HEARTBEAT_INTERVAL=1, FIRST_TOKEN_TIMEOUT=3.
    stream = sse_post(service, {"messages": sim_prompt(tokens=["a\u2028b", " c"],
                                                       headers_delay=2.0),
                                "stream": True, "stream_options": {"include_usage": True}})
    assert stream.status == 200
    headers = {k.lower(): v for k, v in stream.headers.items()}
    assert headers["content-type"] == "text/event-stream; charset=utf-8"
    assert headers["cache-control"] == "no-cache" and headers["x-accel-buffering"] == "no"
    items = []
    for item in stream:
        items.append(item)
        if isinstance(item, Event) and item.data == "[DONE]":
            break
    stream.close()
    assert bytes(stream.raw).startswith(b"retry: 1000\n: ping\n")
    events = [i for i in items if isinstance(i, Event)]
    # The role chunk goes out at once; heartbeats while the upstream keeps silent.
    role, text = items.index(events[0]), items.index(events[1])
    assert any(isinstance(i, Comment) and i.text == "ping" for i in items[role:text])
    chunks = check_events(events)
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk, strict=True)  # the SDK's types, validated
    assert list(chunks[0]["choices"][0]["delta"]) == ["role", "content"]  # role first
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks
                   if c["choices"]) == "a\u2028b c"
    assert b"\\u2028" in stream.raw and "\u2028".encode() not in stream.raw
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0


@pytest.mark.parametrize(
    ("script", "code"),
    [({"tokens": 4, "error_after": 2}, "upstream_error"),
     ({"tokens": 4, "stall_after": 2}, "timeout")],
    ids=["in-stream-error", "idle-timeout"],
)
def test_errors_end_the_stream_with_an_error_object(client: openai.OpenAI, service: Service,
                                                    sim: Any, script: dict[str, Any],
                                                    code: str) -> None:
    seen: list[ChatCompletionChunk] = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in client.chat.completions.create(
                model="sim-model", messages=sim_prompt(**script), stream=True):
            seen.append(chunk)
    assert content(seen) == "t0 t1 "
    assert isinstance(caught.value.body, dict) and caught.value.body["code"] == code
    # On the wire: no finish_reason chunk, the error object last, then [DONE].
    chunks = check_events(collect(sse_post(service, {"messages": sim_prompt(**script),
                                                     "stream": True})))
    assert set(chunks[-1]) == {"error"}
    assert set(chunks[-1]["error"]) == {"message", "type", "code"}
    assert chunks[-1]["error"]["code"] == code and chunks[-1]["error"]["message"]
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])


def test_cancel_by_id(service: Service, sim: Any) -> None:
    stream = sse_post(service, {"messages": sim_prompt(tokens=50, stall_after=3),
                                "stream": True, "stream_options": {"include_usage": True}})
    stream_id = stream.headers["X-Stream-Id"]
    seen: list[Event] = []
    for event in stream.events():
        seen.append(event)
        if text_of(seen) == "t0 t1 t2 ":  # then the upstream stalls
            break
    (record,) = sim.requests
    asked = time.monotonic()
    status, _, body = request(service.url, "POST", f"/v1/chat/completions/{stream_id}/cancel",
                              headers=auth())
    assert status == 202 and json.loads(body) == {"status": "cancelling"}
    assert record.wait_closed(5) and record.closed_at - asked < 1.0
    chunks = check_events(seen + collect(stream))
    assert chunks[-1] == {"error": {"message": "the answer was cancelled", "type": "cancelled",
                                    "code": "cancelled"}}
    assert "".join(c["choices"][0]["delta"].get("content", "")
                   for c in chunks[:-1]) == "t0 t1 t2 "
    # Cancelling an ended stream changes nothing; someone else's key cannot cancel it.
    status, _, _ = request(service.url, "POST", f"/v1/chat/completions/{stream_id}/cancel",
                           headers=auth())
    assert status == 202


def test_cut_and_resume_by_id_with_last_event_id(client: openai.OpenAI, service: Service,
                                                 sim: Any) -> None:
    words = [f"w{i} " for i in range(60)]
    body = {"messages": sim_prompt(tokens=words, delay=0.02), "stream": True}
    with TCPProxy(("127.0.0.1", service.port)) as proxy:
        stream = open_stream(proxy.url + "/v1/chat/completions", "POST", body, auth())
        stream_id = stream.headers["X-Stream-Id"]
        seen: list[Event] = []
        try:
            for event in stream.events():
                seen.append(event)
                if len(seen) == 6:
                    assert proxy.cut() == 1  # the network drops the stream mid-answer
        except (OSError, http.client.HTTPException):
            pass  # the cut, seen by the client
        finally:
            stream.conn.close()
    assert len(seen) >= 6 and seen[-1].data != "[DONE]"  # cut before its end
    last = int(seen[-1].id or "")
    rest = collect(open_stream(f"{service.url}/v1/chat/completions/{stream_id}/stream", "GET",
                               None, auth(**{"Last-Event-ID": str(last)})))
    chunks = check_events(seen + rest)
    assert "".join(c["choices"][0]["delta"].get("content", "")
                   for c in chunks) == "".join(words)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    # The SDK resumes too, through its documented low-level `get`, into typed chunks.
    resumed = client.get(f"/chat/completions/{stream_id}/stream", cast_to=ChatCompletionChunk,
                         stream=True, stream_cls=openai.Stream[ChatCompletionChunk],
                         options={"headers": {"Last-Event-ID": "3"}})
    with resumed:
        tail = list(resumed)
    assert len(tail) == len(chunks) - 4
    assert content(tail) == "".join(c["choices"][0]["delta"].get("content", "")
                                    for c in chunks[4:])
    # At or past the end: 204, no body; another key's stream, or an unknown one: 404.
    end = len(chunks) - 1
    status, _, raw = request(service.url, "GET", f"/v1/chat/completions/{stream_id}/stream",
                             headers=auth(**{"Last-Event-ID": str(end)}))
    assert (status, raw) == (204, b"")
    assert len(sim.requests) == 1


def test_refusals_raise_the_sdks_exceptions(client: openai.OpenAI, service: Service,
                                            sim: Any) -> None:
    hi = [{"role": "user", "content": "Hi"}]
    with openai.OpenAI(base_url=service.url + "/v1", api_key="wrong", max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError) as caught:
            bad.chat.completions.create(model="sim-model", messages=hi)
        assert caught.value.status_code == 401
        assert caught.value.body == {"message": caught.value.body["message"],
                                     "type": "invalid_request_error", "param": None,
                                     "code": "invalid_api_key"}
    with pytest.raises(openai.NotFoundError):
        client.post("/chat/completions/no-such-stream/cancel", cast_to=object)
    with pytest.raises(openai.NotFoundError):
        client.get("/chat/completions/no-such-stream/stream", cast_to=object)
    refused: list[tuple[dict[str, Any], str]] = [
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"n": 2}, "n"),
        ({"temperature": 3}, "temperature"),
        ({"max_tokens": 501}, "max_tokens"),
        ({"max_completion_tokens": 501}, "max_completion_tokens"),
        ({"stream": True, "stream_options": {"include_usage": "yes"}},
         "stream_options.include_usage"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"model": "gpt-4o"}, "model"),
        ({"messages": [{"role": "robot", "content": "Hi"}]}, "messages.0.role"),
    ]
    for extra, param in refused:
        with pytest.raises(openai.UnprocessableEntityError) as caught_422:
            client.chat.completions.create(**{"model": "sim-model", "messages": hi, **extra})
        body = caught_422.value.body
        assert isinstance(body, dict), extra
        assert body["param"] == param and body["type"] == "invalid_request_error", body
        assert param.split(".")[0] in body["message"]
    assert sim.requests == []  # nothing refused reached the upstream
    models = client.models.list()
    assert [m.id for m in models.data] == ["sim-model", "sim-model-large"]


def test_too_many_streams_is_a_rate_limit_error(service_factory: Any, sim: Any) -> None:
    svc = service_factory(openai_env(sim, MAX_STREAMS=1, FIRST_TOKEN_TIMEOUT=5,
                                     IDLE_TIMEOUT=5))
    with openai.OpenAI(base_url=svc.url + "/v1", api_key="any", max_retries=0) as client:
        running = client.chat.completions.create(
            model="sim-model", messages=sim_prompt(tokens=5, stall_after=1), stream=True)
        with running:
            assert content([next(running), next(running)]) == "t0 "
            with pytest.raises(openai.RateLimitError) as caught:
                client.chat.completions.create(model="sim-model", messages=sim_prompt(tokens=1))
            assert caught.value.response.headers["Retry-After"] == "1"
            assert caught.value.body["type"] == "rate_limit_error"
    assert len(sim.requests) == 1


@pytest.mark.parametrize(
    ("script", "status", "code"),
    [({"status": 401}, 502, "upstream_auth"),
     ({"status": 400}, 502, "upstream_error"),
     ({"status": 429}, 429, "rate_limited"),
     ({"status": 503}, 503, "upstream_unavailable"),
     ({"tokens": 3, "first_delay": 5}, 504, "timeout"),
     ({"tokens": 4, "drop_after": 2}, 502, "upstream_error")],
    ids=["upstream-401", "upstream-400", "upstream-429", "upstream-503", "timeout", "cut"],
)
def test_non_streamed_status_follows_the_terminal_event(service: Service, sim: Any,
                                                        script: dict[str, Any], status: int,
                                                        code: str) -> None:
    got, headers, raw = request(service.url, "POST", "/v1/chat/completions",
                                {"messages": sim_prompt(**script)}, auth())
    assert got == status, raw
    assert headers["content-type"] == "application/json" and headers["x-stream-id"]
    error = json.loads(raw)["error"]
    assert error["code"] == code and error["message"] and error["param"] is None
    assert error["type"] == ("rate_limit_error" if status == 429 else "server_error")
    # The SDKs retry 429 and 5xx; not an upstream refusing the service's key.
    assert headers.get("x-should-retry") == ("false" if code == "upstream_auth" else None)
    assert SECRET.encode() not in raw


def raw_post(service: Service, body: dict[str, Any], extra: bytes = b"") -> socket.socket:
    """A non-streamed request on a socket of our own: to time its first byte, or to leave."""
    data = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", service.port), timeout=10)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n" + extra
                 + b"Content-Type: application/json\r\nAuthorization: Bearer " + KEY.encode()
                 + b"\r\nContent-Length: %d\r\n\r\n%s" % (len(data), data))
    return sock


def test_non_streamed_writes_nothing_before_the_end(service: Service, sim: Any) -> None:
    # 12 deltas and the finish chunk 0.1 s apart: the answer cannot end before 1.3 s.
    sent = time.monotonic()
    with raw_post(service, {"messages": sim_prompt(tokens=12, delay=0.1)}) as sock:
        first = sock.recv(1, socket.MSG_PEEK)  # waits for the first byte, leaves it there
        first_byte_after = time.monotonic() - sent
        response = http.client.HTTPResponse(sock)  # the rest, parsed by the stdlib
        response.begin()
        payload = response.read()
        response.close()
    # The status line itself waited: `H` of `HTTP/1.1` came after the last delta.
    assert first == b"H" and first_byte_after >= 1.2
    assert response.status == 200
    assert json.loads(payload)["choices"][0]["message"]["content"] == "".join(
        f"t{i} " for i in range(12))


def test_non_streamed_departure_cancels_at_once(service: Service, sim: Any) -> None:
    # The upstream is closed at once, not after RESUME_GRACE (10 s) or a timeout (2 s, 3 s).
    body = {"messages": sim_prompt(tokens=50, stall_after=2)}
    with raw_post(service, body, b"Idempotency-Key: whole-1\r\n"):
        assert sim.wait_for_requests(1, 5)
        (record,) = sim.requests
        left = time.monotonic()
    assert record.wait_closed(5)
    assert record.closed_at - left < 1.0
    # The same request again with its Idempotency-Key finds that stream, cancelled: 409, and
    # the SDKs are told not to retry it.
    status, headers, raw = request(service.url, "POST", "/v1/chat/completions", body,
                                   auth(**{"Idempotency-Key": "whole-1"}))
    assert status == 409 and headers["x-should-retry"] == "false"
    assert json.loads(raw)["error"] == {"message": "the answer was cancelled",
                                        "type": "cancelled", "param": None,
                                        "code": "cancelled"}
    assert len(sim.requests) == 1


def test_resume_refuses_streams_of_another_format(service: Service, sim: Any) -> None:
    native = collect(open_stream(service.url + "/api/chat/stream", "POST",
                                 {"messages": sim_prompt(tokens=2)}, auth()))
    stream_id = native[0].json["stream_id"]
    status, _, raw = request(service.url, "GET", f"/v1/chat/completions/{stream_id}/stream",
                             headers=auth())
    assert status == 404 and set(json.loads(raw)["error"]) == {"message", "type", "param",
                                                                "code"}


@pytest.mark.skipif(shutil.which("node") is None
                    or not (ROOT / "node_modules" / "openai").is_dir(),
                    reason="needs node and `npm ci`")
def test_the_openai_npm_package(service: Service, sim: Any) -> None:
    spec = {"text": [{"role": "user", "content": "Hi"}],
            "failing": sim_prompt(tokens=4, error_after=2)}
    run = subprocess.run(["node", str(TESTS / "js" / "openai_client.mjs"),
                          service.url + "/v1", KEY, json.dumps(spec)],
                         capture_output=True, text=True, timeout=60, cwd=ROOT, check=False)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    streamed = out["streamed"]
    assert streamed["text"] == DEFAULT_TEXT
    assert streamed["firstDelta"] == {"role": "assistant", "content": ""}
    assert streamed["ids"] == [f"chatcmpl-{out['streamId']}"]
    assert streamed["objects"] == ["chat.completion.chunk"]
    assert streamed["finishReasons"] == ["stop"] and streamed["lastChoices"] == 0
    assert streamed["usage"]["completion_tokens"] > 0
    assert out["whole"] == {"object": "chat.completion", "text": DEFAULT_TEXT,
                            "finishReason": "stop", "usage": out["whole"]["usage"]}
    assert out["whole"]["usage"]["total_tokens"] > 0
    assert out["failed"] == {"thrown": True, "seen": "t0 t1 ", "name": "APIError",
                             "code": "upstream_error", "isAPIError": True}
    assert out["wrongKey"] == {"thrown": True, "name": "AuthenticationError", "status": 401,
                               "isAuth": True}


# -- the format module itself: exact bytes, no service ----------------------------------------

HEAD = '"id":"chatcmpl-s1","object":"chat.completion.chunk","created":1700000000,"model":"m"'


def chunk_bytes(seq: int, delta: str, finish: str = "null") -> bytes:
    return (f'id: {seq}\ndata: {{{HEAD},"choices":[{{"index":0,"delta":{delta},'
            f'"logprobs":null,"finish_reason":{finish}}}]}}\n\n').encode()


def usage_bytes(seq: int, usage: str) -> bytes:
    return f'id: {seq}\ndata: {{{HEAD},"choices":[],"usage":{usage}}}\n\n'.encode()


def error_bytes(seq: int, message: str, kind: str, code: str) -> bytes:
    return (f'id: {seq}\ndata: {{"error":{{"message":"{message}","type":"{kind}",'
            f'"code":"{code}"}}}}\n\n').encode()


USAGE = {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}


@pytest.mark.parametrize(
    ("event", "include_usage", "expected"),
    [
        (Start("s1", "m", "tok", 1700000000), False,
         [chunk_bytes(7, '{"role":"assistant","content":""}')]),
        (Token("a\u2028b", 0), False, [chunk_bytes(7, '{"content":"a\\u2028b"}')]),
        (Reasoning("hm"), False, [chunk_bytes(7, '{"reasoning_content":"hm"}')]),
        (ToolCall(0, "c1", "f", ""), False, [chunk_bytes(
            7, '{"tool_calls":[{"index":0,"id":"c1","type":"function",'
               '"function":{"name":"f","arguments":""}}]}')]),
        (ToolCall(1, arguments='{"a'), False, [chunk_bytes(
            7, '{"tool_calls":[{"index":1,"function":{"arguments":"{\\"a"}}]}')]),
        (Done("stop", USAGE), False, [chunk_bytes(7, "{}", '"stop"')]),
        (Done("length", USAGE), True, [
            chunk_bytes(7, "{}", '"length"'),
            usage_bytes(8, '{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}')]),
        (Done("stop", None), True, [
            chunk_bytes(7, "{}", '"stop"'), usage_bytes(8, "null")]),
        (Done("cancelled", USAGE), True,
         [error_bytes(7, "the answer was cancelled", "cancelled", "cancelled")]),
        (Failed("timeout", "too slow"), True,
         [error_bytes(7, "too slow", "server_error", "timeout")]),
        (Failed("rate_limited", "slow down", 2.0), False,
         [error_bytes(7, "slow down", "rate_limit_error", "rate_limited")]),
    ],
    ids=["start", "token-escaped", "reasoning", "tool-call-first", "tool-call-fragment", "done",
         "done-usage", "done-no-usage-known", "cancelled", "failed", "rate-limited"],
)
def test_encoder_bytes(event: Any, include_usage: bool, expected: list[bytes]) -> None:
    meta = StreamMeta("s1", None, "m", "openai", "tok", "w", 1700000000.9,
                      {"include_usage": include_usage})
    encoder = formats.get("openai").encoder(meta, 7)
    assert encoder.encode([event]) == expected
    assert encoder.seq == 7 + len(expected)


def test_assemble_adds_the_chunks_up() -> None:
    meta = StreamMeta("s1", None, "m", "openai", "tok", "w", 1700000000.0,
                      {"include_usage": True})
    encoder = formats.get("openai").encoder(meta)
    body = [b"retry: 1000\n: ping\n", *encoder.encode([
        Start("s1", "m", "tok", 1700000000), Reasoning("Hm. "), Reasoning("Yes."),
        Token("Hello ", 0), ToolCall(0, "c1", "f", ""), ToolCall(0, arguments='{"a":'),
        ToolCall(1, "c2", "g", "{}"), ToolCall(0, arguments="1}"), Token("world", 1),
        Done("tool_calls", USAGE)]), b": ping\n", b"data: [DONE]\n\n"]
    completion = assemble(body)
    assert completion.status() == 200
    assert completion.body() == {
        "id": "chatcmpl-s1", "object": "chat.completion", "created": 1700000000, "model": "m",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "logprobs": None, "message": {
            "role": "assistant", "content": "Hello world", "refusal": None,
            "reasoning_content": "Hm. Yes.", "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}},
                {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "{}"}}]}}],
        "usage": USAGE}
    ChatCompletion.model_validate(completion.body(), strict=True)
    failed = assemble(encoder.encode([Failed("upstream_auth", "no")]))
    assert failed.status() == 502
    assert failed.body() == {"error": {"message": "no", "type": "server_error", "param": None,
                                       "code": "upstream_auth"}}
    assert assemble(formats.get("openai").encoder(meta).encode(
        [Done("cancelled")])).status() == 409
