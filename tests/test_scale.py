"""Scale out (issue 6): two service instances of two gevent workers each, sharing one real
redis-server, on the OpenAI-wire simulator. Whatever instance and worker a request lands on,
it resumes, follows and cancels any stream; presence counts on every instance; a killed
instance's streams end with `producer_lost`; Redis lost and back; every key keeps a TTL."""

from __future__ import annotations

import os
import secrets
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from conftest import Service, free_port, openai_env
from conftest import sim_body as body
from nginxfix import NGINX
from redisfix import RedisCluster, RedisServer
from sseclient import (
    Event,
    attach,
    check_well_formed,
    collect,
    follow_together,
    request,
    start,
    text_of,
    until_first_token,
)

# IDLE_TIMEOUT well above the waits below: a stalled upstream must end by grace, not idling.
QUICK = {"HEARTBEAT_INTERVAL": 1, "FIRST_TOKEN_TIMEOUT": 5, "IDLE_TIMEOUT": 20,
         "STREAM_TIMEOUT": 60, "RESUME_GRACE": 2, "STREAM_TTL": 30}


def redis_env(upstream: Any, url: str, prefix: str, **extra: Any) -> dict[str, Any]:
    return openai_env(upstream, REDIS_URL=url, REDIS_PREFIX=prefix, **{**QUICK, **extra})


@pytest.fixture(scope="module")
def prefix() -> str:
    return f"scale{secrets.token_hex(3)}:"


@pytest.fixture(scope="module")
def pair(upstream: Any, redis_server: RedisServer, prefix: str) -> Iterator[list[Service]]:
    """Two instances of two workers each on one Redis."""
    services: list[Service] = []
    try:
        for _ in range(2):
            services.append(Service(redis_env(upstream, redis_server.url, prefix), workers=2))
        yield services
    finally:
        for service in services:
            service.stop()


def test_a_cut_stream_resumes_on_the_other_instance(pair: list[Service], sim: Any) -> None:
    a, b = pair
    words = [f"word{i} " for i in range(60)]
    stream = start(a.url, body(tokens=words, delay=0.02))
    stream_id = stream.headers["X-Stream-Id"]
    seen: list[Event] = []
    for event in stream.events():
        seen.append(event)
        if len(seen) == 5:
            break
    stream.close()
    last_id = int(seen[-1].id)  # type: ignore[arg-type]
    rest = collect(attach(b.url, stream_id, last_id))
    check_well_formed(rest, first_seq=last_id + 1)
    assert text_of(seen) + text_of(rest) == "".join(words)
    assert rest[-2].json["finish_reason"] == "stop"
    assert len(sim.requests) == 1


def test_followers_on_both_instances_get_every_event(pair: list[Service], sim: Any) -> None:
    a, b = pair
    words = [f"t{i} " for i in range(40)]
    origin = start(a.url, body(tokens=words, delay=0.03))
    results = follow_together(origin, [a.url, b.url, b.url])
    assert len(results) == 4
    for events in results:
        check_well_formed(events)
        assert text_of(events) == "".join(words)
    assert len({tuple(e.data for e in events) for events in results}) == 1


def test_a_cancel_on_the_other_instance_closes_the_upstream_within_a_second(
        pair: list[Service], sim: Any) -> None:
    a, b = pair
    stream = start(a.url, body(tokens=50, stall_after=3))
    stream_id = stream.headers["X-Stream-Id"]
    got: list[Event] = []
    for event in stream.events():
        got.append(event)
        if text_of(got) == "t0 t1 t2 ":
            break
    (record,) = sim.requests
    asked = time.monotonic()
    status, _, _ = request(b.url, "POST", f"/api/chat/stream/{stream_id}/cancel")
    assert status == 202
    assert record.wait_closed(5)
    assert record.closed_at - asked < 1.0
    rest = collect(stream)
    assert rest[-2].json == {"type": "done", "finish_reason": "cancelled", "usage": None}


def test_grace_cancels_only_when_no_follower_remains_on_any_instance(
        pair: list[Service], sim: Any) -> None:
    a, b = pair
    stream = start(a.url, body(tokens=50, stall_after=2))
    stream_id = stream.headers["X-Stream-Id"]
    until_first_token(stream)
    (record,) = sim.requests
    follower = attach(b.url, stream_id, 0)
    assert follower.status == 200
    until_first_token(follower)
    stream.close()  # the only client on A leaves; B's still follows
    assert not record.wait_closed(4.0), "a follower on the other instance keeps it (grace 2 s)"
    left = time.monotonic()
    follower.close()
    assert record.wait_closed(10)
    assert 1.5 < record.closed_at - left < 6.0
    events = collect(attach(a.url, stream_id))
    assert events[-2].json == {"type": "done", "finish_reason": "cancelled", "usage": None}


def test_a_killed_instance_gives_its_followers_producer_lost(
        pair: list[Service], upstream: Any, redis_server: RedisServer, prefix: str,
        sim: Any) -> None:
    _, b = pair
    doomed = Service(redis_env(upstream, redis_server.url, prefix))
    try:
        stream = start(doomed.url, body(tokens=50, stall_after=2))
        stream_id = stream.headers["X-Stream-Id"]
        until_first_token(stream)
        follower = attach(b.url, stream_id, 0)
        seen = until_first_token(follower)
        killed = time.monotonic()
        os.killpg(doomed.proc.pid, signal.SIGKILL)  # master and worker: no goodbye
        events = seen + collect(follower)
        assert time.monotonic() - killed < 10
    finally:
        stream.close()
        doomed.stop()
    assert events[-2].json["type"] == "error" and events[-2].json["code"] == "producer_lost"
    check_well_formed(events, first_seq=1)  # attached after event 0
    # Written once, in Redis: a resume anywhere gets the same end.
    again = collect(attach(b.url, stream_id, 0))
    assert [e.data for e in again] == [e.data for e in events]


def test_redis_lost_and_back(upstream: Any, redis_crashable: RedisServer, sim: Any) -> None:
    service = Service(redis_env(upstream, redis_crashable.url, "lost:"))
    try:
        stream = start(service.url, body(tokens=400, delay=0.02))
        seen = until_first_token(stream)
        redis_crashable.stop()
        lost = time.monotonic()
        # Its next append fails (after 2 s of retries): its client learns why, then [DONE].
        events = seen + collect(stream)
        assert time.monotonic() - lost < 10
        check_well_formed(events)
        assert events[-2].json["type"] == "error"
        assert events[-2].json["code"] == "store_unavailable"
        status, headers, raw = request(service.url, "POST", "/api/chat/stream",
                                       body(tokens=2))
        assert status == 503 and b"store_unavailable" in raw
        assert headers.get("retry-after") == "1"
        assert request(service.url, "GET", "/readyz")[0] == 503
        redis_crashable.start()
        deadline = time.monotonic() + 15
        while request(service.url, "GET", "/readyz")[0] != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)  # Redis is coming back: nothing to wait on but the probe
        events = collect(start(service.url, body(tokens=3)))
        check_well_formed(events)
        assert text_of(events) == "t0 t1 t2 "
    finally:
        service.stop()


def test_every_key_has_a_ttl(pair: list[Service], redis_server: RedisServer, prefix: str,
                             sim: Any) -> None:
    a, b = pair
    collect(start(a.url, body(tokens=3)))
    running = start(b.url, body(tokens=50, stall_after=2))
    until_first_token(running)
    client = redis.Redis.from_url(redis_server.url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*"))
        assert len(keys) >= 5
        assert all(client.pttl(k) > 0 for k in keys), {k: client.pttl(k) for k in keys}
    finally:
        client.close()
        running.close()


@pytest.mark.nginx
@pytest.mark.skipif(not os.path.exists(NGINX), reason="nginx is not installed")
def test_through_nginx_balancing_both_instances(pair: list[Service], nginx_factory: Any,
                                                sim: Any) -> None:
    a, b = pair
    proxy = nginx_factory([a.port, b.port])  # round robin, no sticky sessions
    words = [f"n{i} " for i in range(60)]
    stream = start(proxy.url, body(tokens=words, delay=0.02))
    stream_id = stream.headers["X-Stream-Id"]
    seen: list[Event] = []
    for event in stream.events():
        seen.append(event)
        if len(seen) == 5:
            break
    stream.close()
    # Resumed twice: round robin sends one of them to the other instance.
    for _ in range(2):
        rest = collect(attach(proxy.url, stream_id, seen[-1].id))
        check_well_formed(rest, first_seq=int(seen[-1].id) + 1)  # type: ignore[arg-type]
        assert text_of(seen) + text_of(rest) == "".join(words)
    origin = start(proxy.url, body(tokens=50, stall_after=3))
    stream_id = origin.headers["X-Stream-Id"]
    until_first_token(origin)
    followers = [attach(proxy.url, stream_id, 0) for _ in range(3)]
    for follower in followers:
        until_first_token(follower)
    record = sim.requests[-1]
    asked = time.monotonic()
    status, _, _ = request(proxy.url, "POST", f"/api/chat/stream/{stream_id}/cancel")
    assert status == 202
    assert record.wait_closed(5)
    assert record.closed_at - asked < 1.0
    for response in [origin, *followers]:
        assert collect(response)[-2].json["finish_reason"] == "cancelled"


def test_on_a_redis_cluster_start_on_one_instance_resume_and_cancel_on_another(
        upstream: Any, redis_cluster: RedisCluster, sim: Any) -> None:
    env = redis_env(upstream, redis_cluster.url, "cl:", REDIS_CLUSTER=1)
    a = Service(env)
    b = Service({**env, "REDIS_URL": redis_cluster.nodes[2].url})
    try:
        stream = start(a.url, body(tokens=50, stall_after=3))
        stream_id = stream.headers["X-Stream-Id"]
        seen: list[Event] = []
        for event in stream.events():
            seen.append(event)
            if text_of(seen) == "t0 t1 t2 ":
                break
        stream.close()
        resumed = attach(b.url, stream_id, seen[1].id)
        (record,) = sim.requests
        asked = time.monotonic()
        status, _, _ = request(b.url, "POST", f"/api/chat/stream/{stream_id}/cancel")
        assert status == 202
        assert record.wait_closed(5)
        assert record.closed_at - asked < 1.0
        rest = collect(resumed)
        check_well_formed(rest, first_seq=int(seen[1].id) + 1)  # type: ignore[arg-type]
        assert text_of(seen[:2]) + text_of(rest) == "t0 t1 t2 "
        assert rest[-2].json["finish_reason"] == "cancelled"
    finally:
        a.stop()
        b.stop()


def test_a_threaded_instance_shares_streams_with_gevent_ones(
        pair: list[Service], upstream: Any, redis_server: RedisServer, prefix: str,
        sim: Any) -> None:
    _, b = pair
    threaded = Service(redis_env(upstream, redis_server.url, prefix), threaded=True)
    try:
        words = [f"x{i} " for i in range(30)]
        stream = start(threaded.url, body(tokens=words, delay=0.02))
        stream_id = stream.headers["X-Stream-Id"]
        seen = until_first_token(stream)
        stream.close()
        rest = collect(attach(b.url, stream_id, seen[-1].id))
        assert text_of(seen) + text_of(rest) == "".join(words)
        # And the other way: started on gevent, followed and cancelled on the threaded one.
        origin = start(b.url, body(tokens=50, stall_after=2))
        stream_id = origin.headers["X-Stream-Id"]
        until_first_token(origin)
        follower = attach(threaded.url, stream_id, 0)
        until_first_token(follower)
        record = sim.requests[-1]
        status, _, _ = request(threaded.url, "POST", f"/api/chat/stream/{stream_id}/cancel")
        assert status == 202
        assert record.wait_closed(5)
        assert collect(follower)[-2].json["finish_reason"] == "cancelled"
        assert collect(origin)[-2].json["finish_reason"] == "cancelled"
    finally:
        threaded.stop()


def test_redis_unreachable_at_start(upstream: Any, sim: Any) -> None:
    service = Service(redis_env(upstream, f"redis://127.0.0.1:{free_port()}/0", "none:"))
    try:
        status, _, raw = request(service.url, "GET", "/readyz")
        assert status == 503 and b'"store":false' in raw
        status, headers, raw = request(service.url, "POST", "/api/chat/stream", body(tokens=2))
        assert status == 503 and b"store_unavailable" in raw
        assert headers.get("retry-after") == "1"
        assert sim.requests == []  # refused before the upstream is asked
    finally:
        service.stop()
