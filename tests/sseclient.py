"""A small, strict SSE client for tests: raw HTTP over a socket, WHATWG parsing, timestamps.

Independent of the service's code on purpose: it checks the wire, not our encoder's idea of it.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit


@dataclass
class Event:
    id: str | None
    data: str
    at: float = field(default_factory=time.monotonic)

    @property
    def json(self) -> dict[str, Any]:
        return json.loads(self.data)


@dataclass
class Comment:
    text: str
    at: float = field(default_factory=time.monotonic)


class StreamResponse:
    """An open SSE response; iterate for Event and Comment items."""

    def __init__(self, conn: http.client.HTTPConnection, response: http.client.HTTPResponse):
        self.conn = conn
        self.response = response
        self.status = response.status
        self.headers = response.headers
        self.raw = bytearray()

    def body_json(self) -> dict[str, Any]:
        return json.loads(self.response.read())

    def __iter__(self) -> Iterator[Event | Comment]:
        data: list[str] = []
        last_id: str | None = None
        saw_id = False
        buf = b""
        while True:
            chunk = self.response.read1(65536)
            if not chunk:
                return
            self.raw += chunk
            buf += chunk
            # WHATWG: CRLF, LF or CR end a line (a CR at the end may pair with a later LF).
            while True:
                idx = _line_end(buf)
                if idx is None:
                    break
                end, skip = idx
                line = buf[:end].decode("utf-8")
                buf = buf[end + skip:]
                if line == "":
                    if data:
                        yield Event(last_id if saw_id else None, "\n".join(data))
                    data, saw_id = [], False
                    continue
                if line.startswith(":"):
                    yield Comment(line[1:].lstrip(" "))
                    continue
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "data":
                    data.append(value)
                elif name == "id" and "\0" not in value:
                    last_id, saw_id = value, True

    def events(self) -> Iterator[Event]:
        for item in self:
            if isinstance(item, Event):
                yield item

    def close(self) -> None:
        # Abrupt, like a browser tab going away: no reading to the end.
        sock = self.conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.conn.close()


def _line_end(buf: bytes) -> tuple[int, int] | None:
    n = buf.find(b"\n")
    r = buf.find(b"\r")
    if r == -1 and n == -1:
        return None
    if r != -1 and (n == -1 or r < n):
        if r + 1 == len(buf):
            return None  # wait: a LF may follow
        return (r, 2) if buf[r + 1:r + 2] == b"\n" else (r, 1)
    return (n, 1)


def open_stream(url: str, method: str = "GET", body: Any = None,
                headers: dict[str, str] | None = None, timeout: float = 30.0) -> StreamResponse:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    hdrs = dict(headers or {})
    payload = None
    if body is not None:
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    conn.request(method, path, body=payload, headers=hdrs)
    return StreamResponse(conn, conn.getresponse())


def start(base: str, body: Any, headers: dict[str, str] | None = None,
          timeout: float = 30.0) -> StreamResponse:
    return open_stream(base + "/api/chat/stream", "POST", body, headers, timeout)


def attach(base: str, stream_id: str, last_event_id: int | str | None = None,
           headers: dict[str, str] | None = None, timeout: float = 30.0) -> StreamResponse:
    hdrs = dict(headers or {})
    if last_event_id is not None:
        hdrs["Last-Event-ID"] = str(last_event_id)
    return open_stream(f"{base}/api/chat/stream/{stream_id}", "GET", None, hdrs, timeout)


def collect(stream: StreamResponse) -> list[Event]:
    """Every event until [DONE] (which is included, with id None), then close."""
    out: list[Event] = []
    try:
        for event in stream.events():
            out.append(event)
            if event.data == "[DONE]":
                break
    finally:
        stream.close()
    return out


def follow_together(origin: StreamResponse, urls: list[str]) -> list[list[Event]]:
    """Read `origin` to its end while a client per base URL attaches to the same stream, each
    in a thread; every client's events, the origin's first (a client that never ended is
    missing, which the caller's count shows)."""
    stream_id = origin.headers["X-Stream-Id"]
    results: dict[int, list[Event]] = {}

    def follow(i: int, url: str) -> None:
        results[i] = collect(attach(url, stream_id))

    threads = [threading.Thread(target=follow, args=(i, url), daemon=True)
               for i, url in enumerate(urls, 1)]
    for t in threads:
        t.start()
    results[0] = collect(origin)
    for t in threads:
        t.join(30)
    return [results[i] for i in sorted(results)]


def until_first_token(stream: StreamResponse) -> list[Event]:
    """Read until the first token event (included); the stream stays open."""
    out: list[Event] = []
    for event in stream.events():
        out.append(event)
        if event.json["type"] == "token":
            break
    return out


def text_of(events: list[Event]) -> str:
    return "".join(e.json["token"] for e in events
                   if e.data != "[DONE]" and e.json["type"] == "token")


def request(base: str, method: str, path: str, body: Any = None,
            headers: dict[str, Any] | None = None) -> tuple[int, dict[str, str], bytes]:
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    hdrs = dict(headers or {})
    payload = None
    if body is not None:
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    hdrs = {k: v for k, v in hdrs.items() if v is not None}  # None: send no such header
    try:
        conn.request(method, path, body=payload, headers=hdrs)
        with conn.getresponse() as resp:
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def check_well_formed(events: list[Event], first_seq: int = 0) -> None:
    """Every event has the next seq; one terminal event; then [DONE] without an id."""
    assert events[-1].data == "[DONE]" and events[-1].id is None
    seqs = [int(e.id) for e in events[:-1]]  # type: ignore[arg-type]
    assert seqs == list(range(first_seq, first_seq + len(seqs)))
    kinds = [e.json["type"] for e in events[:-1]]
    assert kinds[-1] in ("done", "error")
    assert all(k not in ("done", "error") for k in kinds[:-1])
    indexes = [e.json["index"] for e in events[:-1] if e.json["type"] == "token"]
    if indexes:  # token indexes count on from wherever the reader joined, with no gap
        assert indexes == list(range(indexes[0], indexes[0] + len(indexes)))
