"""The in-process store: streams, counters and indexes of this worker alone.

Resume, follow and cancel work within one worker process; with several workers use Redis.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from .base import Counter, IndexKey, Producer, StreamClosedError, StreamMeta, UnknownStreamError


@dataclass(slots=True, eq=False)
class Log:
    """One stream's events as this process holds them; readers wait on `changed`."""

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

    def read(self, cursor: int, timeout: float) -> tuple[list[bytes], bool]:
        if len(self.events) <= cursor and not self.ended and timeout > 0:
            changed = self.changed
            # Checked again after taking the event: an append in between has set it already.
            if len(self.events) <= cursor and not self.ended:
                changed.wait(timeout)
        ended = self.ended  # read before the events: if it ended, they are all there
        return self.events[cursor:], ended


@dataclass(slots=True, eq=False)
class _Stream:
    meta: StreamMeta
    log: Log = field(default_factory=Log)


class MemoryStore:
    """Streams in this process; an ended stream stays readable for `ttl` seconds, indexes for
    `index_ttl`."""

    may_block = False  # no call waits: the relay may run its deadline rounds in the event loop

    def __init__(self, ttl: float, index_ttl: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.worker_id = secrets.token_hex(8)
        self._ttl = ttl
        self._index_ttl = ttl if index_ttl is None else index_ttl
        self._clock = clock
        self._streams: dict[str, _Stream] = {}
        self._lock = threading.Lock()
        # TTL is the same for all, so streams expire in the order they ended: a FIFO suffices.
        self._ended: deque[tuple[float, str]] = deque()
        self._producers: dict[str, Producer] = {}
        self._counts: dict[Counter, int] = {}
        self._index: dict[IndexKey, tuple[str, float]] = {}

    def __len__(self) -> int:
        return len(self._streams)

    # -- the log ------------------------------------------------------------------------

    def create(self, meta: StreamMeta, events: list[bytes]) -> None:
        with self._lock:
            self._expire_locked()
            if meta.stream_id in self._streams:
                raise ValueError("stream id already in use")
            stream = _Stream(meta)
            stream.log.events.extend(events)
            self._streams[meta.stream_id] = stream

    def append(self, stream_id: str, seq: int, events: list[bytes], *, end: bool = False) -> None:
        log = self._get(stream_id).log
        # One producer per stream appends; readers only read: the GIL suffices, as long as the
        # events are in place before the readers are told.
        if log.ended or len(log.events) != seq:
            raise StreamClosedError(f"stream {stream_id[:8]} holds {len(log.events)} events, "
                                    f"not {seq}, or has ended")
        log.events.extend(events)
        if end:
            self._end(stream_id, log)
        log.notify()

    def read(self, stream_id: str, cursor: int, timeout: float) -> tuple[list[bytes], bool]:
        return self._get(stream_id).log.read(cursor, timeout)

    def status(self, stream_id: str) -> tuple[int, bool]:
        log = self._get(stream_id).log
        return len(log.events), log.ended

    def meta(self, stream_id: str) -> StreamMeta:
        return self._get(stream_id).meta

    def wake(self, stream_id: str) -> None:
        stream = self._streams.get(stream_id)
        if stream is not None:
            stream.log.notify()

    def end_locally(self, stream_id: str, events: list[bytes]) -> None:
        stream = self._streams.get(stream_id)
        if stream is not None and not stream.log.ended:
            stream.log.events.extend(events)
            self._end(stream_id, stream.log)
            stream.log.notify()

    # -- control ------------------------------------------------------------------------

    def register(self, stream_id: str, producer: Producer) -> None:
        self._producers[stream_id] = producer

    def unregister(self, stream_id: str) -> None:
        self._producers.pop(stream_id, None)

    def cancel(self, stream_id: str) -> None:
        producer = self._producers.get(stream_id)
        if producer is not None:
            producer.cancel()

    # -- presence and limits ------------------------------------------------------------

    def acquire(self, counter: Counter, limit: int) -> bool:
        with self._lock:
            n = self._counts.get(counter, 0)
            if n >= limit:
                return False
            self._counts[counter] = n + 1
            return True

    def release(self, counter: Counter) -> None:
        with self._lock:
            n = self._counts.get(counter, 0) - 1
            if n > 0:
                self._counts[counter] = n
            else:
                self._counts.pop(counter, None)
        if n <= 0 and counter[0] == "followers":
            producer = self._producers.get(counter[1])
            if producer is not None:
                producer.presence_changed()

    def count(self, counter: Counter) -> int:
        return self._counts.get(counter, 0)

    # -- indexes ------------------------------------------------------------------------

    def index_add(self, key: IndexKey, value: str) -> str | None:
        with self._lock:
            current = self._index_get_locked(key)
            if current is None:
                self._index[key] = (value, self._clock() + self._index_ttl)
            return current

    def index_swap(self, key: IndexKey, value: str) -> str | None:
        with self._lock:
            current = self._index_get_locked(key)
            self._index[key] = (value, self._clock() + self._index_ttl)
            return current

    def index_get(self, key: IndexKey) -> str | None:
        with self._lock:
            return self._index_get_locked(key)

    def index_remove(self, key: IndexKey, value: str) -> None:
        with self._lock:
            if self._index_get_locked(key) == value:
                del self._index[key]

    # -- health -------------------------------------------------------------------------

    def ping(self) -> bool:
        return True

    def close(self) -> None:
        with self._lock:
            self._streams.clear()
            self._ended.clear()
            self._index.clear()
            self._counts.clear()
        self._producers.clear()

    # -- inside -------------------------------------------------------------------------

    def _get(self, stream_id: str) -> _Stream:
        # Every read of every client comes here: no global lock and no sweep (create and
        # the end of a stream sweep); the log's own expiry says whether it still counts.
        stream = self._streams.get(stream_id)
        if stream is None:
            raise UnknownStreamError(stream_id)
        expires_at = stream.log.expires_at
        if expires_at is not None and expires_at <= self._clock():
            raise UnknownStreamError(stream_id)
        return stream

    def _end(self, stream_id: str, log: Log) -> None:
        log.expires_at = self._clock() + self._ttl
        log.ended = True
        with self._lock:
            self._ended.append((log.expires_at, stream_id))
            self._expire_locked()

    def _expire_locked(self) -> None:
        now = self._clock()
        while self._ended and self._ended[0][0] <= now:
            _, stream_id = self._ended.popleft()
            self._streams.pop(stream_id, None)
        if len(self._index) > 64 and len(self._index) > 2 * len(self._streams):
            # Indexes point at streams: once they outnumber the streams, sweep the stale ones.
            self._index = {k: v for k, v in self._index.items() if v[1] > now}

    def _index_get_locked(self, key: IndexKey) -> str | None:
        entry = self._index.get(key)
        if entry is None:
            return None
        if entry[1] <= self._clock():
            del self._index[key]
            return None
        return entry[0]
