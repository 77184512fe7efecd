"""What a provider gives the relay: a blocking iterator of small items, and a way to stop it.

Items are plain tuples, not objects: the relay handles one per upstream delta, and building a
model per chunk is the cost the hot path must not pay.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any, Protocol

# (CONTENT, text) · (REASONING, text) · (TOOL_CALL, {"index", "id"?, "name"?, "arguments"?})
# (FINISH, finish_reason) · (USAGE, {"prompt_tokens", ...})
CONTENT = "content"
REASONING = "reasoning"
TOOL_CALL = "tool_call"
FINISH = "finish"
USAGE = "usage"

# The kinds that count as a delta (PROTOCOL.md: a role-only or empty chunk is not one).
DELTA_KINDS = frozenset((CONTENT, REASONING, TOOL_CALL))

Item = tuple[str, Any]


class UpstreamStream(Protocol):
    """One upstream response being read. `close()` may be called from another greenlet."""

    def __iter__(self) -> Iterator[list[Item]]: ...

    def close(self) -> None: ...


class Provider(Protocol):
    """Opens one upstream generation. Raises `errors.UpstreamError` and nothing else."""

    name: str

    def open(self, request: dict[str, Any]) -> AbstractContextManager[UpstreamStream]: ...

    def ready(self) -> bool: ...

    def close(self) -> None: ...
