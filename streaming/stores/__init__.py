"""Where streams live between their producer and every client: the interface and its stores.

`base.StreamStore` is the interface; `memory.MemoryStore` keeps streams in this process,
`redis.RedisStore` (the one module that imports `redis`) in Redis, for every worker and host.
"""

from __future__ import annotations

from .base import (
    Counter,
    IndexKey,
    Producer,
    StreamClosedError,
    StreamMeta,
    StreamStore,
    UnknownStreamError,
)

__all__ = ["Counter", "IndexKey", "Producer", "StreamClosedError", "StreamMeta",
           "StreamStore", "UnknownStreamError"]
