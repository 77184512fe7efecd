"""A fake upstream speaking OpenAI's chat-completions wire format, scripted per request.

The last user message picks the behaviour: ``SIM {"tokens": 5, "stall_after": 2}`` is a script
(keys in `SCRIPT_KEYS`); any other text gets `DEFAULT_TEXT`. Stdlib only, plus orjson.
"""

from __future__ import annotations

import contextlib
import math
import re
import select
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

import orjson

SECRET = "SECRET-UPSTREAM-BODY sk-live-should-not-leak"
DEFAULT_TEXT = ("The quick brown fox jumps over the lazy dog. "
                "Every token arrives in order, on time, exactly once.")
DEFAULT_TOKENS: list[str] = re.findall(r"\S+\s*", DEFAULT_TEXT)
SCRIPT_KEYS = frozenset({
    "id", "tokens", "delay", "first_delay", "headers_delay", "status", "retry_after", "fail_times",
    "stall_after", "keepalive_comments", "drop_after", "error_after", "error_style", "reasoning",
    "reasoning_field", "tool_calls", "finish_reason", "crlf", "no_usage", "done_after",
    "long_line", "long_line_after",
})
NUMBER_KEYS = ("delay", "first_delay", "headers_delay", "status", "fail_times", "stall_after",
               "drop_after", "error_after", "done_after", "long_line", "long_line_after")
POLL = 0.05  # how often waits look at the stop event and the client socket
PING = 0.2  # keep-alive comment interval
ERROR_KINDS = {  # status -> (type, code), as api.openai.com answers them
    400: ("invalid_request_error", "bad_request"),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
}


class _ClientGone(Exception):
    """The client closed its end while we were still answering."""


class _Stopped(Exception):
    """The simulator is stopping; handlers must let go."""


class Headers(dict[str, str]):
    """Request headers; lookups ignore case because HTTP field names do."""

    def __init__(self, items: Any) -> None:
        super().__init__((k.lower(), v) for k, v in items)

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return super().get(key.lower(), default)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(key.lower())


@dataclass(eq=False)
class RequestRecord:
    """One chat-completions request and what became of it.

    `outcome`: "completed" (the scripted response written to its end: through [DONE] for a
    normal stream), "client_closed", "dropped", "stopped", "crashed", or "" while running.
    `chunks_sent` counts content chunks.
    """

    body: Any
    headers: Headers = field(repr=False)  # carries the API key: keep it out of failure reports
    started: float = field(default_factory=time.monotonic)
    status: int | None = None
    closed_at: float | None = None
    completed: bool = False
    outcome: str = ""
    chunks_sent: int = 0
    peer: tuple[str, int] | None = None  # the client's address: the same on a reused connection
    _closed: threading.Event = field(default_factory=threading.Event, repr=False)
    _done: threading.Event = field(default_factory=threading.Event, repr=False)

    def wait_closed(self, timeout: float) -> bool:
        return self._closed.wait(timeout)

    def wait_done(self, timeout: float) -> bool:
        return self._done.wait(timeout)


def parse_script(body: Any) -> dict[str, Any]:
    """The script in the last user message, {} if there is none; ValueError if malformed."""
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        raise ValueError("body must be a JSON object with a 'messages' list")
    users = [m for m in body["messages"] if isinstance(m, dict) and m.get("role") == "user"]
    content = users[-1].get("content") if users else None
    if not isinstance(content, str) or not content.startswith("SIM "):
        return {}
    script = orjson.loads(content[4:])  # orjson.JSONDecodeError is a ValueError
    if not isinstance(script, dict) or not SCRIPT_KEYS.issuperset(script):
        raise ValueError(f"SIM script must be an object with keys from {sorted(SCRIPT_KEYS)}")
    if "fail_times" in script and not isinstance(script.get("id"), str):
        raise ValueError("SIM script with 'fail_times' needs a string 'id'")
    tokens = script.get("tokens", [])
    if not isinstance(tokens, int) and not _strings(tokens):
        raise ValueError("SIM 'tokens' must be an int or a list of strings")
    if not _strings(script.get("reasoning", [])):
        raise ValueError("SIM 'reasoning' must be a list of strings")
    if not all(isinstance(c, dict) and isinstance(c.get("name"), str)
               and isinstance(c.get("arguments"), str) for c in script.get("tool_calls", [])):
        raise ValueError("SIM 'tool_calls' items need string 'name' and 'arguments'")
    for key in NUMBER_KEYS:
        if not isinstance(script.get(key, 0), int | float):
            raise ValueError(f"SIM {key!r} must be a number")
    return script


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # benchmarks open hundreds of streams at once
    sim: UpstreamSimulator

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # a client hanging up on a kept-alive connection is routine, not a failure
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive and chunked bodies, like the real API
    server: _Server
    chunked = False
    eol = b"\n"

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: nothing of a request (its headers carry the API key) goes to the output."""

    def setup(self) -> None:
        super().setup()
        self.server.sim._track(self.connection, add=True)

    def finish(self) -> None:
        self.server.sim._track(self.connection, add=False)
        super().finish()

    def do_GET(self) -> None:
        self.chunked, self.eol = False, b"\n"  # one handler serves every request of a connection
        if self.path.rstrip("/") == "/v1/models":  # what readiness probes ask
            model = {"id": "sim-model", "object": "model", "created": 0, "owned_by": "sim"}
            self._json(200, {"object": "list", "data": [model]})
        else:
            self._json(404, _error_body(f"no route GET {self.path}", 404))

    def do_POST(self) -> None:
        self.chunked, self.eol = False, b"\n"
        if self.path.split("?")[0] != "/v1/chat/completions":
            self._json(404, _error_body(f"no route POST {self.path}", 404))
            return
        try:
            length = int(self.headers.get("Content-Length", ""))
            body = orjson.loads(self.rfile.read(max(length, 0)))
        except ValueError as exc:
            self.close_connection = True  # unread body bytes would be taken for the next request
            self._json(400, _error_body(f"body is not JSON with a Content-Length: {exc}", 400))
            return
        record = RequestRecord(body=body, headers=Headers(self.headers.items()),
                               peer=tuple(self.client_address[:2]))
        self.server.sim._add(record)
        try:
            try:
                script = parse_script(body)
            except ValueError as exc:  # a test wrote a bad script: say so, loudly
                record.status, record.outcome = 400, "completed"
                self._json(400, _error_body(f"simulator: {exc}", 400))
            else:
                self._answer(record, script)
        except (_ClientGone, ConnectionError):  # ConnectionError: the status line failed
            if self.server.sim._stop.is_set():  # stop() shut our socket: that was not the client
                record.outcome = "stopped"
            else:
                record.closed_at, record.outcome = time.monotonic(), "client_closed"
                record._closed.set()
        except _Stopped:
            record.outcome = "stopped"
        finally:
            record.outcome = record.outcome or "crashed"  # a simulator bug: handle_error prints it
            record.completed = record.outcome == "completed"
            if not record.completed:
                self.close_connection = True
                _shutdown(self.connection)  # the client must see the end, not wait for more
            record._done.set()

    def _answer(self, rec: RequestRecord, script: dict[str, Any]) -> None:
        self._pause(script.get("headers_delay", 0), keepalive=False)
        if "status" in script and self.server.sim._should_fail(script):
            rec.status = int(script["status"])
            extra = {"Retry-After": str(script["retry_after"])} if "retry_after" in script else {}
            body = _error_body(f"simulated upstream failure: {SECRET}", rec.status)
            self._json(rec.status, body, extra)
            rec.outcome = "completed"
            return
        tokens = script.get("tokens", DEFAULT_TOKENS)
        tokens = [f"t{i} " for i in range(tokens)] if isinstance(tokens, int) else list(tokens)
        tools, reasoning = script.get("tool_calls", []), script.get("reasoning", [])
        finish = "tool_calls" if tools else "stop"
        limit = rec.body.get("max_tokens") or rec.body.get("max_completion_tokens")
        if isinstance(limit, int) and limit < len(tokens):
            tokens, finish = tokens[:limit], "length"
        finish = script.get("finish_reason", finish)
        prompt = max(1, sum(len(str(m.get("content") or "").split())
                            for m in rec.body["messages"] if isinstance(m, dict)))
        done = len(tokens) + len(reasoning)
        usage = {"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done}
        base = {"id": f"chatcmpl-sim{id(rec):x}", "created": int(time.time()),
                "model": rec.body.get("model") or "sim-model"}
        rec.status = 200
        if rec.body.get("stream"):
            self._stream(rec, script, base, tokens, finish, usage)
            return
        # stream-only keys (stall, drop, error_after, delays between chunks) don't apply here
        message: dict[str, Any] = {"role": "assistant", "content": "".join(tokens) or None}
        if reasoning:
            message[script.get("reasoning_field", "reasoning_content")] = "".join(reasoning)
        if tools:
            message["tool_calls"] = [{"id": f"call_sim{i}", "type": "function", "function": t}
                                     for i, t in enumerate(tools)]
        choice = {"index": 0, "message": message, "finish_reason": finish, "logprobs": None}
        self._json(200, {**base, "object": "chat.completion", "choices": [choice], "usage": usage})
        rec.chunks_sent, rec.outcome = len(tokens), "completed"

    def _stream(self, rec: RequestRecord, script: dict[str, Any], base: dict[str, Any],
                tokens: list[str], finish: str, usage: dict[str, int]) -> None:
        include_usage = bool((rec.body.get("stream_options") or {}).get("include_usage"))
        base = {**base, "object": "chat.completion.chunk"}
        if include_usage:  # OpenAI then sends "usage": null on every chunk but the last
            base["usage"] = None
        self.eol = b"\r\n" if script.get("crlf") else b"\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.chunked = True
        keepalive, delay = bool(script.get("keepalive_comments")), float(script.get("delay", 0))

        def chunk(delta: dict[str, Any], reason: str | None = None) -> None:
            self._pause(delay, keepalive)
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}
            self._event({**base, "choices": [choice]})

        self._pause(script.get("first_delay", 0), keepalive)
        self._event({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                          "logprobs": None, "finish_reason": None}]})
        for text in script.get("reasoning", []):
            chunk({script.get("reasoning_field", "reasoning_content"): text})
        for i in range(len(tokens) + 1):
            if i == script.get("stall_after"):
                self._pause(math.inf, keepalive)  # only a client close or stop() ends this
            if i == script.get("drop_after"):
                _shutdown(self.connection)  # FIN mid-body: no last chunk, no [DONE]
                rec.outcome = "dropped"
                return
            if i == script.get("done_after"):
                # llama.cpp's server when it interrupts a running stream: [DONE] and the body's
                # end, no finish_reason ever sent.
                self._send(b"data: [DONE]" + self.eol * 2)
                self._send(b"")
                rec.outcome = "completed"
                return
            if "long_line" in script and i == script.get("long_line_after", 0):
                # One line of `long_line` bytes that never ends, then wait for the client.
                left = int(script["long_line"])
                self._send(b"data: ")
                while left > 0:
                    piece = min(left, 64 * 1024)
                    self._send(b"x" * piece)
                    left -= piece
                self._pause(math.inf, keepalive=False)  # only a client close or stop() ends this
            if i == script.get("error_after"):
                message = f"simulated in-stream failure: {SECRET}"
                if script.get("error_style") == "vllm":  # vLLM follows its error with [DONE]
                    self._event({"object": "error", "message": message,
                                 "type": "InternalServerError", "code": 500})
                    self._send(b"data: [DONE]" + self.eol * 2)
                else:  # OpenAI just ends the body
                    self._event({"error": {"message": message, "type": "server_error",
                                           "param": None, "code": None}})
                self._send(b"")
                rec.outcome = "completed"
                return
            if i < len(tokens):
                chunk({"content": tokens[i]})
                rec.chunks_sent += 1
        for n, call in enumerate(script.get("tool_calls", [])):
            chunk({"tool_calls": [{"index": n, "id": f"call_sim{n}", "type": "function",
                                   "function": {"name": call["name"], "arguments": ""}}]})
            args = call["arguments"]
            step = max(1, math.ceil(len(args) / 3))  # several fragments, as the real API sends
            for k in range(0, len(args), step):
                chunk({"tool_calls": [{"index": n, "function": {"arguments": args[k:k + step]}}]})
        chunk({}, finish)
        if include_usage and not script.get("no_usage"):
            self._event({**base, "choices": [], "usage": usage})
        self._send(b"data: [DONE]" + self.eol * 2)
        self._send(b"")
        rec.outcome = "completed"

    def _event(self, obj: Any) -> None:
        self._send(b"data: " + orjson.dumps(obj) + self.eol * 2)

    def _send(self, data: bytes) -> None:
        """Write now (wfile is unbuffered); b"" ends a chunked body."""
        if self.chunked:
            data = b"%x\r\n%s\r\n" % (len(data), data)
        try:
            self.wfile.write(data)
        except OSError as exc:  # EPIPE / ECONNRESET: the client went away
            raise _ClientGone from exc

    def _pause(self, seconds: float, keepalive: bool) -> None:
        """Wait, noticing a client close or stop() within POLL, pinging if asked."""
        stop, now = self.server.sim._stop, time.monotonic()
        deadline, next_ping = now + seconds, now + PING
        while now < deadline:
            if stop.is_set():
                raise _Stopped
            if _client_gone(self.connection, min(POLL, deadline - now)):
                raise _ClientGone
            if keepalive and time.monotonic() >= next_ping:
                self._send(b": keep-alive" + self.eol * 2)
                next_ping = time.monotonic() + PING
            now = time.monotonic()

    def _json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        data = orjson.dumps(obj)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self._send(data)


def _error_body(message: str, status: int) -> dict[str, Any]:
    default = ("server_error" if status >= 500 else "invalid_request_error", None)
    kind, code = ERROR_KINDS.get(status, default)
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _client_gone(sock: socket.socket, timeout: float) -> bool:
    """True once the peer has closed: while we only write, EOF on read is the only sign."""
    poller = select.poll()  # not select.select: that fails on descriptors past FD_SETSIZE
    poller.register(sock, select.POLLIN)
    if not poller.poll(max(timeout, 0) * 1000):
        return False
    try:
        if sock.recv(1, socket.MSG_PEEK) == b"":
            return True
    except OSError:
        return True
    time.sleep(timeout)  # unread bytes pending (a pipelined request): don't spin
    return False


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already gone
        sock.shutdown(socket.SHUT_RDWR)


class UpstreamSimulator:
    """Serve the fake upstream on 127.0.0.1 from a background thread; see the module docstring."""

    def __init__(self) -> None:
        self.requests: list[RequestRecord] = []
        self.port = 0
        self._cond = threading.Condition()
        self._attempts: dict[str, int] = {}
        self._conns: set[socket.socket] = set()
        self._stop = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> UpstreamSimulator:
        self._stop.clear()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.sim = self
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": POLL},
            name=f"upstream-sim-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving; stalled handlers see the stop event, idle keep-alive ones a shutdown."""
        if self._server is None or self._thread is None:
            return
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()
        with self._cond:
            conns = list(self._conns)
        for sock in conns:
            _shutdown(sock)
        self._thread.join(timeout)
        deadline = time.monotonic() + timeout
        for rec in list(self.requests):
            rec.wait_done(max(0.0, deadline - time.monotonic()))
        self._server = self._thread = None

    def __enter__(self) -> UpstreamSimulator:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def reset(self) -> None:
        """Forget recorded requests and fail_times counters."""
        with self._cond:
            self.requests.clear()
            self._attempts.clear()

    def wait_for_requests(self, n: int, timeout: float) -> bool:
        """True once at least n requests have arrived, False after timeout seconds."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self.requests) >= n, timeout)

    def _add(self, record: RequestRecord) -> None:
        with self._cond:
            self.requests.append(record)
            self._cond.notify_all()

    def _should_fail(self, script: dict[str, Any]) -> bool:
        if "fail_times" not in script:
            return True
        with self._cond:
            attempt = self._attempts[script["id"]] = self._attempts.get(script["id"], 0) + 1
        return attempt <= int(script["fail_times"])

    def _track(self, sock: socket.socket, *, add: bool) -> None:
        with self._cond:
            (self._conns.add if add else self._conns.discard)(sock)
