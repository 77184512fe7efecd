"""The event log: append, read from a cursor, wake waiters, expire after the TTL."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from streaming.store import MemoryStore, StreamStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["memory"])
def store(request: pytest.FixtureRequest, clock: Clock) -> Iterator[StreamStore]:
    s = MemoryStore(ttl=60, clock=clock)
    yield s
    s.close()


def test_append_and_read_from_cursor(store: StreamStore) -> None:
    store.create("s", "owner")
    store.append("s", [b"e0", b"e1"])
    store.append("s", [b"e2"])
    assert store.read("s", 0, 0) == ([b"e0", b"e1", b"e2"], False)
    assert store.read("s", 2, 0) == ([b"e2"], False)
    assert store.read("s", 3, 0) == ([], False)
    assert store.read("s", 99, 0) == ([], False)
    assert store.owner("s") == "owner"


def test_unknown_stream(store: StreamStore) -> None:
    with pytest.raises(KeyError):
        store.read("nope", 0, 0)
    with pytest.raises(KeyError):
        store.owner("nope")


def test_duplicate_id_refused(store: StreamStore) -> None:
    store.create("s", None)
    with pytest.raises(ValueError):
        store.create("s", None)


def test_finish_then_no_more_appends(store: StreamStore) -> None:
    store.create("s", None)
    store.append("s", [b"e0"])
    store.finish("s")
    assert store.read("s", 0, 0) == ([b"e0"], True)
    with pytest.raises(ValueError):
        store.append("s", [b"late"])


def test_expiry_after_ttl_counts_from_the_end(store: StreamStore, clock: Clock) -> None:
    store.create("s", None)
    clock.now += 500  # running streams do not expire
    assert store.read("s", 0, 0) == ([], False)
    store.finish("s")
    clock.now += 59.9
    assert store.read("s", 0, 0) == ([], True)
    clock.now += 0.2
    with pytest.raises(KeyError):
        store.read("s", 0, 0)


def test_reader_is_woken_by_append() -> None:
    store = MemoryStore(ttl=60)
    store.create("s", None)
    got: list[tuple[list[bytes], bool]] = []
    waiting = threading.Event()

    def reader() -> None:
        waiting.set()
        got.append(store.read("s", 0, 30))

    t = threading.Thread(target=reader)
    t.start()
    waiting.wait(5)
    started = time.monotonic()
    store.append("s", [b"e0"])
    t.join(10)
    assert got == [([b"e0"], False)]
    assert time.monotonic() - started < 5


def test_wake_releases_a_waiting_reader() -> None:
    store = MemoryStore(ttl=60)
    store.create("s", None)
    got: list[tuple[list[bytes], bool]] = []
    t = threading.Thread(target=lambda: got.append(store.read("s", 0, 30)))
    t.start()
    deadline = time.monotonic() + 10
    while not got and time.monotonic() < deadline:
        store.wake("s")
        t.join(0.05)
    assert got == [([], False)]


def test_read_times_out_with_nothing(store: StreamStore) -> None:
    store.create("s", None)
    assert store.read("s", 0, 0.01) == ([], False)
