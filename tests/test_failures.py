"""Upstream failures, retries and timeouts, as the contract maps them to `error` events."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import Service, free_port, openai_env, sim_prompt
from sseclient import collect, start, text_of
from upstream_sim import SECRET

API_KEY = "sk-test-SECRETKEY-0123456789"


@pytest.fixture(scope="module")
def service(upstream: Any) -> Iterator[Service]:
    svc = Service(openai_env(upstream, HEARTBEAT_INTERVAL=1, FIRST_TOKEN_TIMEOUT=3,
                             IDLE_TIMEOUT=1.5, STREAM_TIMEOUT=6, UPSTREAM_RETRIES=2))
    yield svc
    log = svc.log()
    svc.stop()
    # Nothing the upstream said in its error bodies, and no key, ever reaches a log line.
    assert SECRET not in log and "sk-live" not in log
    assert API_KEY not in log


def run(service: Service, **script: Any) -> tuple[list[Any], bytes]:
    stream = start(service.url, {"messages": sim_prompt(**script)})
    events = collect(stream)
    raw = bytes(stream.raw)
    assert SECRET.encode() not in raw and b"sk-live" not in raw and API_KEY.encode() not in raw
    assert events[-1].data == "[DONE]"
    return events, raw


def terminal(events: list[Any]) -> dict[str, Any]:
    return events[-2].json


@pytest.mark.parametrize(
    ("status", "code"),
    [(401, "upstream_auth"), (403, "upstream_auth"), (400, "upstream_error"),
     (404, "upstream_error"), (422, "upstream_error")],
)
def test_refusals_are_not_retried(service: Service, sim: Any, status: int, code: str) -> None:
    events, _ = run(service, status=status)
    assert terminal(events)["type"] == "error"
    assert terminal(events)["code"] == code
    assert terminal(events)["message"]
    assert len(sim.requests) == 1


@pytest.mark.parametrize(
    ("status", "code"),
    [(429, "rate_limited"), (500, "upstream_unavailable"), (503, "upstream_unavailable"),
     (408, "upstream_error"), (409, "upstream_error")],
)
def test_transient_failures_are_retried_then_reported(service: Service, sim: Any, status: int,
                                                      code: str) -> None:
    events, _ = run(service, status=status, retry_after=0.1)
    event = terminal(events)
    assert (event["type"], event["code"]) == ("error", code)
    assert event["retry_after"] == pytest.approx(0.1)
    assert len(sim.requests) == 3  # the first try and UPSTREAM_RETRIES=2


@pytest.mark.parametrize("status", [429, 500, 408])
def test_a_retry_that_succeeds_is_invisible(service: Service, sim: Any, status: int) -> None:
    events, _ = run(service, id=f"flaky-{status}", status=status, fail_times=2, tokens=4)
    assert terminal(events)["type"] == "done"
    assert text_of(events) == "t0 t1 t2 t3 "
    assert [r.status for r in sim.requests] == [status, status, 200]


def test_retry_after_beyond_the_first_token_budget_is_not_waited(service: Service,
                                                                 sim: Any) -> None:
    started = time.monotonic()
    events, _ = run(service, status=429, retry_after=30)
    assert terminal(events)["code"] == "rate_limited"
    assert terminal(events)["retry_after"] == 30
    assert len(sim.requests) == 1
    assert time.monotonic() - started < 3


def test_unreachable_upstream(service_factory: Any, sim: Any) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    svc = service_factory(openai_env(sim, OPENAI_BASE_URL=dead, UPSTREAM_RETRIES=1))
    events = collect(start(svc.url, {"messages": [{"role": "user", "content": "hi"}]}))
    assert terminal(events)["code"] == "upstream_unavailable"


def test_cut_before_the_first_delta_is_retried(service: Service, sim: Any) -> None:
    events, _ = run(service, drop_after=0)
    assert terminal(events)["code"] == "upstream_error"
    assert len(sim.requests) == 3


def test_cut_after_deltas_keeps_what_was_sent(service: Service, sim: Any) -> None:
    events, _ = run(service, tokens=6, drop_after=3)
    assert text_of(events) == "t0 t1 t2 "
    assert terminal(events)["code"] == "upstream_error"
    assert len(sim.requests) == 1


@pytest.mark.parametrize("style", ["openai", "vllm"])
def test_in_stream_error_payload_is_an_error_not_text(service: Service, sim: Any,
                                                      style: str) -> None:
    events, raw = run(service, tokens=5, error_after=2, error_style=style)
    assert text_of(events) == "t0 t1 "
    assert terminal(events)["code"] == "upstream_error"
    assert b"SECRET" not in raw


def test_no_first_token_in_time(service: Service, sim: Any) -> None:
    started = time.monotonic()
    events, _ = run(service, first_delay=30, keepalive_comments=True, tokens=2)
    # Keep-alive comments from the upstream are not deltas: they do not stop the clock.
    assert terminal(events)["code"] == "timeout"
    assert 2.5 < time.monotonic() - started < 8
    assert sim.requests[0].wait_closed(5)


def test_no_headers_in_time(service: Service, sim: Any) -> None:
    events, _ = run(service, headers_delay=30)
    assert terminal(events)["code"] == "timeout"
    assert sim.requests[-1].wait_closed(5)


def test_idle_upstream_times_out_and_keeps_the_text(service: Service, sim: Any) -> None:
    events, _ = run(service, tokens=10, stall_after=3, keepalive_comments=True)
    assert text_of(events) == "t0 t1 t2 "
    event = terminal(events)
    assert event["code"] == "timeout"
    assert sim.requests[0].wait_closed(5)


def test_whole_stream_timeout(service: Service, sim: Any) -> None:
    started = time.monotonic()
    events, _ = run(service, tokens=1000, delay=0.02)
    assert terminal(events)["code"] == "timeout"
    assert 5 < time.monotonic() - started < 12
    assert text_of(events) == "".join(f"t{i} " for i in range(len(text_of(events).split())))
    assert sim.requests[0].wait_closed(5)


def test_reasoning_and_content(service: Service, sim: Any) -> None:
    for field in ("reasoning_content", "reasoning"):
        sim.reset()
        events, _ = run(service, reasoning=["Let me ", "think."], reasoning_field=field,
                        tokens=["Answer."])
        kinds = [e.json["type"] for e in events[:-1]]
        assert kinds.index("reasoning") < kinds.index("token")
        reasoning = "".join(e.json["token"] for e in events[:-1]
                            if e.json["type"] == "reasoning")
        assert reasoning == "Let me think."
        assert text_of(events) == "Answer."


def test_tool_call_fragments(service: Service, sim: Any) -> None:
    calls = [{"name": "get_weather", "arguments": '{"city": "Paris", "unit": "C"}'},
             {"name": "get_time", "arguments": '{"tz": "CET"}'}]
    events, _ = run(service, tokens=0, tool_calls=calls)
    fragments = [e.json for e in events[:-1] if e.json["type"] == "tool_call"]
    by_index: dict[int, dict[str, str]] = {}
    for f in fragments:
        call = by_index.setdefault(f["index"], {"name": "", "arguments": "", "id": ""})
        call["name"] += f.get("name", "")
        call["id"] += f.get("id", "")
        call["arguments"] += f.get("arguments", "")
    assert [(c["name"], c["arguments"]) for c in by_index.values()] == [
        (c["name"], c["arguments"]) for c in calls]
    assert all(c["id"] for c in by_index.values())
    assert "id" not in fragments[1] and "name" not in fragments[1]
    assert terminal(events) == {"type": "done", "finish_reason": "tool_calls",
                                "usage": terminal(events)["usage"]}


def test_length_and_usage(service: Service, sim: Any) -> None:
    events, _ = run(service, tokens=10)
    assert terminal(events)["usage"]["completion_tokens"] == 10
    stream = start(service.url, {"messages": sim_prompt(tokens=10), "max_tokens": 3})
    events = collect(stream)
    assert terminal(events)["finish_reason"] == "length"
    assert text_of(events) == "t0 t1 t2 "


def test_missing_usage_is_null(service: Service, sim: Any) -> None:
    events, _ = run(service, tokens=2, no_usage=True)
    assert terminal(events) == {"type": "done", "finish_reason": "stop", "usage": None}


def test_crlf_upstream_framing(service: Service, sim: Any) -> None:
    events, _ = run(service, tokens=["a\r\n", "b\n", "c"], crlf=True)
    assert text_of(events) == "a\r\nb\nc"
