"""The service under gunicorn's gevent worker, over real sockets, on the OpenAI-wire simulator:
the stream's shape, first bytes, heartbeats, buffering, resume and cancel."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import Service, openai_env
from conftest import sim_body as body
from sseclient import (
    Comment,
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
from upstream_sim import DEFAULT_TEXT


@pytest.fixture(scope="module", params=["memory", "redis"])
def store_service(request: pytest.FixtureRequest, upstream: Any,
                  relay_service: Service) -> Iterator[Service]:
    """The named subset of these tests that runs on both stores: the module's service (memory)
    and the same settings on Redis."""
    if request.param == "memory":
        yield relay_service
        return
    redis_server = request.getfixturevalue("redis_server")
    service = Service(openai_env(upstream, HEARTBEAT_INTERVAL=1, FIRST_TOKEN_TIMEOUT=5,
                                 IDLE_TIMEOUT=3, STREAM_TIMEOUT=30, RESUME_GRACE=2,
                                 STREAM_TTL=30, REDIS_URL=redis_server.url,
                                 REDIS_PREFIX=f"stream-tests-{id(request)}:"))
    yield service
    service.stop()


def test_a_stream_end_to_end(store_service: Service, sim: Any) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    stream = start(store_service.url, {"messages": messages, "temperature": 0.3,
                                       "max_tokens": 100})
    assert stream.status == 200
    headers = {k.lower(): v for k, v in stream.headers.items()}
    assert headers["content-type"] == "text/event-stream; charset=utf-8"
    assert headers["cache-control"] == "no-cache"
    assert headers["x-accel-buffering"] == "no"
    assert "content-length" not in headers and "content-encoding" not in headers
    stream_id = headers["x-stream-id"]
    assert len(stream_id) >= 22  # 128 bits in base64url
    events = collect(stream)
    assert bytes(stream.raw).startswith((b"retry: ", b":"))
    check_well_formed(events)
    start_event = events[0].json
    assert len(start_event.pop("resume_token")) >= 22  # 128 bits in base64url
    assert start_event == {"type": "start", "stream_id": stream_id, "model": "sim-model"}
    assert text_of(events) == DEFAULT_TEXT
    done = events[-2].json
    assert done["type"] == "done" and done["finish_reason"] == "stop"
    assert set(done["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens"}
    assert done["usage"]["completion_tokens"] > 0
    # What the upstream was asked: the messages as sent, usage always requested.
    (record,) = sim.requests
    assert record.body["messages"] == messages
    assert record.body["stream"] is True
    assert record.body["stream_options"] == {"include_usage": True}
    assert record.body["temperature"] == 0.3 and record.body["max_tokens"] == 100
    assert record.body["model"] == "sim-model"
    # Read raw as it comes: never a compressed stream.
    assert record.headers["Accept-Encoding"] == "identity"


def test_first_bytes_and_heartbeats_before_the_upstream_answers(store_service: Service,
                                                                sim: Any) -> None:
    sent = time.monotonic()
    stream = start(store_service.url, body(headers_delay=2.5, tokens=["late"]))
    # Headers (and so the status) arrive only with the first body bytes under gunicorn.
    assert stream.status == 200
    items = []
    for item in stream:
        items.append(item)
        if isinstance(item, Event) and item.data == "[DONE]":
            break
    stream.close()
    first = items[0]
    assert first.at - sent < 1.5, "the first bytes waited for the upstream"
    first_token = next(i for i in items if isinstance(i, Event) and i.data != "[DONE]"
                       and i.json["type"] == "token")
    pings = [i for i in items if isinstance(i, Comment) and i.text == "ping"
             and first.at < i.at < first_token.at]
    # HEARTBEAT_INTERVAL=1 and 2.5 s of silence: at least one heartbeat before the first token.
    assert pings, items
    assert first_token.json["token"] == "late"


def test_heartbeat_rhythm_while_the_upstream_is_silent(relay_service: Service, sim: Any) -> None:
    stream = start(relay_service.url, body(tokens=3, stall_after=1))
    pings: list[float] = []
    for item in stream:
        if isinstance(item, Comment) and item.text == "ping":
            pings.append(item.at)
            if len(pings) == 3:
                break
    stream.close()
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert all(0.5 < gap < 3.0 for gap in gaps), gaps


def test_first_token_is_not_held_by_the_buffer(relay_service: Service, sim: Any) -> None:
    # Deltas 0.4 s apart: a buffer that held the first would show it with the second.
    stream = start(relay_service.url, body(tokens=["One ", "two ", "three."], delay=0.4))
    events = collect(stream)
    tokens = [e for e in events[:-1] if e.json["type"] == "token"]
    assert tokens[0].json["token"] == "One "
    assert tokens[1].at - tokens[0].at > 0.2


def test_buffer_joins_fast_deltas(service_factory: Any, sim: Any) -> None:
    service = service_factory(openai_env(sim, BUFFER_MAX_TOKENS=4, BUFFER_MAX_DELAY_MS=1000))
    words = [f"w{i} " for i in range(40)]
    events = collect(start(service.url, body(tokens=words)))
    tokens = [e.json["token"] for e in events[:-1] if e.json["type"] == "token"]
    assert "".join(tokens) == "".join(words)
    assert tokens[0] == "w0 "
    assert len(tokens) <= 1 + 10 + 1  # the first alone, then groups of at most four
    assert max(len(t.split()) for t in tokens) <= 4


def test_buffer_max_tokens_one_sends_every_delta(service_factory: Any, sim: Any) -> None:
    service = service_factory(openai_env(sim, BUFFER_MAX_TOKENS=1))
    words = [f"w{i} " for i in range(30)]
    events = collect(start(service.url, body(tokens=words)))
    assert [e.json["token"] for e in events[:-1] if e.json["type"] == "token"] == words


def test_buffer_flushes_on_its_deadline(service_factory: Any, sim: Any) -> None:
    service = service_factory(openai_env(sim, BUFFER_MAX_TOKENS=50, BUFFER_MAX_DELAY_MS=100))
    stream = start(service.url, body(tokens=["a ", "b ", "c ", "d "], stall_after=4))
    tokens: list[Event] = []
    for event in stream.events():
        if event.json["type"] == "token":
            tokens.append(event)
            if "".join(e.json["token"] for e in tokens) == "a b c d ":
                break
    stream.close()
    # "a " at once, then "b c d " after at most 100 ms although the upstream went silent.
    assert [e.json["token"] for e in tokens] == ["a ", "b c d "]


def test_resume_after_a_cut_gives_the_exact_text(store_service: Service, sim: Any) -> None:
    words = [f"word{i} " for i in range(60)]
    stream = start(store_service.url, body(tokens=words, delay=0.02))
    stream_id = stream.headers["X-Stream-Id"]
    seen: list[Event] = []
    for event in stream.events():
        seen.append(event)
        if len(seen) == 5:
            break
    stream.close()  # the connection drops mid-answer
    last_id = int(seen[-1].id)  # type: ignore[arg-type]
    rest = collect(attach(store_service.url, stream_id, last_id))
    check_well_formed(rest, first_seq=last_id + 1)
    assert text_of(seen) + text_of(rest) == "".join(words)
    # And once more from the middle, by query parameter, after the end.
    status, _, raw = request(store_service.url, "GET",
                             f"/api/chat/stream/{stream_id}?last_event_id=2")
    assert status == 200
    assert b"\nid: 3\n" in b"\n" + raw and b"\nid: 2\n" not in b"\n" + raw
    assert len(sim.requests) == 1


def test_attach_from_the_start_and_past_the_end(store_service: Service, sim: Any) -> None:
    first = collect(start(store_service.url, body(tokens=5)))
    stream_id = first[0].json["stream_id"]
    again = collect(attach(store_service.url, stream_id))
    assert [(e.id, e.data) for e in again] == [(e.id, e.data) for e in first]
    last = int(first[-2].id)  # type: ignore[arg-type]
    # At or past the terminal event: 204 and no body, so an EventSource stops reconnecting.
    for after in (last, last + 100):
        past = attach(store_service.url, stream_id, after)
        assert past.status == 204
        assert past.response.read() == b""
        past.conn.close()
    # One before it: the terminal event, then [DONE].
    tail = collect(attach(store_service.url, stream_id, last - 1))
    assert [e.id for e in tail] == [str(last), None]


def test_several_clients_follow_one_stream(store_service: Service, sim: Any) -> None:
    words = [f"t{i} " for i in range(30)]
    origin = start(store_service.url, body(tokens=words, delay=0.03))
    results = follow_together(origin, [store_service.url] * 3)
    assert len(results) == 4
    for events in results:
        check_well_formed(events)
        assert text_of(events) == "".join(words)


def test_live_attach_gets_the_past_then_the_live_events(store_service: Service,
                                                       sim: Any) -> None:
    origin = start(store_service.url, body(tokens=8, stall_after=4))
    stream_id = origin.headers["X-Stream-Id"]
    seen: list[Event] = []
    for event in origin.events():
        seen.append(event)
        if text_of(seen) == "t0 t1 t2 t3 ":
            break
    follower = attach(store_service.url, stream_id, 0)
    status, _, raw = request(store_service.url, "POST", f"/api/chat/stream/{stream_id}/cancel")
    assert status == 202 and json.loads(raw) == {"status": "cancelling"}
    events = collect(follower)
    check_well_formed(events, first_seq=1)
    assert events[-2].json == {"type": "done", "finish_reason": "cancelled", "usage": None}
    assert text_of(events) == "t0 t1 t2 t3 "
    origin_events = collect(origin)
    assert origin_events[-2].json["finish_reason"] == "cancelled"


def test_cancel_closes_the_upstream_within_a_second(store_service: Service, sim: Any) -> None:
    stream = start(store_service.url, body(tokens=50, stall_after=3))
    stream_id = stream.headers["X-Stream-Id"]
    got = []
    for event in stream.events():
        got.append(event)
        if event.json["type"] == "token" and text_of(got) == "t0 t1 t2 ":
            break
    (record,) = sim.requests
    asked = time.monotonic()
    status, _, _ = request(store_service.url, "POST", f"/api/chat/stream/{stream_id}/cancel")
    assert status == 202
    assert record.wait_closed(5)
    assert record.closed_at - asked < 1.0
    rest = collect(stream)
    assert rest[-2].json["finish_reason"] == "cancelled"
    # Cancelling an ended stream changes nothing.
    status, _, raw = request(store_service.url, "POST", f"/api/chat/stream/{stream_id}/cancel")
    assert status == 202 and json.loads(raw) == {"status": "cancelling"}
    again = collect(attach(store_service.url, stream_id))
    assert [e.data for e in again] == [e.data for e in got + rest]


def test_a_client_leaving_detaches_and_grace_cancels(store_service: Service, sim: Any) -> None:
    # RESUME_GRACE=2: the stream survives the departure, then is cancelled.
    stream = start(store_service.url, body(tokens=50, stall_after=2))
    stream_id = stream.headers["X-Stream-Id"]
    until_first_token(stream)
    (record,) = sim.requests
    left = time.monotonic()
    stream.close()
    assert not record.wait_closed(1.0), "a departure must not cancel at once"
    assert record.wait_closed(10)
    assert 1.5 < record.closed_at - left < 6.0
    events = collect(attach(store_service.url, stream_id))
    assert events[-2].json == {"type": "done", "finish_reason": "cancelled", "usage": None}
    assert text_of(events) == "t0 t1 "


def test_returning_within_grace_keeps_the_stream(store_service: Service, sim: Any) -> None:
    words = [f"w{i} " for i in range(40)]
    stream = start(store_service.url, body(tokens=words, delay=0.05))
    stream_id = stream.headers["X-Stream-Id"]
    seen = []
    for event in stream.events():
        seen.append(event)
        if len(seen) == 3:
            break
    stream.close()
    rest = collect(attach(store_service.url, stream_id, seen[-1].id))
    assert rest[-2].json["finish_reason"] == "stop"
    assert text_of(seen) + text_of(rest) == "".join(words)


def test_resume_grace_zero_cancels_as_soon_as_noticed(service_factory: Any, sim: Any) -> None:
    service = service_factory(openai_env(sim, RESUME_GRACE=0, HEARTBEAT_INTERVAL=30))
    stream = start(service.url, body(tokens=50, stall_after=2))
    until_first_token(stream)
    (record,) = sim.requests
    left = time.monotonic()
    stream.close()
    # Heartbeats are 30 s apart: only the socket watch can notice this quickly.
    assert record.wait_closed(10)
    assert record.closed_at - left < 2.0


def test_threaded_server_without_gevent(service_factory: Any, sim: Any) -> None:
    service = service_factory(openai_env(sim, HEARTBEAT_INTERVAL=1), threaded=True)
    events = collect(start(service.url, body(tokens=12)))
    check_well_formed(events)
    assert text_of(events) == "".join(f"t{i} " for i in range(12))
    stream = start(service.url, body(tokens=50, stall_after=2))
    stream_id = stream.headers["X-Stream-Id"]
    until_first_token(stream)
    status, _, _ = request(service.url, "POST", f"/api/chat/stream/{stream_id}/cancel")
    assert status == 202
    assert sim.requests[-1].wait_closed(5)
    assert collect(stream)[-2].json["finish_reason"] == "cancelled"


@pytest.mark.parametrize("count", [300])
def test_hundreds_of_concurrent_streams_on_one_worker(service_factory: Any, sim: Any,
                                                      count: int) -> None:
    service = service_factory(openai_env(sim))
    words = [f"w{i} " for i in range(20)]
    results: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def one() -> None:
        try:
            text = text_of(collect(start(service.url, body(tokens=words, delay=0.05),
                                         timeout=60)))
            with lock:
                results.append(text)
        except BaseException as exc:
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert not errors, errors[:3]
    assert results == ["".join(words)] * count
    _, _, raw = request(service.url, "GET", "/metrics")
    assert f"llm_streams_ended_total{{outcome=\"stop\"}} {float(count)}" in raw.decode()


def test_a_huge_last_event_id_is_past_the_end(relay_service: Service, sim: Any) -> None:
    events = collect(start(relay_service.url, body(tokens=2)))
    stream_id = events[0].json["stream_id"]
    past = attach(relay_service.url, stream_id, "9" * 40)
    assert past.status == 204
    past.conn.close()


def test_ttl_zero_still_ends_every_response_with_done(service_factory: Any, sim: Any) -> None:
    service = service_factory(openai_env(sim, STREAM_TTL=0))
    events = collect(start(service.url, body(tokens=5)))
    check_well_formed(events)
    assert text_of(events) == "t0 t1 t2 t3 t4 "


def test_upstream_connection_is_reused_after_a_complete_answer(relay_service: Service,
                                                               sim: Any) -> None:
    for _ in range(3):
        assert text_of(collect(start(relay_service.url, body(tokens=3)))) == "t0 t1 t2 "
    assert all(r.wait_done(5) for r in sim.requests)
    # The same client port each time: one TCP (and, upstream, TLS) handshake for all three.
    assert len({r.peer for r in sim.requests}) == 1
