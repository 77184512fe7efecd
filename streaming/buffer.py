"""Token buffering decisions (PROTOCOL.md, "Token buffering"). Pure: time is an argument."""

from __future__ import annotations

# A delta ending with one of these closes a sentence or a line: send what waits.
_BOUNDARIES = frozenset(".!?\n。！？")  # noqa: RUF001 - the CJK marks are meant


class TokenBuffer:
    """Joins deltas into fewer events without ever delaying one past `max_delay` seconds.

    The first delta is never held (the article's buffer delayed the first token; time to first
    token is what users feel). After it, deltas wait until `max_tokens` of them are joined, one
    ends a sentence or line, or the oldest has waited `max_delay`.
    """

    __slots__ = ("_count", "_oldest", "_parts", "_started", "max_delay", "max_tokens")

    def __init__(self, max_tokens: int, max_delay: float) -> None:
        if max_tokens < 1:
            raise ValueError("max_tokens must be 1 or more")
        self.max_tokens = max_tokens
        self.max_delay = max_delay
        self._parts: list[str] = []
        self._count = 0
        self._oldest = 0.0
        self._started = False

    @property
    def deadline(self) -> float | None:
        """When the waiting text must go out at the latest, or None if nothing waits."""
        return self._oldest + self.max_delay if self._count else None

    def push(self, delta: str, now: float) -> str | None:
        """Take one delta; return the text to send now, if any."""
        if not delta:
            return None
        if not self._started:
            self._started = True
            return delta
        if not self._count:
            self._oldest = now
        self._parts.append(delta)
        self._count += 1
        if (
            self._count >= self.max_tokens
            or delta.rstrip(" \t")[-1:] in _BOUNDARIES
            or now >= self._oldest + self.max_delay
        ):
            return self.flush()
        return None

    def due(self, now: float) -> str | None:
        """Return the waiting text if its deadline has come."""
        deadline = self.deadline
        if deadline is not None and now >= deadline:
            return self.flush()
        return None

    def flush(self) -> str | None:
        """Return whatever waits (the stream ends, or another kind of event comes)."""
        if not self._count:
            return None
        text = "".join(self._parts)
        self._parts.clear()
        self._count = 0
        return text
