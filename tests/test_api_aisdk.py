"""The AI SDK UI message stream at /api/chat (PROTOCOL.md, "AI SDK UI message stream"): the
encoder's exact parts, then the service on the simulator read by the `ai` package's own
`DefaultChatTransport` in Node (cut, reconnect, stop, one stream per chat, keys), and a React
page on `useChat({ resume: true })` in Debian's Chromium, reloaded mid-answer."""

from __future__ import annotations

import json
import queue
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from http.client import HTTPConnection
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, TESTS, Service, openai_env
from sseclient import Event, StreamResponse, collect, open_stream, request
from tcpproxy import TCPProxy

from streaming.events import Done, Failed, Reasoning, Start, Token, ToolCall
from streaming.formats import get
from streaming.stores.base import StreamMeta

JS = TESTS / "js"
NODE = shutil.which("node") or "node"


def ui_user(text: str, message_id: str = "u1") -> dict[str, Any]:
    return {"id": message_id, "role": "user", "parts": [{"type": "text", "text": text}]}


def sim_text(**script: Any) -> str:
    return "SIM " + json.dumps(script)


def chat_body(chat_id: str, **script: Any) -> dict[str, Any]:
    """What DefaultChatTransport posts for a one-message chat scripting the simulator."""
    return {"id": chat_id, "messages": [ui_user(sim_text(**script))],
            "trigger": "submit-message"}


def parts(events: list[Event]) -> list[dict[str, Any]]:
    return [e.json for e in events if e.data != "[DONE]"]


def text_of(events: list[Event]) -> str:
    return "".join(p["delta"] for p in parts(events) if p["type"] == "text-delta")


def read_until(stream: StreamResponse, text: str) -> list[Event]:
    """Events until their text is `text` (deltas may be joined); the stream stays open."""
    seen: list[Event] = []
    for event in stream.events():
        seen.append(event)
        if text_of(seen) == text:
            return seen
    raise AssertionError(f"the stream ended first: {[e.data for e in seen]}")


# -- the encoder, exact bytes ---------------------------------------------------------------

def meta(stream_id: str = "s1", **options: Any) -> StreamMeta:
    return StreamMeta(stream_id=stream_id, owner=None, model="m", format="aisdk",
                      resume_token="t", worker="w", created=0.0, options=options)


START = Start("s1", "m", "t", 0)
CALL = [ToolCall(0, "call_a", "get_weather", '{"city": '), ToolCall(0, None, None, '"Paris"}')]


@pytest.mark.parametrize(("events", "expected"), [
    pytest.param([START, Token("Hel", 0), Token("lo", 1), Done("stop")], [
        {"type": "start", "messageId": "M"}, {"type": "start-step"},
        {"type": "text-start", "id": "text-0"},
        {"type": "text-delta", "id": "text-0", "delta": "Hel"},
        {"type": "text-delta", "id": "text-0", "delta": "lo"},
        {"type": "text-end", "id": "text-0"}, {"type": "finish-step"},
        {"type": "finish", "finishReason": "stop"}], id="text"),
    pytest.param([START, Reasoning("hm"), Token("a", 0), Reasoning("again"), Done("length")], [
        {"type": "start", "messageId": "M"}, {"type": "start-step"},
        {"type": "reasoning-start", "id": "reasoning-0"},
        {"type": "reasoning-delta", "id": "reasoning-0", "delta": "hm"},
        {"type": "reasoning-end", "id": "reasoning-0"},
        {"type": "text-start", "id": "text-1"},
        {"type": "text-delta", "id": "text-1", "delta": "a"},
        {"type": "text-end", "id": "text-1"},
        {"type": "reasoning-start", "id": "reasoning-2"},
        {"type": "reasoning-delta", "id": "reasoning-2", "delta": "again"},
        {"type": "reasoning-end", "id": "reasoning-2"}, {"type": "finish-step"},
        {"type": "finish", "finishReason": "length"}], id="reasoning-then-text"),
    pytest.param([START, Token("x", 0), *CALL, ToolCall(1, "call_b", "f", "{oops"),
                  Done("tool_calls")], [
        {"type": "start", "messageId": "M"}, {"type": "start-step"},
        {"type": "text-start", "id": "text-0"},
        {"type": "text-delta", "id": "text-0", "delta": "x"},
        {"type": "text-end", "id": "text-0"},
        {"type": "tool-input-start", "toolCallId": "call_a", "toolName": "get_weather"},
        {"type": "tool-input-delta", "toolCallId": "call_a", "inputTextDelta": '{"city": '},
        {"type": "tool-input-delta", "toolCallId": "call_a", "inputTextDelta": '"Paris"}'},
        {"type": "tool-input-start", "toolCallId": "call_b", "toolName": "f"},
        {"type": "tool-input-delta", "toolCallId": "call_b", "inputTextDelta": "{oops"},
        {"type": "tool-input-available", "toolCallId": "call_a", "toolName": "get_weather",
         "input": {"city": "Paris"}},
        {"type": "tool-input-error", "toolCallId": "call_b", "toolName": "f", "input": "{oops",
         "errorText": "the model's tool arguments are not valid JSON"},
        {"type": "finish-step"}, {"type": "finish", "finishReason": "tool-calls"}],
        id="tool-calls"),
    pytest.param([START, Token("x", 0), Done("cancelled")], [
        {"type": "start", "messageId": "M"}, {"type": "start-step"},
        {"type": "text-start", "id": "text-0"},
        {"type": "text-delta", "id": "text-0", "delta": "x"},
        {"type": "text-end", "id": "text-0"}, {"type": "abort", "reason": "cancelled"}],
        id="cancelled"),
    pytest.param([START, Done("content_filter")], [
        {"type": "start", "messageId": "M"}, {"type": "start-step"}, {"type": "finish-step"},
        {"type": "finish", "finishReason": "content-filter"}], id="content-filter"),
    pytest.param([START, Token("x", 0), Failed("timeout", "too slow")], [
        {"type": "start", "messageId": "M"}, {"type": "start-step"},
        {"type": "text-start", "id": "text-0"},
        {"type": "text-delta", "id": "text-0", "delta": "x"},
        {"type": "text-end", "id": "text-0"}, {"type": "error", "errorText": "too slow"}],
        id="failed"),
])
def test_encoder_parts(events: list[Any], expected: list[dict[str, Any]]) -> None:
    encoder = get("aisdk").encoder(meta(message_id="M"))
    out = encoder.encode(events[:2]) + encoder.encode(events[2:])  # state across batches
    lines = [b"id: %d\ndata: %s\n\n" % (i, json.dumps(p, separators=(",", ":")).encode())
             for i, p in enumerate(expected)]
    assert out == lines
    assert encoder.seq == len(expected)


def test_encoder_ids_are_the_streams_own() -> None:
    events = [START, Token("a\u2028b", 0), Done("stop")]
    one = get("aisdk").encoder(meta("stream-A")).encode(events)
    assert one == get("aisdk").encoder(meta("stream-A")).encode(events)  # every replay alike
    other = get("aisdk").encoder(meta("stream-B")).encode(events)
    message_id = json.loads(one[0].split(b"data: ")[1])["messageId"]
    assert message_id != json.loads(other[0].split(b"data: ")[1])["messageId"]
    assert "stream-A" not in message_id
    assert b"a\\u2028b" in one[3]  # through the one SSE encoder and its escaping
    # A lost producer's end, written elsewhere by a fresh encoder at the stream's next seq.
    assert get("aisdk").encoder(meta("stream-A"), 41).encode(
        [Failed("producer_lost", "gone")]) == [
        b'id: 41\ndata: {"type":"error","errorText":"gone"}\n\n']


# -- Node: the `ai` package's transport ----------------------------------------------------

class NodeClient:
    """tests/js/chat_client.mjs in Node, its JSON lines read as they come."""

    def __init__(self, **config: Any) -> None:
        self.proc = subprocess.Popen([NODE, str(JS / "chat_client.mjs"), json.dumps(config)],
                                     cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.results: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))
        self.lines.put(None)

    def wait_for(self, predicate: Any, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            item = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            if item is None:
                raise AssertionError(f"node ended first: {self._stderr()}")
            if item["event"] == "result":
                self.results.append(item)
            if predicate(item):
                return item

    def finish(self, timeout: float = 30.0) -> list[dict[str, Any]]:
        self.wait_for(lambda item: item["event"] == "end", timeout)
        code = self.proc.wait(10)
        assert code == 0, self._stderr()
        self._stderr()
        return self.results

    def _stderr(self) -> str:
        """Its error output, once it has ended (killed if need be); closes its pipes."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._reader.join(10)  # to the end of its output
        assert self.proc.stdout is not None and self.proc.stderr is not None
        err = self.proc.stderr.read()
        self.proc.stdout.close()
        self.proc.stderr.close()
        return err


def node(**config: Any) -> list[dict[str, Any]]:
    return NodeClient(**config).finish()


def test_transport_resumes_a_cut_stream_to_the_exact_text(relay_service: Service,
                                                          sim: Any) -> None:
    words = [f"w{i} " for i in range(40)]
    with TCPProxy(("127.0.0.1", relay_service.port)) as proxy:
        client = NodeClient(api=f"{proxy.url}/api/chat", chatId="cut-1", mode="send",
                            reconnect=True,
                            messages=[ui_user(sim_text(tokens=words, delay=0.05))])
        client.wait_for(lambda e: e["event"] == "chunk" and e["textDeltas"] >= 5)
        assert proxy.cut() >= 1
        sent, resumed = client.finish()
    assert sent["errors"] and sent["invalid"] == []
    assert "".join(words).startswith(sent["text"]) and sent["text"] != "".join(words)
    # The reconnect replays the whole stream (what the transport expects) and goes on live.
    assert resumed["status"] == "stream"
    assert resumed["invalid"] == [] and resumed["errors"] == []
    assert resumed["text"] == "".join(words)
    chunks = resumed["chunks"]
    assert chunks[0] == sent["chunks"][0]  # the same messageId in every replay
    assert resumed["message"]["id"] == chunks[0]["messageId"]
    assert [c["type"] for c in chunks[:3]] == ["start", "start-step", "text-start"]
    assert chunks[-3:] == [{"type": "text-end", "id": "text-0"}, {"type": "finish-step"},
                           {"type": "finish", "finishReason": "stop"}]
    (record,) = sim.requests  # one generation, whatever the client did
    assert record.body["messages"] == [{"role": "user", "content": sim_text(tokens=words,
                                                                           delay=0.05)}]
    # Ended: nothing to resume, for raw HTTP and for the transport alike.
    status, _, raw = request(relay_service.url, "GET", "/api/chat/cut-1/stream")
    assert (status, raw) == (204, b"")
    (after,) = node(api=f"{relay_service.url}/api/chat", chatId="cut-1", mode="reconnect")
    assert after["status"] == "no-content"


def test_reasoning_tool_calls_and_errors_as_the_package_reads_them(relay_service: Service,
                                                                  sim: Any) -> None:
    api = f"{relay_service.url}/api/chat"
    script = {"reasoning": ["Let me ", "think."], "tokens": ["Hello ", "world."],
              "tool_calls": [{"name": "get_weather", "arguments": '{"city": "Paris"}'}]}
    (result,) = node(api=api, chatId="parts-1", mode="send",
                     messages=[ui_user(sim_text(**script))])
    assert result["invalid"] == [] and result["errors"] == []
    message = result["message"]
    kinds = [p["type"] for p in message["parts"]]
    assert kinds == ["step-start", "reasoning", "text", "tool-get_weather"]
    assert message["parts"][1]["text"] == "Let me think."
    assert result["text"] == "Hello world."
    tool = message["parts"][3]
    assert tool["state"] == "input-available" and tool["input"] == {"city": "Paris"}
    assert tool["toolCallId"] == "call_sim0"
    assert result["chunks"][-1] == {"type": "finish", "finishReason": "tool-calls"}
    # An upstream failure mid-answer: the text so far, then `error` and no `finish`.
    (failed,) = node(api=api, chatId="parts-2", mode="send",
                     messages=[ui_user(sim_text(tokens=5, error_after=2))])
    assert failed["invalid"] == [] and failed["text"] == "t0 t1 "
    assert failed["chunks"][-1]["type"] == "error"
    assert failed["errors"] == [failed["chunks"][-1]["errorText"]]
    assert "SECRET" not in json.dumps(failed)
    assert all(c["type"] != "finish" for c in failed["chunks"])


def test_stop_ends_the_upstream_request_within_a_second(relay_service: Service,
                                                       sim: Any) -> None:
    stream = open_stream(relay_service.url + "/api/chat", "POST",
                         chat_body("stop-1", tokens=50, stall_after=3))
    assert stream.status == 200
    assert stream.headers["x-vercel-ai-ui-message-stream"] == "v1"
    stream_id = stream.headers["X-Stream-Id"]
    seen = read_until(stream, "t0 t1 t2 ")
    (record,) = sim.requests
    # A stale stop (another stream named) changes nothing.
    status, _, raw = request(relay_service.url, "POST", "/api/chat/stop-1/stop",
                             {"activeStreamId": "not-the-running-one"})
    assert (status, json.loads(raw)) == (200, {"success": True})
    assert not record.wait_closed(0.5)
    asked = time.monotonic()
    status, _, raw = request(relay_service.url, "POST", "/api/chat/stop-1/stop",
                             {"activeStreamId": stream_id, "assistantMessage": None})
    assert (status, json.loads(raw)) == (200, {"success": True})
    assert record.wait_closed(5)
    assert record.closed_at - asked < 1.0
    rest = collect(stream)
    assert parts(rest)[-1] == {"type": "abort", "reason": "cancelled"}
    assert rest[-1].data == "[DONE]"
    assert all(p["type"] != "finish" for p in parts(seen + rest))
    # Nothing runs now: the transport gets 204, and another stop is still a success.
    (after,) = node(api=f"{relay_service.url}/api/chat", chatId="stop-1", mode="reconnect")
    assert after["status"] == "no-content"
    status, _, raw = request(relay_service.url, "POST", "/api/chat/stop-1/stop", b"",
                             {"Content-Type": None})
    assert (status, json.loads(raw)) == (200, {"success": True})


def test_a_new_message_cancels_the_chats_running_stream(relay_service: Service,
                                                        sim: Any) -> None:
    first = open_stream(relay_service.url + "/api/chat", "POST",
                        chat_body("one-1", tokens=50, stall_after=2))
    read_until(first, "t0 t1 ")
    second = open_stream(relay_service.url + "/api/chat", "POST",
                         chat_body("one-1", tokens=50, stall_after=2))
    second_seen = read_until(second, "t0 t1 ")
    assert sim.requests[0].wait_closed(5)
    assert parts(collect(first))[-1] == {"type": "abort", "reason": "cancelled"}
    assert not sim.requests[1].wait_closed(0.2)
    # The chat's running stream is the second one: a resume replays it from its start.
    resumed = open_stream(relay_service.url + "/api/chat/one-1/stream")
    assert resumed.status == 200
    assert resumed.headers["X-Stream-Id"] == second.headers["X-Stream-Id"]
    assert resumed.headers["x-vercel-ai-ui-message-stream"] == "v1"
    replay = read_until(resumed, "t0 t1 ")
    assert [e.data for e in replay] == [e.data for e in second_seen]
    resumed.close()
    # With Last-Event-ID, only what follows.
    tail = open_stream(relay_service.url + "/api/chat/one-1/stream",
                       headers={"Last-Event-ID": "2"})
    assert next(tail.events()).id == "3"
    tail.close()
    request(relay_service.url, "POST", "/api/chat/one-1/stop", {})
    assert parts(collect(second))[-1]["type"] == "abort"


def test_ui_messages_become_chat_messages(relay_service: Service, sim: Any) -> None:
    ui = [
        {"id": "s", "role": "system", "parts": [{"type": "text", "text": "Be brief."}]},
        {"id": "u1", "role": "user", "parts": [
            {"type": "text", "text": "What is this?"},
            {"type": "file", "mediaType": "image/png", "url": "data:image/png;base64,AAAA"},
            {"type": "file", "mediaType": "application/pdf", "url": "https://x/y.pdf"},
            {"type": "data-note", "data": {"ignored": True}}]},
        {"id": "a1", "role": "assistant", "parts": [
            {"type": "step-start"},
            {"type": "reasoning", "text": "thinking"},
            {"type": "text", "text": "Let me look."},
            {"type": "tool-weather", "toolCallId": "c1", "state": "output-available",
             "input": {"city": "Paris"}, "output": {"temp": 21}},
            {"type": "dynamic-tool", "toolName": "lookup", "toolCallId": "c2",
             "state": "output-error", "input": {"q": 1}, "errorText": "no such thing"},
            {"type": "tool-pending", "toolCallId": "c3", "state": "input-available",
             "input": {}},
            {"type": "step-start"},
            {"type": "text", "text": "It is "}, {"type": "text", "text": "21 degrees."}]},
        ui_user(sim_text(tokens=1), "u2"),
    ]
    body = {"id": "map-1", "messages": ui, "trigger": "submit-message", "messageId": None,
            "model": "sim-model", "temperature": 0.5, "max_tokens": 7, "someClientField": 1}
    events = collect(open_stream(relay_service.url + "/api/chat", "POST", body))
    assert parts(events)[-1]["type"] == "finish"
    (record,) = sim.requests
    assert record.body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
        {"role": "assistant", "content": "Let me look.", "tool_calls": [
            {"id": "c1", "type": "function",
             "function": {"name": "weather", "arguments": '{"city":"Paris"}'}},
            {"id": "c2", "type": "function",
             "function": {"name": "lookup", "arguments": '{"q":1}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": '{"temp":21}'},
        {"role": "tool", "tool_call_id": "c2", "content": "no such thing"},
        {"role": "assistant", "content": "It is 21 degrees."},
        {"role": "user", "content": sim_text(tokens=1)},
    ]
    assert record.body["temperature"] == 0.5 and record.body["max_tokens"] == 7
    # A request continuing an assistant message (a client-side tool result) keeps its id.
    cont = {"id": "map-2", "messages": [ui_user(sim_text(tokens=1)),
                                        {"id": "a-cont", "role": "assistant", "parts": []}]}
    first = parts(collect(open_stream(relay_service.url + "/api/chat", "POST", cont)))[0]
    assert first == {"type": "start", "messageId": "a-cont"}


@pytest.mark.parametrize(("method", "path", "body", "headers", "status"), [
    ("POST", "/api/chat", {"messages": [ui_user("hi")]}, {}, 422),
    ("POST", "/api/chat", {"id": "stream", "messages": [ui_user("hi")]}, {}, 422),
    ("POST", "/api/chat", {"id": "a/b", "messages": [ui_user("hi")]}, {}, 422),
    ("POST", "/api/chat", {"id": "x" * 129, "messages": [ui_user("hi")]}, {}, 422),
    ("POST", "/api/chat", {"id": "c\n", "messages": [ui_user("hi")]}, {}, 422),
    ("POST", "/api/chat", {"id": 5, "messages": [ui_user("hi")]}, {}, 422),
    ("POST", "/api/chat", {"id": "c"}, {}, 422),
    ("POST", "/api/chat", {"id": "c", "messages": []}, {}, 422),
    ("POST", "/api/chat", {"id": "c", "messages": [{"role": "user", "content": "hi"}]}, {},
     422),
    ("POST", "/api/chat", {"id": "c", "messages": [
        {"id": "u", "role": "user", "parts": [{"type": "reasoning", "text": "x"}]}]}, {}, 422),
    ("POST", "/api/chat", {"id": "c", "messages": [{"id": "u", "role": "user", "parts": [
        {"type": "file", "mediaType": "image/png", "url": "file:///etc/passwd"}]}]}, {}, 422),
    ("POST", "/api/chat", {"id": "c", "messages": [ui_user("hi")], "temperature": 3}, {}, 422),
    ("POST", "/api/chat", {"id": "c", "messages": [ui_user("hi")], "max_tokens": 0}, {}, 422),
    ("POST", "/api/chat", b"{not json", {}, 400),
    ("POST", "/api/chat", b"id=c", {"Content-Type": "application/x-www-form-urlencoded"}, 415),
    ("GET", "/api/chat", None, {}, 405),
    ("HEAD", "/api/chat/c/stream", None, {}, 405),
    ("GET", "/api/chat/c.d/stream", None, {}, 422),
    ("GET", "/api/chat/c/stream", None, {"Last-Event-ID": "abc"}, 400),
    ("GET", "/api/chat/never-used/stream", None, {}, 204),
    ("POST", "/api/chat/c/stop", b"{", {}, 400),
    ("POST", "/api/chat/stream/stop", {}, {}, 422),
], ids=lambda v: v if isinstance(v, int) else None)
def test_refusals_in_the_native_error_body(relay_service: Service, sim: Any, method: str,
                                           path: str, body: Any, headers: dict[str, str],
                                           status: int) -> None:
    got, _, raw = request(relay_service.url, method, path, body, headers)
    assert got == status, raw
    if status >= 400 and method != "HEAD":
        error = json.loads(raw)["error"]
        assert set(error) == {"type", "message"} and error["message"]
    assert sim.requests == []  # nothing refused reaches the upstream


def test_chats_belong_to_their_key(service_factory: Any, sim: Any) -> None:
    service = service_factory(openai_env(sim, API_KEYS="key-one,key-two", IDLE_TIMEOUT=10))
    one, two = ({"Authorization": "Bearer key-one"}, {"Authorization": "Bearer key-two"})
    body = chat_body("shared-name", tokens=50, stall_after=2)
    status, _, _ = request(service.url, "POST", "/api/chat", body)
    assert status == 401
    stream = open_stream(service.url + "/api/chat", "POST", body, one)
    read_until(stream, "t0 t1 ")
    (record,) = sim.requests
    # Another key's chat of the same name is unknown to this one: 204, and its stop is a no-op.
    status, _, _ = request(service.url, "GET", "/api/chat/shared-name/stream", None, two)
    assert status == 204
    status, _, _ = request(service.url, "POST", "/api/chat/shared-name/stop", {}, two)
    assert status == 200 and not record.wait_closed(0.3)
    status, _, _ = request(service.url, "GET", "/api/chat/shared-name/stream")
    assert status == 401
    resumed = open_stream(service.url + "/api/chat/shared-name/stream", headers=one)
    assert resumed.status == 200
    resumed.close()
    status, _, _ = request(service.url, "POST", "/api/chat/shared-name/stop", {}, one)
    assert status == 200 and record.wait_closed(5)
    assert parts(collect(stream))[-1]["type"] == "abort"


def test_chats_across_workers_with_redis(service_factory: Any, sim: Any,
                                        redis_server: Any) -> None:
    # Two workers on one Redis: each request may land on either, as behind a load balancer.
    service = service_factory(openai_env(sim, REDIS_URL=redis_server.url, IDLE_TIMEOUT=10,
                                         REDIS_PREFIX=f"aisdk-{time.monotonic_ns()}:"),
                              workers=2)
    first = open_stream(service.url + "/api/chat", "POST",
                        chat_body("redis-1", tokens=50, stall_after=2))
    seen = read_until(first, "t0 t1 ")
    for _ in range(6):
        resumed = open_stream(service.url + "/api/chat/redis-1/stream")
        assert resumed.status == 200
        assert [e.data for e in read_until(resumed, "t0 t1 ")] == [e.data for e in seen]
        resumed.close()
    second = open_stream(service.url + "/api/chat", "POST",
                         chat_body("redis-1", tokens=50, stall_after=2))
    read_until(second, "t0 t1 ")
    assert sim.requests[0].wait_closed(5)
    assert parts(collect(first))[-1] == {"type": "abort", "reason": "cancelled"}
    asked = time.monotonic()
    status, _, _ = request(service.url, "POST", "/api/chat/redis-1/stop", {})
    assert status == 200 and sim.requests[1].wait_closed(5)
    assert sim.requests[1].closed_at - asked < 1.0
    assert parts(collect(second))[-1]["type"] == "abort"
    for _ in range(4):
        assert request(service.url, "GET", "/api/chat/redis-1/stream")[0] == 204


# -- the browser: useChat({ resume: true }) in a React page --------------------------------

class _Site(ThreadingHTTPServer):
    daemon_threads = True
    files: dict[str, tuple[bytes, str]]
    target: tuple[str, int]
    log: list[tuple[str, str, int]]


class _SiteHandler(BaseHTTPRequestHandler):
    """The page and its bundle at /, every /api/ request passed to the service as it comes
    (so the page is same-origin with the API, as behind a reverse proxy)."""

    server: _Site
    protocol_version = "HTTP/1.0"  # each response ends with the connection: no re-framing

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def _handle(self) -> None:
        path = self.path.split("?")[0]
        if not path.startswith("/api/"):
            body, kind = self.server.files.get(path, (b"not found", "text/plain"))
            self.send_response(200 if path in self.server.files else 404)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        length = int(self.headers.get("Content-Length") or 0)
        payload = self.rfile.read(length) if length else None
        conn = HTTPConnection(*self.server.target, timeout=60)
        try:
            conn.request(self.command, self.path, payload, {
                k: v for k, v in self.headers.items()
                if k.lower() in ("content-type", "last-event-id", "authorization")})
            upstream = conn.getresponse()
            self.server.log.append((self.command, path, upstream.status))
            self.send_response(upstream.status)
            for name, value in upstream.getheaders():
                if name.lower() not in ("transfer-encoding", "connection", "server", "date"):
                    self.send_header(name, value)
            self.end_headers()
            while chunk := upstream.read1(65536):
                self.wfile.write(chunk)
                self.wfile.flush()
        except OSError:
            pass  # the browser went away (a reload): the service sees the departure
        finally:
            conn.close()


@pytest.fixture
def site(relay_service: Service, tmp_path: Path) -> Iterator[_Site]:
    bundle = tmp_path / "app.js"
    subprocess.run([str(ROOT / "node_modules" / ".bin" / "esbuild"), str(JS / "chat_page.jsx"),
                    "--bundle", "--format=iife", "--jsx=automatic", "--log-level=warning",
                    '--define:process.env.NODE_ENV="production"', f"--outfile={bundle}"],
                   cwd=ROOT, check=True, timeout=60)
    server = _Site(("127.0.0.1", 0), _SiteHandler)
    server.files = {
        "/": (b'<!doctype html><meta charset="utf-8"><title>chat</title><div id="root"></div>'
              b'<script src="/app.js"></script>', "text/html; charset=utf-8"),
        "/app.js": (bundle.read_bytes(), "text/javascript"),
    }
    server.target = ("127.0.0.1", relay_service.port)
    server.log = []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                              daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_use_chat_resumes_after_a_reload_exactly_once(site: _Site, sim: Any) -> None:
    from browser import launch
    from playwright.sync_api import sync_playwright

    words = [f"r{i} " for i in range(50)]
    expected = "".join(words)
    url = f"http://127.0.0.1:{site.server_address[1]}/?chat=react-1"
    with sync_playwright() as p:
        browser = launch(p)
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(url)
            page.fill("#prompt", sim_text(tokens=words, delay=0.06))
            page.click("#send")
            reply = page.locator("#messages > .message.assistant")
            page.wait_for_function(
                "() => (document.querySelector('.message.assistant')?.textContent ?? '')"
                ".split(' ').length > 5", timeout=20_000)
            before = reply.text_content() or ""
            page.reload()
            page.wait_for_function(
                "([text]) => document.querySelector('#status').textContent === 'ready'"
                " && document.querySelector('.message.assistant')?.textContent === text",
                arg=[expected], timeout=30_000)
            assert reply.count() == 1  # the resumed answer replaced the saved one
            assert page.locator("#messages > .message.user").count() == 1
            assert reply.text_content() == expected  # not doubled
            assert expected.startswith(before) and before != expected
            assert page.text_content("#error") == ""
            assert len(sim.requests) == 1  # one generation: the reload resumed, never re-sent
            assert ("GET", "/api/chat/react-1/stream", 200) in site.log
            assert [e for e in site.log if e[0] == "POST"] == [("POST", "/api/chat", 200)]
            # The page's Stop button posts to the stop endpoint: the generation ends.
            page.fill("#prompt", sim_text(tokens=50, stall_after=3))
            page.click("#send")
            page.wait_for_function(
                "() => document.querySelectorAll('.message.assistant')[1]?.textContent"
                " === 't0 t1 t2 '", timeout=20_000)
            clicked = time.monotonic()
            page.click("#stop")
            assert sim.requests[1].wait_closed(5)
            assert sim.requests[1].closed_at - clicked < 1.0
            page.wait_for_function("() => document.querySelector('#status').textContent"
                                   " === 'ready'", timeout=10_000)
            assert ("POST", "/api/chat/react-1/stop", 200) in site.log
            assert errors == []
        finally:
            browser.close()
