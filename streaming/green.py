"""Concurrency that works both under gevent and under plain threads."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


def gevent_active() -> bool:
    """True when gevent has patched the standard library (gunicorn's gevent worker, wsgi.py)."""
    try:
        from gevent import monkey
    except ImportError:  # pragma: no cover - gevent is a dependency, but this layer needs none
        return False
    return bool(monkey.is_module_patched("threading"))


def spawn(target: Callable[[], None], name: str) -> Any:
    """Run `target` concurrently: a greenlet under gevent (cheaper than a patched Thread), else
    a daemon thread. The result has `kill` only when it is a greenlet."""
    if gevent_active():
        import gevent

        return gevent.spawn(target)
    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread
