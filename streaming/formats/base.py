"""What a wire format gives the relay: a per-stream encoder of typed events into SSE bytes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..events import Event
    from ..stores.base import StreamMeta


class Encoder(Protocol):
    """One stream's events in one format. `seq` is the id of the next SSE event it writes; one
    typed event may become several SSE events (or none), each with its own id."""

    seq: int

    def encode(self, events: Sequence[Event]) -> list[bytes]: ...


class WireFormat(Protocol):
    name: str

    def encoder(self, meta: StreamMeta, seq: int = 0) -> Encoder:
        """An encoder for `meta`'s stream whose first SSE event gets id `seq`."""
        ...
