"""The payloads of the stream's events (PROTOCOL.md, "The stream"), from what the upstream
said. Pure: the upstream's values are checked here, so an odd one never breaks encoding."""

from __future__ import annotations

from typing import Any

from .errors import UpstreamError

FINISH_REASONS = frozenset(("stop", "length", "tool_calls", "content_filter", "cancelled"))

INTERNAL_ERROR = {"type": "error", "code": "internal",
                  "message": "the service failed while relaying this answer"}


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
        # Only what JSON clients can take exactly: whole numbers within 53 bits.
        if n is None:
            n = 0
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n < 2**53:
            return None
        counts[name] = n
    return counts


def error_event(exc: BaseException) -> tuple[dict[str, Any], str]:
    if isinstance(exc, UpstreamError):
        event: dict[str, Any] = {"type": "error", "code": exc.code, "message": exc.message}
        if exc.retry_after is not None:
            event["retry_after"] = round(exc.retry_after, 3)
        return event, exc.code
    return ({"type": "error", "code": "internal",
             "message": "the service failed while reading the upstream"}, "internal")


def timeout_message(idle_deadline: float | None, now: float, total_deadline: float) -> str:
    if now >= total_deadline:
        return "the answer took longer than the stream timeout"
    if idle_deadline is None:
        return "the upstream sent no first token in time"
    return "the upstream stopped sending"
