"""Concurrency that works both under gevent and under plain threads."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class _TaskCount:
    """Tasks started by `spawn` and not finished yet, in this process (process-wide by nature,
    like threading.active_count): what leak checks and /metrics read."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value = 0

    def add(self, n: int) -> None:
        with self._lock:
            self.value += n


_tasks = _TaskCount()


def gevent_active() -> bool:
    """True when gevent has patched the standard library (gunicorn's gevent worker, wsgi.py)."""
    try:
        from gevent import monkey
    except ImportError:  # pragma: no cover - gevent is a dependency, but this layer needs none
        return False
    return bool(monkey.is_module_patched("threading"))


def tasks_running() -> int:
    return _tasks.value


def spawn(target: Callable[[], None], name: str) -> Any:
    """Run `target` concurrently: a greenlet under gevent (cheaper than a patched Thread), else
    a daemon thread. The result has `kill` only when it is a greenlet."""
    _tasks.add(1)
    if gevent_active():
        import gevent

        greenlet = gevent.spawn(target)
        # A link runs however the greenlet ends, killed before it started included.
        greenlet.rawlink(lambda _: _tasks.add(-1))
        return greenlet

    def run() -> None:
        try:
            target()
        finally:
            _tasks.add(-1)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread
