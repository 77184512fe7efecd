"""Concurrency that works both under gevent and under plain threads."""

from __future__ import annotations

import threading
import time
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


class Alarm:
    """Calls `fire()` when the time given to `set` comes, or soon after `poke()`: in a
    short-lived greenlet under gevent (a libev timer, no greenlet waits in between), else in a
    thread of the alarm's own.

    It may fire early (a `set` to a later time than the one armed keeps the earlier one), so
    `fire` must look at what is due and `set` the next time. `set`, `poke` and `close` may be
    called from any thread; calls of `fire` may overlap, so `fire` serialises itself.

    Under gevent, `inline` (if given) is tried first in the event loop itself, where it must
    not block: it returns False to have `fire` run in a task after all.
    """

    def __init__(self, fire: Callable[[], None], name: str,
                 inline: Callable[[], bool] | None = None) -> None:
        self._impl: _GeventAlarm | _ThreadAlarm = (
            _GeventAlarm(fire, inline) if gevent_active() else _ThreadAlarm(fire, name))
        self.set = self._impl.set
        self.poke = self._impl.poke
        self.close = self._impl.close


_NEVER = float("inf")


class _GeventAlarm:
    def __init__(self, fire: Callable[[], None], inline: Callable[[], bool] | None) -> None:
        import gevent

        self._fire = fire
        self._inline = inline
        self._loop = gevent.get_hub().loop
        self._spawn_raw = gevent.spawn_raw
        self._timer: Any = None
        self._when = _NEVER
        self._closed = False

    def set(self, when: float) -> None:
        if when >= self._when or self._closed:
            return
        timer = self._timer
        if timer is not None:
            timer.close()
        self._when = when
        self._timer = timer = self._loop.timer(max(0.0, when - time.monotonic()))
        timer.start(self._ring)

    def poke(self) -> None:
        if not self._closed:
            self._loop.run_callback_threadsafe(self._start)

    def close(self) -> None:
        self._closed = True
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.close()

    def _ring(self) -> None:  # in the hub: nothing here may block
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.close()
        self._when = _NEVER
        self._start()

    def _start(self) -> None:
        if self._closed or (self._inline is not None and self._inline()):
            return
        _tasks.add(1)
        self._spawn_raw(self._run)

    def _run(self) -> None:
        try:
            self._fire()
        finally:
            _tasks.add(-1)


class _ThreadAlarm:
    def __init__(self, fire: Callable[[], None], name: str) -> None:
        self._fire = fire
        self._name = name
        self._cond = threading.Condition()
        self._when = _NEVER
        self._poked = False
        self._closed = False
        self._thread: Any = None

    def set(self, when: float) -> None:
        with self._cond:
            if when < self._when and not self._closed:
                self._when = when
                self._wake()

    def poke(self) -> None:
        with self._cond:
            if not self._closed:
                self._poked = True
                self._wake()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()

    def _wake(self) -> None:  # with the condition held
        if self._thread is None:
            self._thread = spawn(self._loop, self._name)
        self._cond.notify()

    def _loop(self) -> None:
        cond = self._cond
        while True:
            with cond:
                while not self._closed and not self._poked:
                    now = time.monotonic()
                    if now >= self._when:
                        break
                    cond.wait(None if self._when == _NEVER else self._when - now)
                if self._closed:
                    return
                self._poked = False
                self._when = _NEVER
            self._fire()
