"""A stream as one worker of the Redis store holds it in memory: its events from seq 0, read by
every client of the stream on that worker without a Redis round trip each."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from .. import formats
from ..events import Failed
from .base import StreamMeta
from .memory import Log


@dataclass(slots=True, eq=False)
class Mirror:
    """One stream's events as this worker holds them, from seq 0."""

    meta: StreamMeta
    local: bool  # produced by this worker: its appends fill it, nothing else
    log: Log = field(default_factory=Log)
    readers: int = 0  # read() calls under way
    idle_since: float = field(default_factory=time.monotonic)
    checked: float = 0.0  # monotonic time it was last read from Redis

    def add(self, first: int, events: list[bytes], ended_ttl: float | None) -> bool:
        """Add `events` (seq `first` on); True if the mirror holds them all now."""
        skip = len(self.log.events) - first
        if skip < 0 or self.log.ended:
            return False
        if skip >= len(events) and ended_ttl is None:
            return True  # nothing new: its readers sleep on
        self.log.events.extend(events[skip:])
        if ended_ttl is not None:
            self.log.expires_at = time.monotonic() + ended_ttl
            self.log.ended = True
        self.log.notify()
        return True

    def expired(self) -> bool:
        expires_at = self.log.expires_at
        return expires_at is not None and expires_at <= time.monotonic()

    @property
    def followed(self) -> bool:
        """Kept current by the follow loop."""
        return not self.local and not self.log.ended


def events_of(entries: list[Any], first: int) -> list[bytes]:
    """The events of XRANGE entries that follow on from seq `first` without a gap."""
    events: list[bytes] = []
    for entry_id, fields in entries:
        if int(entry_id.split(b"-", 1)[0]) != first + len(events):
            break
        events.append(fields[b"e"])
    return events


def terminal(meta: StreamMeta, seq: int, event: Failed) -> list[bytes]:
    """`event` as the stream's SSE event number `seq`, in the stream's own format."""
    return formats.get(meta.format).encoder(meta, seq).encode([event])
