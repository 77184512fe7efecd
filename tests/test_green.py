"""The Alarm under plain threads (the gevent one runs under every service test: each buffer
deadline, timeout and cancel of a stream goes through it)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

from streaming.green import Alarm, tasks_running

WAIT = 10.0  # generous: a loaded machine may be slow to schedule the alarm's thread


class Rings:
    def __init__(self) -> None:
        self.times: list[float] = []
        self.event = threading.Event()

    def __call__(self) -> None:
        self.times.append(time.monotonic())
        self.event.set()


def test_rings_at_the_time_set_and_not_before() -> None:
    rings = Rings()
    alarm = Alarm(rings, "t")
    when = time.monotonic() + 0.2
    alarm.set(when)
    assert rings.event.wait(WAIT)
    assert rings.times[0] >= when
    alarm.close()


def test_an_earlier_time_wins_and_a_later_one_keeps_the_earlier() -> None:
    rings = Rings()
    alarm = Alarm(rings, "t")
    now = time.monotonic()
    alarm.set(now + 60)
    alarm.set(now + 0.1)  # earlier: re-armed
    alarm.set(now + 30)  # later: the armed time stays (the owner re-sets after each ring)
    assert rings.event.wait(WAIT)
    assert now + 0.1 <= rings.times[0] < now + 30
    alarm.close()


def test_poke_rings_at_once_and_close_stops_it() -> None:
    rings = Rings()
    alarm = Alarm(rings, "t")
    alarm.set(time.monotonic() + 3600)
    alarm.poke()
    assert rings.event.wait(WAIT)
    assert len(rings.times) == 1
    before = tasks_running()
    alarm.close()
    deadline = time.monotonic() + WAIT
    while tasks_running() >= before and time.monotonic() < deadline:
        time.sleep(0.01)  # the alarm's thread ends after close
    assert tasks_running() < before
    rings.event.clear()
    alarm.set(time.monotonic())
    alarm.poke()
    assert not rings.event.wait(0.3)


GEVENT_SCRIPT = r"""
from gevent import monkey
monkey.patch_all()
import time, gevent
from streaming.green import Alarm, tasks_running

log = []
busy = [False]
def fire(): log.append(("task", gevent.getcurrent() is not gevent.get_hub()))
def inline():
    if busy[0]:
        return False
    log.append(("inline", gevent.getcurrent() is gevent.get_hub()))
    return True

alarm = Alarm(fire, "t", inline=inline)
t0 = time.monotonic()
alarm.set(t0 + 0.1)
alarm.set(t0 + 50)
gevent.sleep(0.3)
assert log == [("inline", True)], log          # rang once, in the event loop
busy[0] = True
alarm.poke()
gevent.sleep(0.05)
assert log[1:] == [("task", True)], log        # inline refused: a greenlet ran it
alarm.set(time.monotonic() + 0.05)
alarm.close()
gevent.sleep(0.2)
assert len(log) == 2, log                      # closed: no more rings
assert tasks_running() == 0
print("ok")
"""


def test_the_gevent_alarm_rings_inline_or_in_a_greenlet() -> None:
    out = subprocess.run([sys.executable, "-c", GEVENT_SCRIPT], capture_output=True,
                         text=True, timeout=60, cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
