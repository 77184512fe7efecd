"""The store interface, designed for every capability that leans on it: resume from any
worker, cross-worker cancel, presence and global limits, idempotent starts, a chat's running
stream, and a lost producer detected and ended exactly once.

Each stream is an append-only log of SSE events, already encoded in the stream's wire format
(encoded once, read by every client and every resume), plus its metadata.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from ..errors import StreamingError


class UnknownStreamError(KeyError):
    """No such stream: never created, or expired."""


class StreamClosedError(StreamingError):
    """An append was refused: the log has ended, or does not hold exactly the events the
    producer expected (someone else, a worker that found the producer lost, wrote its end)."""


@dataclass(frozen=True, slots=True)
class StreamMeta:
    """What every worker needs to know about a stream, fixed at its start."""

    stream_id: str
    owner: str | None  # a digest of the API key that started it; None when auth is off
    model: str
    format: str  # the wire format its events are encoded in (a module of `formats`)
    resume_token: str
    worker: str  # the id of the worker whose producer runs it
    created: float  # Unix time
    options: Mapping[str, Any] = field(default_factory=dict)  # the format's own (JSON values)


# Counters that limits and presence are kept in; with Redis they count across all workers,
# and the counts of a worker that died stop counting once its lease lapses.
#   ("followers", stream_id): clients attached to a stream (presence, MAX_FOLLOWERS)
#   ("connections", owner): open stream responses of one key (MAX_CONNECTIONS_PER_KEY)
#   ("streams", owner): running streams of one key (MAX_STREAMS_PER_KEY)
Counter = tuple[Literal["followers", "connections", "streams"], str]

# Small indexes with the store's lifetime for streams: (kind, owner or None, key), e.g.
# ("idempotency", owner, key) -> "stream_id fingerprint", ("chat", owner, chat_id) -> stream_id.
IndexKey = tuple[str, str | None, str]


class Producer(Protocol):
    """What the store calls on the worker that runs a stream (from any thread or greenlet)."""

    def cancel(self) -> None:
        """Someone, on some worker, asked to cancel the stream."""
        ...

    def presence_changed(self) -> None:
        """The stream's last follower, on some worker, went away: check `count` and start the
        resume grace if it is still 0."""
        ...


class StreamStore(Protocol):
    """Raises `errors.StoreUnavailableError` when its backend cannot be reached (after its own
    retries); callers map that once to the contract's 503 / `store_unavailable`."""

    worker_id: str
    # True if its calls may wait on I/O (a network store): then they only run in tasks, never
    # in the event loop's own callbacks.
    may_block: bool

    # -- the log ------------------------------------------------------------------------

    def create(self, meta: StreamMeta, events: list[bytes]) -> None:
        """Create a stream with its first events. ValueError if the id is taken."""
        ...

    def append(self, stream_id: str, seq: int, events: list[bytes], *, end: bool = False) -> None:
        """Compare-and-append: add `events` if the log holds exactly `seq` events and has not
        ended, else raise StreamClosedError. `end=True` ends the log (its last event is the
        terminal one) and starts its STREAM_TTL."""
        ...

    def read(self, stream_id: str, cursor: int, timeout: float) -> tuple[list[bytes], bool]:
        """Events from seq `cursor` on, waiting up to `timeout` for one; and whether the log
        has ended (then every event is in the answer). UnknownStreamError if there is none."""
        ...

    def status(self, stream_id: str) -> tuple[int, bool]:
        """How many events the log holds, and whether it has ended."""
        ...

    def meta(self, stream_id: str) -> StreamMeta:
        """The stream's metadata; UnknownStreamError if there is none."""
        ...

    def wake(self, stream_id: str) -> None:
        """Wake this worker's readers of the stream (one of their clients went away)."""
        ...

    def end_locally(self, stream_id: str, events: list[bytes]) -> None:
        """End the stream for this worker's readers only, with `events` (the backend is gone:
        its clients here still learn why)."""
        ...

    # -- control ------------------------------------------------------------------------

    def register(self, stream_id: str, producer: Producer) -> None:
        """This worker runs the stream: route its cancels and presence changes here."""
        ...

    def unregister(self, stream_id: str) -> None: ...

    def cancel(self, stream_id: str) -> None:
        """Ask the stream's producer, wherever it runs, to cancel (within a second)."""
        ...

    # -- presence and limits ------------------------------------------------------------

    def acquire(self, counter: Counter, limit: int) -> bool:
        """Count one more if fewer than `limit` are counted (atomically); False if full."""
        ...

    def release(self, counter: Counter) -> None:
        """Count one less; a stream's last follower leaving tells its producer."""
        ...

    def count(self, counter: Counter) -> int: ...

    # -- indexes ------------------------------------------------------------------------

    def index_add(self, key: IndexKey, value: str) -> str | None:
        """Set `key` to `value` unless it is set; return the value it already had, or None."""
        ...

    def index_swap(self, key: IndexKey, value: str) -> str | None:
        """Set `key` to `value`; return the value it had, or None (atomically)."""
        ...

    def index_get(self, key: IndexKey) -> str | None: ...

    def index_remove(self, key: IndexKey, value: str) -> None:
        """Remove `key` if it still holds `value`."""
        ...

    # -- health -------------------------------------------------------------------------

    def ping(self) -> bool: ...

    def close(self) -> None: ...
