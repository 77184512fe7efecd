"""The relay's typed events, one per thing that happens to a stream, before any wire format.

The relay core emits them; each wire format (`formats/`) turns them into its own payloads and
SSE bytes. Pure: the upstream's values are checked here, so an odd one never breaks encoding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import UpstreamError

FINISH_REASONS = frozenset(("stop", "length", "tool_calls", "content_filter", "cancelled"))


@dataclass(frozen=True, slots=True)
class Start:
    stream_id: str
    model: str
    resume_token: str
    created: int  # Unix seconds


@dataclass(frozen=True, slots=True)
class Token:
    """Completion text; `index` counts token events from 0."""

    text: str
    index: int


@dataclass(frozen=True, slots=True)
class Reasoning:
    text: str


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A tool-call fragment as the upstream sent it (`id` and `name` often only on the first)."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str | None = None


@dataclass(frozen=True, slots=True)
class Done:
    """The answer ended: a contract finish reason (`cancelled` included) and usage if any."""

    finish_reason: str
    usage: dict[str, int] | None = None


@dataclass(frozen=True, slots=True)
class Failed:
    """The answer ended in an error: the contract's `code`, a message for a person."""

    code: str
    message: str
    retry_after: float | None = None


Event = Start | Token | Reasoning | ToolCall | Done | Failed
Terminal = Done | Failed

INTERNAL = Failed("internal", "the service failed while relaying this answer")
PRODUCER_LOST = Failed("producer_lost", "the server relaying this answer stopped; start again")
STORE_UNAVAILABLE = Failed("store_unavailable",
                           "the stream store became unreachable; start the answer again")


def contract_finish_reason(reason: object) -> str:
    """The contract's finish_reason for the upstream's."""
    if isinstance(reason, str) and reason in FINISH_REASONS:
        return reason
    if reason == "function_call":  # the legacy name of tool_calls
        return "tool_calls"
    return "stop"


def usage_counts(value: Any) -> dict[str, int] | None:
    """The usage object, if it holds only whole numbers JSON clients take exactly."""
    if not isinstance(value, dict):
        return None
    counts: dict[str, int] = {}
    for name in ("prompt_tokens", "completion_tokens", "total_tokens"):
        n = value.get(name)
        if n is None and name == "total_tokens":
            n = counts["prompt_tokens"] + counts["completion_tokens"]
        if n is None:
            n = 0
        # Only what JSON clients can take exactly: whole numbers within 53 bits.
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n < 2**53:
            return None
        counts[name] = n
    return counts


def failure(exc: BaseException) -> Failed:
    """The terminal event for an exception out of the upstream boundary."""
    if isinstance(exc, UpstreamError):
        retry_after = None if exc.retry_after is None else round(exc.retry_after, 3)
        return Failed(exc.code, exc.message, retry_after)
    return Failed("internal", "the service failed while reading the upstream")


def outcome(event: Terminal) -> str:
    """The label a stream's end is counted under: finish reason or error code."""
    return event.finish_reason if isinstance(event, Done) else event.code
