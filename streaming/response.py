"""One client's view of a stream: the SSE body, read from the store from a cursor.

Each HTTP response is a consumer. It writes the first bytes at once (gunicorn sends the
headers only with the first body bytes), then every event from its cursor on, a `: ping`
comment whenever nothing was written for HEARTBEAT_INTERVAL, and `[DONE]` after the end.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

from .formats import sse
from .green import gevent_active
from .stores import StreamStore, UnknownStreamError

log = logging.getLogger(__name__)

RETRY_MS = 1000
# One write holds at most this much of the log: a resume of a long answer goes out in pieces,
# never as one copy of the whole log.
MAX_WRITE = 64 * 1024


def iter_events(
    store: StreamStore,
    stream_id: str,
    cursor: int,
    heartbeat: float,
    gone: Callable[[], bool] = lambda: False,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[bytes]:
    """The body of one response: events with seq >= `cursor`, heartbeats, then [DONE]."""
    # First bytes before anything else: they carry the headers out and tell the browser how
    # soon to reconnect.
    yield sse.retry_line(RETRY_MS) + sse.PING
    last_write = clock()
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
            yield from _pieces(events, sse.DONE if ended else b"")
            last_write = clock()
        elif ended:
            yield sse.DONE
        if ended:
            return
        if not events and clock() >= last_write + heartbeat:
            yield sse.PING
            last_write = clock()


def _pieces(events: list[bytes], tail: bytes) -> Iterator[bytes]:
    """`events` then `tail`, joined into writes of at most about MAX_WRITE bytes."""
    start, size = 0, 0
    for i, event in enumerate(events):
        if size and size + len(event) > MAX_WRITE:
            yield b"".join(events[start:i])
            start, size = i, 0
        size += len(event)
    yield b"".join(events[start:]) + tail


class DisconnectWatcher:
    """Notices a client's disconnect while its stream is quiet, under gevent.

    Under WSGI a disconnect shows only when a write fails, and the first write after it may
    still succeed. Waiting for the client socket to turn readable and peeking finds the FIN at
    once, at no cost until it comes. Without gevent (a threaded server) this does nothing and
    heartbeats bound the delay.
    """

    def __init__(self, environ: dict[str, Any], on_gone: Callable[[], None]) -> None:
        self.gone = False
        self._on_gone = on_gone
        self._greenlet: Any = None
        sock = environ.get("gunicorn.socket")
        if sock is None or not gevent_active():
            return
        import gevent

        self._greenlet = gevent.spawn(self._watch, sock)

    def _watch(self, sock: Any) -> None:
        from gevent.socket import wait_read

        try:
            wait_read(sock.fileno())
            data = sock.recv(1, socket.MSG_PEEK)
        except OSError:
            data = b""
        if data:
            # A pipelined request, not a goodbye: leave its bytes to the server.
            return
        self.gone = True
        self._on_gone()

    def close(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
            self._greenlet = None

