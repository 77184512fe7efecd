"""The service's own format (PROTOCOL.md, "The stream"): one SSE event per typed event."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..events import Done, Event, Failed, Reasoning, Start, Token, ToolCall
from .sse import json_event

if TYPE_CHECKING:
    from ..stores.base import StreamMeta


def payload(event: Event) -> dict[str, Any]:
    """The JSON object of one event."""
    if isinstance(event, Token):
        return {"type": "token", "token": event.text, "index": event.index}
    if isinstance(event, Reasoning):
        return {"type": "reasoning", "token": event.text}
    if isinstance(event, ToolCall):
        call: dict[str, Any] = {"type": "tool_call", "index": event.index}
        if event.id is not None:
            call["id"] = event.id
        if event.name is not None:
            call["name"] = event.name
        if event.arguments is not None:
            call["arguments"] = event.arguments
        return call
    if isinstance(event, Done):
        return {"type": "done", "finish_reason": event.finish_reason, "usage": event.usage}
    if isinstance(event, Failed):
        error: dict[str, Any] = {"type": "error", "code": event.code, "message": event.message}
        if event.retry_after is not None:
            error["retry_after"] = event.retry_after
        return error
    if isinstance(event, Start):
        return {"type": "start", "stream_id": event.stream_id, "model": event.model,
                "resume_token": event.resume_token}
    raise TypeError(f"not an event: {event!r}")


class NativeEncoder:
    __slots__ = ("seq",)

    def __init__(self, seq: int = 0) -> None:
        self.seq = seq

    def encode(self, events: Sequence[Event]) -> list[bytes]:
        out = []
        for event in events:
            # Encoded before the seq is taken: a failure here leaves no gap.
            data = json_event(self.seq, payload(event))
            self.seq += 1
            out.append(data)
        return out


class NativeFormat:
    name = "native"

    def encoder(self, meta: StreamMeta, seq: int = 0) -> NativeEncoder:
        return NativeEncoder(seq)


FORMAT = NativeFormat()
