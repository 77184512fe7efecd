"""One client's view of a stream: the SSE body, read from the store from a cursor.

Each HTTP response is a consumer. It writes the first bytes at once (gunicorn sends the
headers only with the first body bytes), then every event from its cursor on, a `: ping`
comment whenever nothing was written for HEARTBEAT_INTERVAL, and `[DONE]` after the end.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any

from .formats import sse
from .green import gevent_active
from .stores import StreamStore, UnknownStreamError

log = logging.getLogger(__name__)

RETRY_MS = 1000
# One write holds at most this much of the log: a resume of a long answer goes out in pieces,
# never as one copy of the whole log.
MAX_WRITE = 64 * 1024


@dataclass(slots=True)
class Delivery:
    """What one response sent, told once at its end (metrics are updated then, never per
    write, so the hot path stays cheap)."""

    bytes: int = 0
    heartbeats: int = 0
    complete: bool = False  # [DONE] went out
    writing_since: float | None = None  # a write was under way when the response ended


def iter_events(
    store: StreamStore,
    stream_id: str,
    cursor: int,
    heartbeat: float,
    gone: Callable[[], bool] = lambda: False,
    clock: Callable[[], float] = time.monotonic,
    on_start: Callable[[], None] | None = None,
    on_end: Callable[[Delivery], None] | None = None,
) -> Generator[bytes, None, None]:
    """The body of one response: events with seq >= `cursor`, heartbeats, then [DONE].
    `on_start` and `on_end` are called once each, if the body is read at all."""
    if on_start is not None:
        on_start()
    sent = 0
    pings = 0
    complete = False
    write_at: float | None = None
    try:
        # First bytes before anything else: they carry the headers out and tell the browser
        # how soon to reconnect.
        first = sse.retry_line(RETRY_MS) + sse.PING
        write_at = clock()
        yield first
        sent += len(first)
        last_write = clock()
        write_at = None
        while not gone():
            wait = last_write + heartbeat - clock()
            try:
                events, ended = store.read(stream_id, cursor, max(wait, 0.0))
            except UnknownStreamError:
                # Expired while we followed it (a reader slower than STREAM_TTL): nothing more.
                return
            if events:
                cursor += len(events)
                # Everything is there once it ended: the rest and [DONE] (the log may expire
                # before another read).
                for piece in _pieces(events, sse.DONE if ended else b""):
                    write_at = clock()
                    yield piece
                    sent += len(piece)
                last_write = clock()
                write_at = None
            elif ended:
                write_at = clock()
                yield sse.DONE
                sent += len(sse.DONE)
                write_at = None
            if ended:
                complete = True
                return
            if not events and clock() >= last_write + heartbeat:
                write_at = clock()
                yield sse.PING
                sent += len(sse.PING)
                pings += 1
                last_write = clock()
                write_at = None
    finally:
        if on_end is not None:
            on_end(Delivery(sent, pings, complete, write_at))


def _pieces(events: list[bytes], tail: bytes) -> Iterator[bytes]:
    """`events` then `tail`, joined into writes of at most about MAX_WRITE bytes."""
    start, size = 0, 0
    for i, event in enumerate(events):
        if size and size + len(event) > MAX_WRITE:
            yield b"".join(events[start:i])
            start, size = i, 0
        size += len(event)
    yield b"".join(events[start:]) + tail


class ClientSocket:
    """The client's connection while it follows a stream: notices a departure at once, bounds
    a stuck write, and drops a half-open connection.

    Under WSGI a disconnect shows only when a write fails, and the first write after it may
    still succeed. Under gevent, a read watcher on the client socket (a libev watcher: no
    greenlet, no stack, nothing runs until the socket turns readable) finds the FIN at once.
    A client that stops reading fills its socket: the socket's timeout makes each write give
    up after SEND_TIMEOUT (writes are bounded in size, so that is the time without progress).
    A peer that vanished without a FIN would take each small write for many minutes:
    TCP_USER_TIMEOUT and keepalive probes end the connection within about SEND_TIMEOUT.
    Without gevent (a threaded server) only the timeouts apply, and heartbeats bound the
    delay before a departure is noticed.
    """

    def __init__(self, environ: dict[str, Any], on_gone: Callable[[], None],
                 send_timeout: float) -> None:
        self.gone = False
        self._on_gone = on_gone
        self._watcher: Any = None
        self._sock: Any = environ.get("gunicorn.socket")
        if self._sock is None:
            return
        _tune(self._sock, send_timeout)
        if gevent_active():
            import gevent

            self._watcher = gevent.get_hub().loop.io(self._sock.fileno(), 1)  # 1: readable
            self._watcher.start(self._readable)

    def _readable(self) -> None:
        # In the hub: stop watching, and look at what came in a greenlet of its own (a read
        # must not block the hub).
        self._stop()
        import gevent

        gevent.spawn(self._check)

    def _check(self) -> None:
        try:
            data = self._sock.recv(1, socket.MSG_PEEK)
        except OSError:
            data = b""
        if data:
            # A pipelined request, not a goodbye: leave its bytes to the server.
            return
        self.gone = True
        self._on_gone()

    def _stop(self) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.stop()
            watcher.close()

    def close(self) -> None:
        self._stop()
        if self._sock is not None:
            # The connection may serve another request: the server's own timeouts apply again.
            with contextlib.suppress(OSError):
                self._sock.settimeout(None)


def _tune(sock: Any, send_timeout: float) -> None:
    with contextlib.suppress(OSError, AttributeError):
        sock.settimeout(send_timeout)
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        idle = max(1, int(send_timeout / 2))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, idle // 3))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(send_timeout * 1000))
