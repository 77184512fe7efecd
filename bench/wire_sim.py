"""A lean OpenAI-wire simulator for the benchmark: many concurrent chunked SSE streams, cheaply.

tests/upstream_sim.py (a thread per connection, polling the client every 50 ms) is built to
script failures, not to stream 10,000 answers at once. This one is one asyncio loop (uvloop when
installed) with a timer per stream, so it stays far from being the bottleneck. It understands
the same `SIM {...}` script in the last user message, with the keys the benchmark uses:

    tokens       number of content deltas (default 20)
    delay        seconds between deltas (default 0.05); deltas follow a fixed schedule from the
                 request's arrival, so a slow reader never slows the pace
    first_delay  seconds before the first content delta (default 0)
    at           instead of first_delay: when the first delta is due, a time.monotonic() value
                 (the same clock in every process), so a client knows when each was written
    id           text prefix of every delta: delta i is f"{id}-{i} " (one space, at the end, so a
                 client can count deltas in joined text); default "t"
    gate         a name: after its `tokens` deltas the stream goes on at the same pace until
                 `POST /bench/release/<name>` (or `gate_until`, a time.monotonic() value: the
                 same clock in every process; default 300 s from now), then sends
                 `end_text(id)` as its last delta; so a benchmark can hold thousands of streams
                 open, all live, until every one has started, however long starting takes

It answers `POST /v1/chat/completions` with `"stream": true` (chunked SSE: a role chunk, the
content chunks, a finish chunk, a usage chunk when asked, `data: [DONE]`), `GET /v1/models`, and
`POST /bench/release/<gate>`; it keeps connections alive between requests like the real API.

    python bench/wire_sim.py [--port 0]    # prints the port, then serves until SIGTERM/SIGINT
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import signal
import sys
import time
from typing import Any, cast

import orjson

MAX_HEAD = 65536
MAX_BODY = 4 * 1024 * 1024


def delta_text(prefix: str, i: int) -> str:
    """The text of delta `i`: what the load generator expects back, joined in order."""
    return f"{prefix}-{i} "


def end_text(prefix: str) -> str:
    """The last delta of a gated stream (no '.': that would flush a buffer early)."""
    return f"{prefix}-end "


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class Gates:
    """Named gates: a gated stream goes on past its `tokens` until its gate is opened."""

    def __init__(self) -> None:
        self.opened: set[str] = set()

    def is_open(self, name: str) -> bool:
        return name in self.opened

    def release(self, name: str) -> None:
        self.opened.add(name)


class _Stream:
    """One streamed answer on one connection, written on a fixed schedule."""

    def __init__(self, conn: SimProtocol, body: dict[str, Any], script: dict[str, Any]) -> None:
        self.conn = conn
        self.n = int(script.get("tokens", 20))
        self.delay = float(script.get("delay", 0.05))
        self.prefix = str(script.get("id", "t"))
        self.usage = bool((body.get("stream_options") or {}).get("include_usage"))
        model = orjson.dumps(body.get("model") or "sim-model")
        head = (b'{"id":"chatcmpl-sim%x","object":"chat.completion.chunk","created":%d,'
                b'"model":%s,"system_fingerprint":"fp_sim","choices":[{"index":0,"delta":'
                % (id(self), int(time.time()), model))
        tail = b',"logprobs":null,"finish_reason":%s}]' + (b',"usage":null}' if self.usage
                                                            else b"}")
        self.head, self.tail_open, self.tail = head, tail % b"null", tail
        self.i = 0
        self.loop = asyncio.get_running_loop()
        if "at" in script:  # the loop's clock may be offset from time.monotonic() (uvloop's is)
            self.start = float(script["at"]) + self.loop.time() - time.monotonic()
        else:
            self.start = self.loop.time() + float(script.get("first_delay", 0))
        self.timer: asyncio.TimerHandle | None = None
        self.gate: str | None = script.get("gate")
        self.gate_until = float(script.get("gate_until", time.monotonic() + 300))

    def begin(self) -> None:
        role = self._event(b'{"role":"assistant","content":""}', self.tail_open)
        self.conn.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
                        b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
                        + _chunk(role))
        self._schedule()

    def _event(self, delta: bytes, tail: bytes) -> bytes:
        return b"data: " + self.head + delta + tail + b"\n\n"

    def _schedule(self) -> None:
        # What is already due goes out at once, in a loop: a request a server forwards late can
        # be hundreds of deltas behind (recursing here overflowed the stack and cut the stream).
        while True:
            due = self.start + self.i * self.delay
            if due > self.loop.time():
                self.timer = self.loop.call_at(due, self._tick)
                return
            if not self._step():
                return

    def _tick(self) -> None:
        self.timer = None
        if self._step():
            self._schedule()

    def _step(self) -> bool:
        """Send the next delta (or the end); False once the stream has ended."""
        if self.i < self.n or self._held():
            self._send(delta_text(self.prefix, self.i))
            self.i += 1
            if self.i < self.n or self._held():
                return True
        if self.gate is not None:
            self._send(end_text(self.prefix))
        self._finish()
        return False

    def _held(self) -> bool:
        return (self.gate is not None and not self.conn.gates.is_open(self.gate)
                and time.monotonic() < self.gate_until)

    def _send(self, text: str) -> None:
        content = b'{"content":' + orjson.dumps(text) + b"}"
        self.conn.write(_chunk(self._event(content, self.tail_open)))

    def _finish(self) -> None:
        out = _chunk(self._event(b"{}", self.tail % b'"stop"'))
        if self.usage:
            usage = {"prompt_tokens": 1, "completion_tokens": self.i, "total_tokens": self.i + 1}
            obj = {"id": "chatcmpl-sim", "object": "chat.completion.chunk", "created": 0,
                   "model": "sim-model", "choices": [], "usage": usage}
            out += _chunk(b"data: " + orjson.dumps(obj) + b"\n\n")
        self.conn.write(out + _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
        self.conn.stream_done()

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class SimProtocol(asyncio.Protocol):
    """One client connection: HTTP/1.1 requests one after another (keep-alive)."""

    def __init__(self, stats: dict[str, int], gates: Gates) -> None:
        self.stats, self.gates = stats, gates
        self.buf = b""
        self.stream: _Stream | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.stats["connections"] += 1

    def connection_lost(self, exc: Exception | None) -> None:
        if self.stream is not None:
            self.stream.cancel()
            self.stats["cut"] += 1
            self.stream = None
        self.transport = None

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while self.stream is None and self.transport is not None and self._one_request():
            pass

    def stream_done(self) -> None:
        self.stream = None
        self.stats["completed"] += 1
        if self.buf:  # a request pipelined behind the stream
            self.data_received(b"")

    def _one_request(self) -> bool:
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > MAX_HEAD:
                self._reply(431, {"error": {"message": "head too large"}}, close=True)
            return False
        lines = self.buf[:end].decode("latin-1").split("\r\n")
        method, target = [*lines[0].split(" "), "", ""][:2]
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0") or 0)
        if length > MAX_BODY:
            self._reply(413, {"error": {"message": "body too large"}}, close=True)
            return False
        if len(self.buf) < end + 4 + length:
            return False
        raw, self.buf = self.buf[end + 4:end + 4 + length], self.buf[end + 4 + length:]
        path = target.split("?")[0].rstrip("/")
        if method == "GET" and path == "/v1/models":
            model = {"id": "sim-model", "object": "model", "created": 0, "owned_by": "sim"}
            self._reply(200, {"object": "list", "data": [model]})
        elif method == "POST" and path == "/v1/chat/completions":
            self._chat(raw)
        elif method == "POST" and path.startswith("/bench/release/"):
            self.gates.release(path.rsplit("/", 1)[1])
            self._reply(200, {"released": True})
        else:
            self._reply(404, {"error": {"message": f"no route {method} {path}"}})
        return True

    def _chat(self, raw: bytes) -> None:
        try:
            body = orjson.loads(raw)
            content = body["messages"][-1]["content"]
            script = orjson.loads(content[4:]) if content.startswith("SIM ") else {}
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
            self._reply(400, {"error": {"message": f"simulator: bad request: {exc}"}})
            return
        if not body.get("stream"):
            self._reply(400, {"error": {"message": "simulator: only stream=true"}})
            return
        self.stats["requests"] += 1
        self.stream = _Stream(self, body, script)
        self.stream.begin()

    def _reply(self, status: int, obj: Any, close: bool = False) -> None:
        data = orjson.dumps(obj)
        self.write(b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                   b"\r\n%s" % (status, len(data), data))
        if close and self.transport is not None:
            self.transport.close()


def raise_open_files_limit(want: int = 65536) -> None:
    """Thousands of streams need thousands of descriptors; root may raise the hard limit too."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), max(hard, want)))
        return
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    stats = {"connections": 0, "requests": 0, "completed": 0, "cut": 0}
    gates = Gates()
    server = await loop.create_server(lambda: SimProtocol(stats, gates), "127.0.0.1", port,
                                      backlog=16384, reuse_address=True)
    print(server.sockets[0].getsockname()[1], flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    print(orjson.dumps(stats).decode(), file=sys.stderr, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    raise_open_files_limit()
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args.port))
    else:
        uvloop.run(serve(args.port))


if __name__ == "__main__":
    main()
