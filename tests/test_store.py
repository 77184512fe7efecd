"""The store interface: the log (compare-and-append, cursor reads, waking, expiry), control,
counters and indexes."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import RecordingProducer as Producer

from streaming.settings import Settings
from streaming.stores import StreamClosedError, StreamMeta, StreamStore, UnknownStreamError
from streaming.stores.memory import MemoryStore
from streaming.stores.redis import RedisStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def redis_settings(url: str, **extra: Any) -> Settings:
    """Settings for a RedisStore of its own: a fresh prefix keeps tests apart on one server."""
    values: dict[str, Any] = {"REDIS_URL": url, "REDIS_PREFIX": f"t{secrets.token_hex(4)}:",
                              "STREAM_TTL": 60, **extra}
    return Settings(**values)


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest, clock: Clock) -> Iterator[StreamStore]:
    s: StreamStore
    if request.param == "memory":
        s = MemoryStore(ttl=60, clock=clock)
    else:
        s = RedisStore(redis_settings(request.getfixturevalue("redis_server").url))
    yield s
    s.close()


def meta(stream_id: str = "s", owner: str | None = "owner", **options: object) -> StreamMeta:
    return StreamMeta(stream_id=stream_id, owner=owner, model="m", format="native",
                      resume_token="tok", worker="w1", created=1.5e9, options=options)


def test_create_append_and_read_from_cursor(store: StreamStore) -> None:
    store.create(meta(), [b"e0"])
    store.append("s", 1, [b"e1", b"e2"])
    assert store.read("s", 0, 0) == ([b"e0", b"e1", b"e2"], False)
    assert store.read("s", 2, 0) == ([b"e2"], False)
    assert store.read("s", 3, 0) == ([], False)
    assert store.read("s", 99, 0) == ([], False)
    assert store.status("s") == (3, False)


def test_meta_round_trips(store: StreamStore) -> None:
    m = meta(owner=None, include_usage=True, message_id="msg-1")
    store.create(m, [b"e0"])
    assert store.meta("s") == m


def test_unknown_stream(store: StreamStore) -> None:
    for call in (lambda: store.read("nope", 0, 0), lambda: store.meta("nope"),
                 lambda: store.status("nope")):
        with pytest.raises(UnknownStreamError):
            call()
    with pytest.raises(KeyError):  # an UnknownStreamError is a KeyError
        store.meta("nope")


def test_duplicate_id_refused(store: StreamStore) -> None:
    store.create(meta(), [b"e0"])
    with pytest.raises(ValueError):
        store.create(meta(), [b"e0"])


def test_append_compares_the_next_seq(store: StreamStore) -> None:
    store.create(meta(), [b"e0"])
    with pytest.raises(StreamClosedError):
        store.append("s", 0, [b"again"])
    with pytest.raises(StreamClosedError):
        store.append("s", 2, [b"gap"])
    assert store.read("s", 0, 0) == ([b"e0"], False)


def test_the_end_is_written_once(store: StreamStore) -> None:
    store.create(meta(), [b"e0"])
    store.append("s", 1, [b"end"], end=True)
    assert store.read("s", 0, 0) == ([b"e0", b"end"], True)
    assert store.status("s") == (2, True)
    # A producer that wakes late (or a second finder of a lost one) cannot write after it.
    with pytest.raises(StreamClosedError):
        store.append("s", 2, [b"late"])
    with pytest.raises(StreamClosedError):
        store.append("s", 2, [b"late"], end=True)


def test_expiry_after_ttl_counts_from_the_end(store: StreamStore, clock: Clock,
                                               request: pytest.FixtureRequest) -> None:
    if isinstance(store, RedisStore):
        # Redis expires by its own clock: a store whose ended streams live 0.3 s.
        short = RedisStore(redis_settings(request.getfixturevalue("redis_server").url,
                                          STREAM_TTL=0.3))
        try:
            short.create(meta(), [b"e0"])
            short.append("s", 1, [b"end"], end=True)
            assert short.read("s", 0, 0) == ([b"e0", b"end"], True)
            deadline = time.monotonic() + 10
            with pytest.raises(UnknownStreamError):
                while time.monotonic() < deadline:
                    short.read("s", 0, 0)
                    time.sleep(0.05)
        finally:
            short.close()
        return
    store.create(meta(), [b"e0"])
    clock.now += 500  # running streams do not expire
    assert store.read("s", 0, 0) == ([b"e0"], False)
    store.append("s", 1, [b"end"], end=True)
    clock.now += 59.9
    assert store.read("s", 0, 0) == ([b"e0", b"end"], True)
    clock.now += 0.2
    with pytest.raises(UnknownStreamError):
        store.read("s", 0, 0)


def test_end_locally_releases_this_workers_readers(store: StreamStore) -> None:
    store.create(meta(), [b"e0"])
    store.end_locally("s", [b"lost"])
    assert store.read("s", 0, 0) == ([b"e0", b"lost"], True)


def test_reader_is_woken_by_append(store: StreamStore) -> None:
    store.create(meta(), [b"e0"])
    got: list[tuple[list[bytes], bool]] = []
    waiting = threading.Event()

    def reader() -> None:
        waiting.set()
        got.append(store.read("s", 1, 30))

    t = threading.Thread(target=reader)
    t.start()
    waiting.wait(5)
    started = time.monotonic()
    store.append("s", 1, [b"e1"])
    t.join(10)
    assert got == [([b"e1"], False)]
    assert time.monotonic() - started < 5


def test_wake_releases_a_waiting_reader(store: StreamStore) -> None:
    store.create(meta(), [b"e0"])
    got: list[tuple[list[bytes], bool]] = []
    t = threading.Thread(target=lambda: got.append(store.read("s", 1, 30)))
    t.start()
    deadline = time.monotonic() + 10
    while not got and time.monotonic() < deadline:
        store.wake("s")
        t.join(0.05)
    assert got == [([], False)]


def test_read_times_out_with_nothing(store: StreamStore) -> None:
    store.create(meta(), [b"e0"])
    assert store.read("s", 1, 0.01) == ([], False)


def test_cancel_reaches_the_registered_producer(store: StreamStore) -> None:
    store.create(meta(), [b"e0"])
    producer = Producer()
    store.register("s", producer)
    store.cancel("s")
    assert producer.cancelled.wait(5)
    store.unregister("s")


def test_counters_are_bounded_and_the_last_follower_tells_the_producer(
        store: StreamStore) -> None:
    store.create(meta(), [b"e0"])
    producer = Producer()
    store.register("s", producer)
    assert store.acquire(("followers", "s"), 2)
    assert store.acquire(("followers", "s"), 2)
    assert not store.acquire(("followers", "s"), 2)
    assert store.count(("followers", "s")) == 2
    store.release(("followers", "s"))
    assert not producer.presence.is_set()
    store.release(("followers", "s"))
    assert producer.presence.wait(5)
    assert store.count(("followers", "s")) == 0
    # Counters are independent of each other.
    assert store.acquire(("connections", "k"), 1)
    assert not store.acquire(("connections", "k"), 1)
    assert store.acquire(("streams", "k"), 1)
    store.release(("connections", "k"))
    assert store.count(("connections", "k")) == 0
    assert store.count(("streams", "k")) == 1


def test_indexes(store: StreamStore, clock: Clock) -> None:
    key = ("idempotency", "owner", "k1")
    assert store.index_get(key) is None
    assert store.index_add(key, "a") is None
    assert store.index_add(key, "b") == "a"
    assert store.index_get(key) == "a"
    assert store.index_swap(key, "c") == "a"
    assert store.index_get(key) == "c"
    store.index_remove(key, "a")  # not what it holds: kept
    assert store.index_get(key) == "c"
    store.index_remove(key, "c")
    assert store.index_get(key) is None
    # Scoped by owner: another key's index is another index.
    assert store.index_add(("idempotency", None, "k1"), "x") is None
    assert store.index_get(("idempotency", "other", "k1")) is None
