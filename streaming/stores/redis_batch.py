"""Appends of every stream of a worker, sent to Redis together.

Each relay appends once per flush of its buffer; with hundreds of streams, hundreds of appends
are under way at any moment. A round trip per append costs two system calls and the client's
per-command work each time; the appends waiting while one batch is on the wire go out as the
next batch, in one pipeline. An append still waits one round trip (plus, at most, the one
before it), and each keeps its own result: a refusal or failure is its own.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from ..green import spawn

MAX_BATCH = 512


class _Waiting:
    __slots__ = ("args", "done", "result")

    def __init__(self, args: Sequence[Any]) -> None:
        self.args = args
        self.done = threading.Event()
        self.result: Any = None


class Batcher:
    """Runs `send(list of args) -> list of results (or exceptions)` on what is waiting, in one
    writer (greenlet or thread); `submit` blocks its caller until its own result is back."""

    def __init__(self, send: Callable[[list[Sequence[Any]]], list[Any]],
                 closed: threading.Event, timeout: float) -> None:
        self._send = send
        self._closed = closed
        self._timeout = timeout
        self._waiting: deque[_Waiting] = deque()
        self._wake = threading.Event()
        self.runner = spawn(self._run, "redis-writer")

    def submit(self, args: Sequence[Any]) -> Any:
        """The result for `args`; raises what the batch or its own command raised."""
        if self._closed.is_set():
            raise ConnectionError("the Redis store is closed")
        item = _Waiting(args)
        self._waiting.append(item)
        self._wake.set()
        if not item.done.wait(self._timeout):
            raise TimeoutError("the Redis writer did not answer in time")
        if isinstance(item.result, BaseException):
            raise item.result
        return item.result

    def _run(self) -> None:
        waiting = self._waiting
        while not self._closed.is_set():
            # Cleared before looking: an append made meanwhile sets it again.
            self._wake.clear()
            while waiting:
                batch = [waiting.popleft() for _ in range(min(len(waiting), MAX_BATCH))]
                try:
                    results = self._send([item.args for item in batch])
                except Exception as exc:  # the round trip failed: every append in it did
                    results = [exc] * len(batch)
                for item, result in zip(batch, results, strict=True):
                    item.result = result
                    item.done.set()
            self._wake.wait(0.5)
        while waiting:  # closing: nobody waits forever
            item = waiting.popleft()
            item.result = ConnectionError("the Redis store is closed")
            item.done.set()
