"""Wire formats: each module turns the relay's typed events into its payloads and SSE bytes.

A format module defines `FORMAT`, an object with a `name` and `encoder(meta, seq)`; the stream's
metadata names its format, so any worker can encode for any stream (a lost producer's terminal
event, say). Adding a format is a new module here and its HTTP edge, nothing else.
"""

from __future__ import annotations

from importlib import import_module

from .base import Encoder, WireFormat

__all__ = ["Encoder", "WireFormat", "get"]

_loaded: dict[str, WireFormat] = {}


def get(name: str) -> WireFormat:
    """The format called `name` (a module of this package)."""
    fmt = _loaded.get(name)
    if fmt is None:
        if not name.isidentifier() or name in ("base", "sse"):
            raise KeyError(name)
        fmt = _loaded[name] = import_module(f"{__name__}.{name}").FORMAT
    return fmt
