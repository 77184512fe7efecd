"""What only the Redis store does: TTLs and key layout, several workers on one Redis (pub/sub
wake-ups, cancel, presence, leases and lost producers), Redis faults (killed, hung, pub/sub
cut), a Redis Cluster, rediss:// and unix:// URLs, and the eviction-policy warning."""

from __future__ import annotations

import json
import logging
import secrets
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import RecordingProducer as Producer
from conftest import free_port
from redis.crc import key_slot
from redisfix import RedisCluster, RedisServer, make_tls_files

from streaming.errors import StoreUnavailableError
from streaming.settings import Settings
from streaming.stores import StreamClosedError, StreamMeta, redis_follow
from streaming.stores.redis import RedisStore


@pytest.fixture
def prefix() -> str:
    return f"t{secrets.token_hex(4)}:"


@pytest.fixture
def workers(redis_server: RedisServer, prefix: str) -> Iterator[Callable[..., RedisStore]]:
    """Start RedisStores ("workers") sharing one Redis and one prefix; closed after the test."""
    started: list[RedisStore] = []

    def start(url: str | None = None, **kwargs: Any) -> RedisStore:
        settings = Settings(REDIS_URL=url or redis_server.url, REDIS_PREFIX=prefix,
                            REDIS_CLUSTER=kwargs.pop("cluster", False),
                            STREAM_TTL=kwargs.pop("ttl", 60), STREAM_TIMEOUT=120)
        store = RedisStore(settings, **kwargs)
        started.append(store)
        return store

    yield start
    for store in started:
        store.close()


def meta(store: RedisStore, stream_id: str = "s") -> StreamMeta:
    return StreamMeta(stream_id=stream_id, owner="owner", model="m", format="native",
                      resume_token="tok", worker=store.worker_id, created=1.5e9, options={})


def client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=5)


def wait_subscribed(url: str, channel: str, n: int = 1, timeout: float = 10) -> None:
    """Until `n` connections listen on `channel` (the follow loops subscribe on their turn)."""
    r = client(url)
    try:
        deadline = time.monotonic() + timeout
        while r.pubsub_numsub(channel)[0][1] < n:
            assert time.monotonic() < deadline, f"{n} subscribers to {channel} never came"
            time.sleep(0.02)  # no event tells another process subscribed: ask Redis
    finally:
        r.close()


def read_until(store: RedisStore, stream_id: str, cursor: int, done: Callable[[list[bytes]], bool],
               timeout: float = 10) -> list[bytes]:
    """Read from `cursor` until `done(events)`, within `timeout` seconds."""
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    while not done(got) and time.monotonic() < deadline:
        events, ended = store.read(stream_id, cursor + len(got), deadline - time.monotonic())
        got += events
        if ended:
            break
    return got


def test_every_key_has_a_ttl_and_the_layout_is_versioned(
        workers: Callable[..., RedisStore], redis_server: RedisServer, prefix: str) -> None:
    a = workers()
    a.create(meta(a), [b"e0"])
    a.append("s", 1, [b"e1"])
    assert a.acquire(("followers", "s"), 5)
    assert a.acquire(("connections", "owner"), 5)
    assert a.acquire(("streams", "owner"), 5)
    assert a.index_add(("idempotency", "owner", "k:{x}"), "s") is None
    assert a.index_swap(("chat", None, "c1"), "s") is None
    r = client(redis_server.url)

    def ttls() -> dict[bytes, int]:
        return {key: r.pttl(key) for key in r.scan_iter(match=f"{prefix}*")}

    running = ttls()
    assert all(ttl > 0 for ttl in running.values()), running
    workers_key = f"{prefix}v1:workers".encode()  # renewed by every live worker
    assert all(ttl > 120_000 for k, ttl in running.items() if k != workers_key), running
    stream_keys = [k for k in running if b"{s}" in k]
    assert sorted(stream_keys) == sorted(f"{prefix}v1:{{s}}:{x}".encode() for x in "mlf")
    assert len({key_slot(k) for k in stream_keys}) == 1  # one Cluster slot per stream
    assert all(k.startswith(f"{prefix}v1:".encode()) for k in running)
    assert workers_key in running
    a.append("s", 2, [b"end"], end=True)
    ended = ttls()
    assert all(0 < ended[k] <= 60_000 for k in stream_keys), ended
    assert all(ttl > 0 for ttl in ended.values()), ended
    # A stream created without events gets its log's TTL with its first append.
    a.create(meta(a, "empty"), [])
    a.append("empty", 0, [b"x"])
    assert r.pttl(f"{prefix}v1:{{empty}}:l") > 120_000
    # The log holds one Redis Stream entry per event, with the seq as its id.
    entries = r.xrange(f"{prefix}v1:{{s}}:l")
    assert [(i, f[b"e"]) for i, f in entries] == [(b"0-1", b"e0"), (b"1-1", b"e1"),
                                                   (b"2-1", b"end")]


def test_another_worker_resumes_follows_and_is_woken_by_pubsub(
        workers: Callable[..., RedisStore], redis_server: RedisServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # No polling for lost notifications: only pub/sub can wake B's reader.
    monkeypatch.setattr(redis_follow, "POLL", 60.0)
    a, b = workers(), workers()
    a.create(meta(a), [b"e0", b"e1"])
    assert b.meta("s") == meta(a)
    assert b.read("s", 1, 0) == ([b"e1"], False)  # resume from a cursor
    got: list[tuple[list[bytes], bool]] = []
    waiting = threading.Event()

    def reader() -> None:
        waiting.set()
        got.append(b.read("s", 2, 30))

    t = threading.Thread(target=reader)
    t.start()
    assert waiting.wait(5)
    wait_subscribed(redis_server.url, b.keys.notify("s"))
    started = time.monotonic()
    a.append("s", 2, [b"e2"])
    t.join(10)
    assert got == [([b"e2"], False)]
    assert time.monotonic() - started < 1.0
    a.append("s", 3, [b"end"], end=True)
    assert read_until(b, "s", 3, lambda e: bool(e)) == [b"end"]
    assert b.status("s") == (4, True)
    c = workers()  # a worker that never followed it: an ended stream, from any cursor
    assert c.read("s", 2, 0) == ([b"e2", b"end"], True)
    assert c.read("s", 4, 0) == ([], True)
    assert c.read("s", 99, 0) == ([], True)
    assert c.read("s", 0, 0) == ([b"e0", b"e1", b"e2", b"end"], True)


def test_cancel_and_presence_reach_the_producers_worker(
        workers: Callable[..., RedisStore], redis_server: RedisServer) -> None:
    a, b = workers(), workers()
    a.create(meta(a), [b"e0"])
    producer = Producer()
    a.register("s", producer)
    wait_subscribed(redis_server.url, a.keys.control(a.worker_id))
    started = time.monotonic()
    b.cancel("s")
    assert producer.cancelled.wait(5)
    assert time.monotonic() - started < 1.0
    # Followers count on every worker; the last one leaving, anywhere, tells the producer.
    assert a.acquire(("followers", "s"), 3)
    assert b.acquire(("followers", "s"), 3)
    assert b.acquire(("followers", "s"), 3)
    assert not a.acquire(("followers", "s"), 3)
    assert a.count(("followers", "s")) == b.count(("followers", "s")) == 3
    a.release(("followers", "s"))
    b.release(("followers", "s"))
    assert not producer.presence.is_set()
    b.release(("followers", "s"))
    assert producer.presence.wait(5)
    assert a.count(("followers", "s")) == 0


def test_a_cancel_flag_reaches_a_producer_that_missed_the_message(
        workers: Callable[..., RedisStore]) -> None:
    a, b = workers(), workers()
    a.create(meta(a), [b"e0"])
    producer = Producer()
    b.cancel("s")  # before A registered it: the message finds no producer
    a.register("s", producer)
    assert not producer.cancelled.is_set()
    a.append("s", 1, [b"e1"])  # accepted, and tells the producer
    assert producer.cancelled.is_set()
    assert b.read("s", 0, 0) == ([b"e0", b"e1"], False)


@pytest.mark.parametrize("how", ["closed", "lease lapsed"])
def test_a_lost_producer_is_ended_once_for_every_follower(
        workers: Callable[..., RedisStore], redis_server: RedisServer, prefix: str,
        how: str) -> None:
    a = workers(lease=1.0)
    b, c = workers(), workers()
    a.create(meta(a), [b"e0"])
    a.append("s", 1, [b"e1"])
    results: dict[str, list[bytes]] = {}

    def follow(name: str, store: RedisStore) -> None:
        results[name] = read_until(store, "s", 0, lambda e: False, timeout=15)

    threads = [threading.Thread(target=follow, args=(n, s)) for n, s in (("b", b), ("c", c))]
    for t in threads:
        t.start()
    wait_subscribed(redis_server.url, b.keys.notify("s"), 2)  # both follow it
    started = time.monotonic()
    if how == "closed":
        a.close()
    else:
        a.closed.set()  # its loops stop and its lease lapses, as when the worker is killed
    for t in threads:
        t.join(20)
    assert time.monotonic() - started < 10
    for events in results.values():
        assert events[:2] == [b"e0", b"e1"]
        assert len(events) == 3
        last = events[2].decode()
        assert last.startswith("id: 2\n")
        assert json.loads(last.split("data: ", 1)[1])["code"] == "producer_lost"
    assert results["b"] == results["c"]
    # Written once: one terminal entry, and a producer that wakes late cannot write after it.
    assert client(redis_server.url).xlen(f"{prefix}v1:{{s}}:l") == 3
    with pytest.raises(StreamClosedError):
        b.append("s", 2, [b"late"])


def test_redis_lost_then_back(workers: Callable[..., RedisStore],
                              redis_crashable: RedisServer) -> None:
    a = workers(redis_crashable.url)
    b = workers(redis_crashable.url)
    a.create(meta(a), [b"e0"])
    assert b.ping()
    got: list[list[bytes]] = []
    t = threading.Thread(target=lambda: got.append(
        read_until(b, "s", 0, lambda e: False, timeout=20)))
    t.start()
    wait_subscribed(redis_crashable.url, b.keys.notify("s"))
    redis_crashable.stop()
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError):
        a.append("s", 1, [b"e1"])
    assert time.monotonic() - started < 3.5
    assert not a.ping()
    # B's reader of A's stream learns why, through B's own mirror.
    t.join(15)
    assert got and got[0][0] == b"e0" and len(got[0]) == 2
    assert b'"code":"store_unavailable"' in got[0][1]
    assert time.monotonic() - started < 10
    redis_crashable.start()  # same port, empty
    assert a.ping()
    with pytest.raises(StoreUnavailableError):  # Redis lost it: not the producer's fault
        a.append("s", 1, [b"e1"])
    a.create(meta(a, "s2"), [b"x0"])  # no restart needed
    a.append("s2", 1, [b"x1"], end=True)
    assert b.read("s2", 0, 0) == ([b"x0", b"x1"], True)


def test_cluster_create_on_one_worker_read_and_cancel_from_another(
        workers: Callable[..., RedisStore], redis_cluster: RedisCluster) -> None:
    a = workers(redis_cluster.url, cluster=True)
    b = workers(redis_cluster.nodes[2].url, cluster=True)
    producers = {}
    for sid in ("s1", "s2", "s3"):  # ids on different slots
        a.create(meta(a, sid), [b"e0"])
        producers[sid] = Producer()
        a.register(sid, producers[sid])
        assert b.read(sid, 0, 0) == ([b"e0"], False)
        assert b.acquire(("followers", sid), 2)
    a.append("s2", 1, [b"e1"])
    assert read_until(b, "s2", 1, lambda e: bool(e), timeout=5) == [b"e1"]
    b.cancel("s3")
    assert producers["s3"].cancelled.wait(5)
    b.release(("followers", "s1"))
    assert producers["s1"].presence.wait(5)
    a.append("s1", 1, [b"end"], end=True)
    assert read_until(b, "s1", 0, lambda e: len(e) == 2) == [b"e0", b"end"]


def test_a_hung_redis_times_out_and_a_local_end_is_written_when_it_is_back(
        workers: Callable[..., RedisStore], redis_crashable: RedisServer) -> None:
    a = workers(redis_crashable.url)
    b = workers(redis_crashable.url)
    a.create(meta(a), [b"e0"])
    a.register("s", Producer())
    assert redis_crashable.proc is not None
    redis_crashable.proc.send_signal(signal.SIGSTOP)  # accepts connections, answers nothing
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError):
            a.append("s", 1, [b"e1"])
        assert time.monotonic() - started < 5
        # What the relay does then: end it for this worker's readers.
        a.end_locally("s", [b"local end"])
        a.unregister("s")
        assert a.read("s", 0, 0) == ([b"e0", b"local end"], True)
    finally:
        redis_crashable.proc.send_signal(signal.SIGCONT)
    # Back: the same end is written to Redis, for every other worker's readers.
    assert read_until(b, "s", 0, lambda e: len(e) >= 2) == [b"e0", b"local end"]
    assert b.status("s") == (2, True)


def test_the_follow_loop_comes_back_after_its_connection_is_killed(
        workers: Callable[..., RedisStore], redis_server: RedisServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis_follow, "POLL", 60.0)  # only pub/sub can wake the reader
    a, b = workers(), workers()
    a.create(meta(a), [b"e0"])
    producer = Producer()
    a.register("s", producer)
    assert b.read("s", 0, 0) == ([b"e0"], False)
    wait_subscribed(redis_server.url, b.keys.notify("s"))
    # Every pub/sub connection on the server, A's and B's (other tests' too: they recover).
    assert int(redis_server.cli("CLIENT", "KILL", "TYPE", "pubsub").strip() or 0) >= 2
    # A notification published while B reconnects is caught up when it subscribes again.
    a.append("s", 1, [b"e1"])
    assert read_until(b, "s", 1, lambda e: bool(e), timeout=5) == [b"e1"]
    got: list[list[bytes]] = []
    t = threading.Thread(target=lambda: got.append(read_until(b, "s", 2, bool, timeout=5)))
    t.start()
    wait_subscribed(redis_server.url, b.keys.notify("s"))  # again, after the kill
    a.append("s", 2, [b"e2"])
    t.join(10)
    assert got == [[b"e2"]]
    b.cancel("s")
    assert producer.cancelled.wait(5)


@pytest.mark.parametrize(("args", "warned"), [
    (("--maxmemory-policy", "allkeys-lru"), True),
    (("--maxmemory-policy", "volatile-lru"), False),
    (("--rename-command", "CONFIG", ""), False),  # managed Redis: CONFIG is not allowed
], ids=["allkeys", "volatile", "no-config"])
def test_a_warning_when_redis_may_evict_live_streams(
        caplog: pytest.LogCaptureFixture, args: tuple[str, ...], warned: bool) -> None:
    server = RedisServer(None, *args)
    store = None
    try:
        with caplog.at_level(logging.WARNING, logger="streaming.stores"):
            store = RedisStore(Settings(REDIS_URL=server.url))
            store.create(meta(store), [b"e0"])  # under a lease: the first renewal checks
            assert store.lease.policy_checked.wait(5)
        assert ("maxmemory-policy is allkeys-lru" in caplog.text) is warned
        assert store.read("s", 0, 0) == ([b"e0"], False)
    finally:
        if store is not None:
            store.close()
        server.close()


def test_rediss_and_unix_urls(tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path)
    tls_port = free_port()
    sock = tmp_path / "redis.sock"
    server = RedisServer(None, "--tls-port", str(tls_port), "--tls-cert-file",
                         str(tls["server.crt"]), "--tls-key-file", str(tls["server.key"]),
                         "--tls-ca-cert-file", str(tls["ca.crt"]), "--tls-auth-clients", "no",
                         "--unixsocket", str(sock), "--unixsocketperm", "700")
    try:
        for url in (f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={tls['ca.crt']}",
                    f"unix://{sock}?db=0"):
            store = RedisStore(Settings(REDIS_URL=url, REDIS_PREFIX=f"t{secrets.token_hex(4)}:"))
            try:
                assert store.ping()
                store.create(meta(store), [b"e0"])
                store.append("s", 1, [b"end"], end=True)
                assert store.read("s", 0, 0) == ([b"e0", b"end"], True)
            finally:
                store.close()
        # TLS indeed: that port does not speak plain Redis.
        plain = RedisStore(Settings(REDIS_URL=f"redis://127.0.0.1:{tls_port}/0"), retry_for=0.2)
        try:
            assert not plain.ping()
        finally:
            plain.close()
    finally:
        server.close()


def test_a_release_redis_missed_is_made_once_it_is_back(
        workers: Callable[..., RedisStore], redis_crashable: RedisServer) -> None:
    a = workers(redis_crashable.url)
    a.create(meta(a), [b"e0"])
    producer = Producer()
    a.register("s", producer)
    assert a.acquire(("followers", "s"), 5)
    assert a.acquire(("connections", "owner"), 5)
    assert redis_crashable.proc is not None
    redis_crashable.proc.send_signal(signal.SIGSTOP)
    try:
        a.release(("followers", "s"))  # no error for the caller: it is the store's to finish
        a.release(("connections", "owner"))
    finally:
        redis_crashable.proc.send_signal(signal.SIGCONT)
    assert producer.presence.wait(10)  # made when Redis answered again
    assert a.count(("followers", "s")) == 0
    assert a.count(("connections", "owner")) == 0


def test_connections_are_bounded_whatever_the_followers(
        workers: Callable[..., RedisStore], redis_server: RedisServer) -> None:
    a, b = workers(), workers(max_connections=4)
    for i in range(40):
        a.create(meta(a, f"s{i}"), [b"e0"])
    results: list[list[bytes]] = []

    def follow(i: int) -> None:
        results.append(read_until(b, f"s{i}", 0, lambda e: len(e) == 2, timeout=15))

    threads = [threading.Thread(target=follow, args=(i,)) for i in range(40) for _ in range(2)]
    for t in threads:
        t.start()
    for i in range(40):  # 80 readers wait on 40 remote streams
        wait_subscribed(redis_server.url, b.keys.notify(f"s{i}"))
    held = redis_server.cli("CLIENT", "LIST").count(f"name=llmstream-{b.worker_id}")
    for i in range(40):
        a.append(f"s{i}", 1, [b"e1"])
    for t in threads:
        t.join(20)
    assert results == [[b"e0", b"e1"]] * 80
    assert 1 <= held <= 5  # its pool of 4 and its one pub/sub connection


def test_a_stream_redis_lost_ends_with_store_unavailable_for_its_readers(
        workers: Callable[..., RedisStore], redis_crashable: RedisServer) -> None:
    a = workers(redis_crashable.url)
    b = workers(redis_crashable.url)
    a.create(meta(a), [b"e0"])
    assert b.read("s", 0, 0) == ([b"e0"], False)
    got: list[list[bytes]] = []
    t = threading.Thread(target=lambda: got.append(
        read_until(b, "s", 1, lambda e: False, timeout=10)))
    t.start()
    assert redis_crashable.cli("FLUSHALL").strip() == "OK"  # as a restart without persistence
    t.join(15)
    assert got and len(got[0]) == 1
    assert got[0][0].startswith(b"id: 1\n") and b'"code":"store_unavailable"' in got[0][0]
    with pytest.raises(StoreUnavailableError):  # and its producer is told as much
        a.append("s", 1, [b"e1"])


@pytest.mark.parametrize("cluster", [False, True], ids=["redis", "cluster"])
def test_unreachable_at_start(cluster: bool) -> None:
    # The worker starts; it is not ready, and starts are refused in good time.
    store = RedisStore(Settings(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
                                REDIS_CLUSTER=cluster))
    try:
        assert not store.ping()
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError):
            store.create(meta(store), [b"e0"])
        with pytest.raises(StoreUnavailableError):
            store.read("s", 0, 1)
        assert time.monotonic() - started < 8
    finally:
        store.close()
