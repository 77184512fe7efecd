"""The per-stream event log: append-only, read from a cursor, waiters woken on append.

`StreamStore` is the interface; `MemoryStore` keeps logs in this process (resume works within
one worker). Events are stored already encoded as SSE, so each is encoded once however many
clients follow the stream.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol


class StreamStore(Protocol):
    """Where events live between the producer and every client attached to a stream."""

    def create(self, stream_id: str, owner: str | None) -> None: ...

    def append(self, stream_id: str, events: list[bytes]) -> None: ...

    def finish(self, stream_id: str) -> None: ...

    def owner(self, stream_id: str) -> str | None:
        """The owner tag of a live or recent stream; raises KeyError if there is none."""
        ...

    def read(self, stream_id: str, cursor: int, timeout: float) -> tuple[list[bytes], bool]:
        """Events from seq `cursor` on, waiting up to `timeout` for one; and whether it ended.

        Raises KeyError for an unknown or expired stream.
        """
        ...

    def wake(self, stream_id: str) -> None:
        """Wake every reader of the stream (a client went away, say)."""
        ...

    def ping(self) -> bool: ...

    def close(self) -> None: ...


@dataclass(slots=True, eq=False)
class _Log:
    owner: str | None
    events: list[bytes] = field(default_factory=list)
    ended: bool = False
    expires_at: float | None = None  # set when it ends
    # Broadcast by replacement: readers wait on the current event; a writer swaps in a fresh
    # one and sets the old. Cheaper than a Condition (no lock per waiter), under gevent
    # (threading.Event is gevent's then) and threads alike.
    changed: threading.Event = field(default_factory=threading.Event)

    def notify(self) -> None:
        old, self.changed = self.changed, threading.Event()
        old.set()


class MemoryStore:
    """In-process logs; an ended stream stays readable for `ttl` seconds."""

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl
        self._clock = clock
        self._logs: dict[str, _Log] = {}
        self._lock = threading.Lock()
        # TTL is the same for all, so streams expire in the order they ended: a FIFO suffices.
        self._ended: deque[tuple[float, str]] = deque()

    def __len__(self) -> int:
        return len(self._logs)

    def create(self, stream_id: str, owner: str | None) -> None:
        with self._lock:
            self._expire_locked()
            if stream_id in self._logs:
                raise ValueError("stream id already in use")
            self._logs[stream_id] = _Log(owner)

    def append(self, stream_id: str, events: list[bytes]) -> None:
        log = self._logs[stream_id]
        # One producer per stream appends; readers only read: no lock needed beyond the GIL,
        # as long as the events are in place before the readers are told.
        if log.ended:
            raise ValueError("stream already ended")
        log.events.extend(events)
        log.notify()

    def finish(self, stream_id: str) -> None:
        log = self._logs[stream_id]
        log.expires_at = self._clock() + self._ttl
        log.ended = True
        log.notify()
        with self._lock:
            self._ended.append((log.expires_at, stream_id))
            self._expire_locked()

    def owner(self, stream_id: str) -> str | None:
        return self._get(stream_id).owner

    def read(self, stream_id: str, cursor: int, timeout: float) -> tuple[list[bytes], bool]:
        log = self._get(stream_id)
        if len(log.events) <= cursor and not log.ended and timeout > 0:
            changed = log.changed
            # Checked again after taking the event: an append in between has set it already.
            if len(log.events) <= cursor and not log.ended:
                changed.wait(timeout)
        ended = log.ended  # read before the events: if it ended, they are all there
        return log.events[cursor:], ended

    def wake(self, stream_id: str) -> None:
        log = self._logs.get(stream_id)
        if log is not None:
            log.notify()

    def ping(self) -> bool:
        return True

    def close(self) -> None:
        with self._lock:
            self._logs.clear()
            self._ended.clear()

    def _get(self, stream_id: str) -> _Log:
        # Every read of every client comes here: no global lock and no sweep (create and
        # finish sweep); the log's own expiry says whether it still counts.
        log = self._logs[stream_id]
        if log.expires_at is not None and log.expires_at <= self._clock():
            raise KeyError(stream_id)
        return log

    def _expire_locked(self) -> None:
        now = self._clock()
        while self._ended and self._ended[0][0] <= now:
            _, stream_id = self._ended.popleft()
            self._logs.pop(stream_id, None)
