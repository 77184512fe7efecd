"""One stream's decisions, pure and clock-driven: feed it what the upstream said and the time,
ask what is due and when to look again; it emits the typed events of `events.py`.

No threads, sockets or store: the shell (`relay.py`) owns those and calls this with `now`. The
rules it keeps are the contract's: token buffering, the first-token, idle and total timeouts,
the resume grace, and exactly one terminal event, last.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .buffer import TokenBuffer
from .events import (
    Done,
    Event,
    Failed,
    Reasoning,
    Start,
    Terminal,
    Token,
    ToolCall,
    contract_finish_reason,
    failure,
    usage_counts,
)
from .upstream.provider import CONTENT, FINISH, REASONING, TOOL_CALL, USAGE, Item

if TYPE_CHECKING:
    from .settings import Settings

_NEVER = float("inf")


@dataclass(frozen=True, slots=True)
class Limits:
    """The clocks and buffering of one stream (from Settings)."""

    max_tokens: int
    max_delay: float  # seconds
    first_token_timeout: float
    idle_timeout: float
    stream_timeout: float
    resume_grace: float

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            max_tokens=settings.BUFFER_MAX_TOKENS,
            max_delay=settings.BUFFER_MAX_DELAY_MS / 1000.0,
            first_token_timeout=settings.FIRST_TOKEN_TIMEOUT,
            idle_timeout=settings.IDLE_TIMEOUT,
            stream_timeout=settings.STREAM_TIMEOUT,
            resume_grace=settings.RESUME_GRACE,
        )


class RelayCore:
    """The producer's state machine. Not thread-safe: one shell drives it."""

    __slots__ = (
        "_alone_since", "_buffers", "_finish_reason", "_first_deadline", "_idle_deadline",
        "_limits", "_out", "_token_index", "_total_deadline", "_usage", "deltas",
        "ended", "first_delta_at", "started_at",
    )

    def __init__(self, start: Start, limits: Limits, now: float) -> None:
        self._limits = limits
        self.started_at = now
        self._first_deadline = now + limits.first_token_timeout
        self._total_deadline = now + limits.stream_timeout
        self._idle_deadline: float | None = None  # set by the first delta
        self._buffers = {CONTENT: TokenBuffer(limits.max_tokens, limits.max_delay),
                         REASONING: TokenBuffer(limits.max_tokens, limits.max_delay)}
        self._token_index = 0
        self._finish_reason: str | None = None
        self._usage: dict[str, int] | None = None
        self._alone_since: float | None = None
        self._out: list[Event] = [start]
        self.deltas = 0  # upstream deltas seen (content, reasoning, tool-call fragments)
        self.first_delta_at: float | None = None
        self.ended: Terminal | None = None

    # -- input --------------------------------------------------------------------------

    def feed(self, items: Iterable[Item], now: float) -> None:
        """Take what the upstream sent (deltas, finish reason, usage)."""
        if self.ended is not None:
            return
        for kind, value in items:
            if kind in (CONTENT, REASONING):
                self._delta(now)
                other = REASONING if kind == CONTENT else CONTENT
                self._flush(other)
                text = self._buffers[kind].push(value, now)
                if text is not None:
                    self._emit_text(kind, text)
            elif kind == TOOL_CALL:
                self._delta(now)
                self._flush(None)
                self._out.append(ToolCall(value["index"], value.get("id"), value.get("name"),
                                          value.get("arguments")))
            elif kind == FINISH:
                self._finish_reason = value
            elif kind == USAGE:
                self._usage = usage_counts(value)

    def upstream_ended(self) -> None:
        """The upstream's body ended (`[DONE]` or its end). Without a finish reason the answer
        was cut (llama.cpp servers, for one, send `[DONE]` after interrupting a stream)."""
        if self._finish_reason is None:
            self._end(Failed("upstream_error", "the upstream ended the answer before finishing it"))
        else:
            self._end(Done(contract_finish_reason(self._finish_reason), self._usage))

    def fail(self, exc: BaseException) -> None:
        """The upstream failed for good (the shell has done the retrying)."""
        self._end(failure(exc))

    def cancel(self) -> None:
        """A cancel request, or the resume grace ran out: `done` / `cancelled`, usage so far."""
        self._end(Done("cancelled", self._usage))

    def abort(self, event: Failed) -> None:
        """End with an error from outside the upstream (the worker is stopping, say)."""
        self._end(event)

    def alone(self, since: float | None) -> None:
        """The stream has had no client since `since` (None: it has one again)."""
        self._alone_since = since

    # -- time ---------------------------------------------------------------------------

    def deadline(self) -> float:
        """When `tick` must run next, at the latest."""
        if self.ended is not None:
            return _NEVER
        d = self._first_deadline if self._idle_deadline is None else self._idle_deadline
        if self._total_deadline < d:
            d = self._total_deadline
        for buffer in self._buffers.values():
            b = buffer.deadline
            if b is not None and b < d:
                d = b
        if self._alone_since is not None:
            g = self._alone_since + self._limits.resume_grace
            if g < d:
                d = g
        return d

    def tick(self, now: float) -> None:
        """Send text whose buffering time is up; end the stream on a timeout."""
        if self.ended is not None:
            return
        for kind, buffer in self._buffers.items():
            text = buffer.due(now)
            if text is not None:
                self._emit_text(kind, text)
        if now >= self._total_deadline:
            self._end(Failed("timeout", "the answer took longer than the stream timeout"))
        elif self._idle_deadline is None and now >= self._first_deadline:
            self._end(Failed("timeout", "the upstream sent no first token in time"))
        elif self._idle_deadline is not None and now >= self._idle_deadline:
            self._end(Failed("timeout", "the upstream stopped sending"))

    def grace_due(self, now: float) -> bool:
        """True once the stream has been alone for RESUME_GRACE: the shell checks that no
        client anywhere follows it, then cancels (or calls `alone(None)`)."""
        return (self.ended is None and self._alone_since is not None
                and now >= self._alone_since + self._limits.resume_grace)

    # -- output -------------------------------------------------------------------------

    def take(self) -> list[Event]:
        """The events emitted since the last call, in order; the terminal one last."""
        out = self._out
        self._out = []
        return out

    # -- inside -------------------------------------------------------------------------

    def _delta(self, now: float) -> None:
        self.deltas += 1
        if self.first_delta_at is None:
            self.first_delta_at = now
        self._idle_deadline = now + self._limits.idle_timeout

    def _emit_text(self, kind: str, text: str) -> None:
        if kind == REASONING:
            self._out.append(Reasoning(text))
        else:
            self._out.append(Token(text, self._token_index))
            self._token_index += 1

    def _flush(self, kind: str | None) -> None:
        for k, buffer in self._buffers.items():
            if kind is None or k == kind:
                text = buffer.flush()
                if text is not None:
                    self._emit_text(k, text)

    def _end(self, event: Terminal) -> None:
        if self.ended is not None:
            return
        self._flush(None)
        self.ended = event
        self._out.append(event)
