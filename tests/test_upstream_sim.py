"""The upstream simulator, checked over raw sockets and through the official openai SDK.

The SDK half doubles as a record of how the SDK reports each upstream failure, which the
project's upstream boundary has to translate.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from upstream_sim import DEFAULT_TEXT, SECRET, UpstreamSimulator

WAIT = 5.0  # generous bound for anything that should take milliseconds


@pytest.fixture
def sim() -> Iterator[UpstreamSimulator]:
    with UpstreamSimulator() as simulator:
        yield simulator


@pytest.fixture
def client(sim: UpstreamSimulator) -> Iterator[openai.OpenAI]:
    sdk = openai.OpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=0)
    yield sdk
    sdk.close()


def script(**keys: Any) -> list[ChatCompletionMessageParam]:
    return [{"role": "user", "content": "SIM " + json.dumps(keys)}]


HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hello there"}]


def raw_post(sim: UpstreamSimulator, body: Any) -> tuple[bytes, list[bytes]]:
    """POST over a bare socket; (status line and headers, chunked-body frames as sent)."""
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    with socket.create_connection(("127.0.0.1", sim.port), timeout=WAIT) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: sim\r\nConnection: close\r\n"
                     b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                     % (len(payload), payload))
        raw = b""
        while data := sock.recv(65536):
            raw += data
    head, _, rest = raw.partition(b"\r\n\r\n")
    frames = []
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            assert rest == b"\r\n", "a chunked body ends with an empty last chunk"
            break
        frames.append(rest[:size])
        assert rest[size:size + 2] == b"\r\n"
        rest = rest[size + 2:]
    return head, frames


def events(frames: list[bytes], eol: bytes = b"\n") -> list[Any]:
    """The JSON of each `data:` frame, "[DONE]" kept as a string."""
    out: list[Any] = []
    for frame in frames:
        assert frame.startswith(b"data: ") and frame.endswith(eol * 2), frame
        data = frame[6:-2 * len(eol)]
        out.append(data.decode() if data == b"[DONE]" else json.loads(data))
    return out


# --- wire format, checked byte by byte ---


def test_stream_wire_shape_one_event_per_chunk(sim: UpstreamSimulator) -> None:
    head, frames = raw_post(sim, {"model": "gpt-x", "messages": script(tokens=["Hi", " you"]),
                                  "stream": True, "stream_options": {"include_usage": True}})
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"Content-Type: text/event-stream; charset=utf-8" in head
    assert b"Transfer-Encoding: chunked" in head
    got = events(frames)
    assert got[-1] == "[DONE]"
    role, hi, you, finish, usage = got[:-1]
    for chunk in (role, hi, you, finish, usage):
        assert set(chunk) == {"id", "object", "created", "model", "choices", "usage"}
        assert chunk["object"] == "chat.completion.chunk" and chunk["model"] == "gpt-x"
        assert chunk["id"] == role["id"]
    assert role["choices"] == [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                "logprobs": None, "finish_reason": None}]
    assert [c["choices"][0]["delta"] for c in (hi, you)] == [{"content": "Hi"}, {"content": " you"}]
    assert finish["choices"][0]["delta"] == {} and finish["choices"][0]["finish_reason"] == "stop"
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 2
    assert sim.requests[0].completed and sim.requests[0].chunks_sent == 2


def test_no_usage_chunk_unless_asked(sim: UpstreamSimulator) -> None:
    _, frames = raw_post(sim, {"messages": script(tokens=1), "stream": True})
    got = events(frames)[:-1]
    assert all(c["choices"] and "usage" not in c for c in got)
    _, frames = raw_post(sim, {"messages": script(tokens=1, no_usage=True), "stream": True,
                               "stream_options": {"include_usage": True}})
    assert all(c["choices"] for c in events(frames)[:-1])


def test_crlf_framing(sim: UpstreamSimulator) -> None:
    _, frames = raw_post(sim, {"messages": script(tokens=2, crlf=True), "stream": True})
    got = events(frames, eol=b"\r\n")
    assert got[-1] == "[DONE]" and len(got) == 5
    assert all(b"\n" not in frame.replace(b"\r\n", b"") for frame in frames)


def test_done_after_ends_like_an_interrupted_llama_cpp_stream(sim: UpstreamSimulator) -> None:
    _, frames = raw_post(sim, {"messages": script(tokens=5, done_after=2), "stream": True,
                               "stream_options": {"include_usage": True}})
    got = events(frames)
    assert got[-1] == "[DONE]"
    assert [c["choices"][0]["delta"] for c in got[1:-1]] == [{"content": "t0 "},
                                                            {"content": "t1 "}]
    assert all(c["choices"][0]["finish_reason"] is None for c in got[:-1])  # and no usage
    assert sim.requests[0].completed and sim.requests[0].chunks_sent == 2


def dechunk(raw: bytes) -> bytes:
    """The body so far of a chunked response, up to a last chunk that may be cut short."""
    _, _, rest = raw.partition(b"\r\n\r\n")
    body = b""
    while b"\r\n" in rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        body, rest = body + rest[:size], rest[size + 2:]
    return body


def test_long_line_never_ends_until_the_client_goes(sim: UpstreamSimulator) -> None:
    line = b"data: " + b"x" * (300 * 1024)
    with socket.create_connection(("127.0.0.1", sim.port), timeout=WAIT) as sock:
        payload = json.dumps({"messages": script(tokens=3, long_line=len(line) - 6,
                                                 long_line_after=1), "stream": True}).encode()
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: sim\r\n"
                     b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                     % (len(payload), payload))
        raw = b""
        while not dechunk(raw).endswith(line):
            data = sock.recv(65536)
            assert data, "the simulator ended the body before the long line was out"
            raw += data
    body = dechunk(raw)
    assert body.endswith(b"\n\n" + line)  # and it never ends: the socket was still open
    assert b"t0 " in body and b"t1 " not in body
    record = sim.requests[0]
    assert record.wait_closed(WAIT) and record.outcome == "client_closed"


def test_keepalive_comments_while_stalled(sim: UpstreamSimulator) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", sim.port, timeout=WAIT)
    body = {"messages": script(tokens=3, stall_after=1, keepalive_comments=True), "stream": True}
    conn.request("POST", "/v1/chat/completions", json.dumps(body))
    resp = conn.getresponse()
    lines = [resp.readline() for _ in range(8)]  # role, blank, t0, blank, then comments
    conn.close()
    assert lines[4:] == [b": keep-alive\n", b"\n"] * 2
    assert sim.requests[0].wait_closed(WAIT)


def test_keep_alive_connection_serves_stream_then_json(sim: UpstreamSimulator) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", sim.port, timeout=WAIT)
    for stream in (True, False):
        conn.request("POST", "/v1/chat/completions",
                     json.dumps({"messages": script(tokens=2), "stream": stream}))
        resp = conn.getresponse()
        data = resp.read()
        assert resp.status == 200
    conn.close()
    assert json.loads(data)["choices"][0]["message"]["content"] == "t0 t1 "


@pytest.mark.parametrize(("body", "needle"), [
    pytest.param(b"{not json", b"not JSON", id="not-json"),
    pytest.param({"messages": "hi"}, b"'messages' list", id="no-messages-list"),
    pytest.param({"messages": script(tokens=2, stall=1)}, b"keys from", id="unknown-script-key"),
    pytest.param({"messages": script(status=500, fail_times=1)}, b"needs a string 'id'",
                 id="fail-times-without-id"),
])
def test_malformed_request_is_a_loud_400(sim: UpstreamSimulator, body: Any, needle: bytes) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", sim.port, timeout=WAIT)
    payload = body if isinstance(body, bytes) else json.dumps(body)
    conn.request("POST", "/v1/chat/completions", payload)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    assert resp.status == 400 and needle in data
    assert json.loads(data)["error"]["type"] == "invalid_request_error"


# --- through the openai SDK ---


def test_default_stream_typed_iteration(sim: UpstreamSimulator, client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model="gpt-x", messages=HELLO, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == DEFAULT_TEXT
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-2].choices[0].finish_reason == "stop"
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == len(DEFAULT_TEXT.split())
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    record = sim.requests[0]
    assert record.wait_done(WAIT) and record.completed and record.closed_at is None
    assert record.headers["authorization"] == "Bearer sk-test"  # lookups ignore case
    assert record.body["stream_options"] == {"include_usage": True}


def test_non_stream_completion(client: openai.OpenAI) -> None:
    done = client.chat.completions.create(model="gpt-x", messages=HELLO)
    assert done.choices[0].message.content == DEFAULT_TEXT
    assert done.choices[0].finish_reason == "stop" and done.usage is not None


def test_with_streaming_response_gives_raw_lines(client: openai.OpenAI) -> None:
    with client.chat.completions.with_streaming_response.create(
            model="gpt-x", messages=script(tokens=2), stream=True) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = list(response.iter_lines())
    data = [line for line in lines if line]
    assert all(line.startswith("data: ") for line in data)
    assert data[-1] == "data: [DONE]" and len(data) == 5
    assert json.loads(data[1][6:])["choices"][0]["delta"] == {"content": "t0 "}


@pytest.mark.parametrize(("status", "error"), [
    (400, openai.BadRequestError), (401, openai.AuthenticationError),
    (403, openai.PermissionDeniedError), (404, openai.NotFoundError),
    (408, openai.APIStatusError), (409, openai.ConflictError),
    (422, openai.UnprocessableEntityError), (429, openai.RateLimitError),
    (500, openai.InternalServerError), (503, openai.InternalServerError),
], ids=str)
def test_status_becomes_sdk_error(client: openai.OpenAI, status: int,
                                 error: type[openai.APIStatusError]) -> None:
    with pytest.raises(error) as caught:
        client.chat.completions.create(model="m", messages=script(status=status), stream=True)
    assert type(caught.value) is error and caught.value.status_code == status
    # The SDK copies the upstream's message into str(exc): the boundary must not pass it on.
    assert SECRET in str(caught.value)


def test_rate_limit_exposes_retry_after(sim: UpstreamSimulator, client: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="m", messages=script(status=429, retry_after=7),
                                       stream=True)
    assert caught.value.response.headers["retry-after"] == "7"
    assert caught.value.code == "rate_limit_exceeded"
    assert len(sim.requests) == 1


def test_sdk_reads_retry_after_and_gives_up_when_too_long(sim: UpstreamSimulator) -> None:
    # The SDK refuses to retry when Retry-After exceeds its 60 s cap, so one request only.
    with openai.OpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=3) as sdk, \
            pytest.raises(openai.RateLimitError):
        sdk.chat.completions.create(model="m", messages=script(status=429, retry_after=3600),
                                    stream=True)
    assert len(sim.requests) == 1


def test_with_streaming_response_raises_on_enter(client: openai.OpenAI) -> None:
    entered = False
    with pytest.raises(openai.InternalServerError):  # noqa: SIM117 - the raise is at __enter__
        with client.chat.completions.with_streaming_response.create(
                model="m", messages=script(status=503), stream=True):
            entered = True
    assert not entered


def test_fail_times_then_success(sim: UpstreamSimulator, client: openai.OpenAI) -> None:
    messages = script(id="flaky", status=500, fail_times=2, tokens=2)
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="m", messages=messages, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in
                   client.chat.completions.create(model="m", messages=messages, stream=True))
    assert text == "t0 t1 "
    assert [r.status for r in sim.requests] == [500, 500, 200]
    sim.reset()
    assert sim.requests == []
    with pytest.raises(openai.InternalServerError):  # counters were reset too
        client.chat.completions.create(model="m", messages=messages, stream=True)


def test_sdk_retries_land_on_success(sim: UpstreamSimulator) -> None:
    messages = script(id="retry", status=503, fail_times=2, retry_after="0.01", tokens=1)
    with openai.OpenAI(base_url=sim.base_url, api_key="sk-test", max_retries=2) as sdk:
        chunks = list(sdk.chat.completions.create(model="m", messages=messages, stream=True))
    assert chunks[1].choices[0].delta.content == "t0 "
    assert [r.status for r in sim.requests] == [503, 503, 200]


def test_stall_then_client_close_is_recorded(sim: UpstreamSimulator, client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model="m", messages=script(tokens=5, stall_after=2),
                                            stream=True)
    got = [next(stream).choices[0].delta.content for _ in range(3)]
    assert got == ["", "t0 ", "t1 "]
    closed = time.monotonic()
    stream.close()
    record = sim.requests[0]
    assert record.wait_closed(WAIT) and record.wait_done(WAIT)
    assert record.closed_at is not None and record.closed_at - closed < 1.0
    assert record.outcome == "client_closed" and not record.completed
    assert record.chunks_sent == 2


def test_client_close_while_sending_slowly(sim: UpstreamSimulator, client: openai.OpenAI) -> None:
    with client.chat.completions.create(model="m", messages=script(tokens=500, delay=0.2),
                                        stream=True) as stream:
        next(stream)
    record = sim.requests[0]
    assert record.wait_closed(WAIT)
    assert record.chunks_sent < 500


def test_client_timeout_during_headers_delay(sim: UpstreamSimulator, client: openai.OpenAI) -> None:
    with pytest.raises(openai.APITimeoutError):
        client.with_options(timeout=0.3).chat.completions.create(
            model="m", messages=script(headers_delay=60), stream=True)
    assert sim.requests[0].wait_closed(WAIT)


def test_stop_releases_stalled_handlers(client: openai.OpenAI) -> None:
    simulator = UpstreamSimulator().start()
    sdk = client.with_options(base_url=simulator.base_url)
    stream = sdk.chat.completions.create(model="m", messages=script(stall_after=0), stream=True)
    next(stream)
    began = time.monotonic()
    simulator.stop()
    assert time.monotonic() - began < WAIT
    assert simulator.requests[0].outcome == "stopped"
    with pytest.raises(openai.APIConnectionError):
        next(stream)


def test_drop_after_cuts_the_stream(sim: UpstreamSimulator, client: openai.OpenAI) -> None:
    got: list[str | None] = []
    with pytest.raises(openai.APIConnectionError) as caught:
        for chunk in client.chat.completions.create(
                model="m", messages=script(tokens=5, drop_after=2), stream=True):
            got.append(chunk.choices[0].delta.content)
    assert got == ["", "t0 ", "t1 "]
    assert "incomplete chunked read" in str(caught.value.__cause__)
    assert sim.requests[0].wait_done(WAIT) and sim.requests[0].outcome == "dropped"


def test_error_after_raises_api_error_in_stream(client: openai.OpenAI) -> None:
    got: list[str | None] = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in client.chat.completions.create(
                model="m", messages=script(tokens=5, error_after=1), stream=True):
            got.append(chunk.choices[0].delta.content)
    assert got == ["", "t0 "]
    assert not isinstance(caught.value, openai.APIStatusError)  # the status was 200
    assert SECRET in caught.value.message
    assert isinstance(caught.value.body, dict) and caught.value.body["type"] == "server_error"


def test_vllm_error_style_is_not_raised_by_the_sdk(client: openai.OpenAI) -> None:
    # vLLM's payload has no "error" key, so the SDK yields it as a chunk with choices=None.
    chunks = list(client.chat.completions.create(
        model="m", messages=script(tokens=5, error_after=1, error_style="vllm"), stream=True))
    assert len(chunks) == 3 and chunks[-1].choices is None
    assert chunks[-1].object == "error"  # type: ignore[comparison-overlap]
    assert chunks[-1].model_extra == {"message": f"simulated in-stream failure: {SECRET}",
                                      "type": "InternalServerError", "code": 500}


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_reasoning_deltas(client: openai.OpenAI, field: str) -> None:
    chunks = list(client.chat.completions.create(
        model="m", messages=script(reasoning=["Let me ", "think."], reasoning_field=field,
                                   tokens=["Yes."]), stream=True))
    deltas = [c.choices[0].delta for c in chunks]
    assert [getattr(d, field, None) for d in deltas[1:3]] == ["Let me ", "think."]
    assert deltas[3].content == "Yes." and deltas[1].content is None


def test_tool_call_fragments(client: openai.OpenAI) -> None:
    calls = [{"name": "get_weather", "arguments": '{"city": "Paris", "unit": "C"}'},
             {"name": "noop", "arguments": "{}"}]
    chunks = list(client.chat.completions.create(
        model="m", messages=script(tokens=[], tool_calls=calls), stream=True))
    fragments = [c.choices[0].delta.tool_calls[0] for c in chunks if c.choices[0].delta.tool_calls]
    firsts = [f for f in fragments if f.id is not None]
    assert [(f.index, f.id, f.type) for f in firsts] == [(0, "call_sim0", "function"),
                                                       (1, "call_sim1", "function")]
    assert all(f.function and f.function.arguments == "" for f in firsts)
    rest = [f for f in fragments if f.id is None]
    assert all(f.function and f.function.name is None and f.type is None for f in rest)
    for index, call in enumerate(calls):
        pieces = [f.function.arguments for f in rest if f.index == index and f.function]
        assert "".join(p or "" for p in pieces) == call["arguments"]
    assert len([f for f in rest if f.index == 0]) >= 3  # really split into fragments
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_max_tokens_gives_length(sim: UpstreamSimulator, client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(
        model="m", messages=script(tokens=10), max_tokens=4, stream=True,
        stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "t0 t1 t2 t3 "
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4


def test_finish_reason_override(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(
        model="m", messages=script(tokens=1, finish_reason="content_filter"), stream=True))
    assert chunks[-1].choices[0].finish_reason == "content_filter"


def test_wait_for_requests(sim: UpstreamSimulator, client: openai.OpenAI) -> None:
    assert not sim.wait_for_requests(1, timeout=0.05)
    client.chat.completions.create(model="m", messages=HELLO)
    assert sim.wait_for_requests(1, timeout=WAIT)
