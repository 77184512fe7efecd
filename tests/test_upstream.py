"""The upstream boundary: its header handling, and upstream faults seen from a client."""

from __future__ import annotations

import time
from typing import Any

import pytest
from conftest import Service, sim_prompt
from sseclient import collect, start, text_of

from streaming.upstream.openai import parse_retry_after


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"retry-after": "3"}, 3.0),
        ({"retry-after": "0.5"}, 0.5),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),
        ({"retry-after": "soon"}, None),
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),
        ({"retry-after": "Mon, 01 Jan 10000 00:00:00 GMT"}, None),  # out of range: ignored
        ({"retry-after": "inf"}, None),
        ({"retry-after": "nan"}, None),
        ({"retry-after-ms": "1e400"}, None),
    ],
)
def test_retry_after(headers: dict[str, str], expected: float | None) -> None:
    assert parse_retry_after(headers) == expected


# -- faults, end to end through the service under gunicorn ------------------------------------

def run(service: Service, **script: Any) -> list[Any]:
    events = collect(start(service.url, {"messages": sim_prompt(**script)}))
    assert events[-1].data == "[DONE]"
    return events


def test_done_without_a_finish_reason_is_a_cut_answer(relay_service: Service, sim: Any) -> None:
    # llama.cpp's server interrupts a running stream this way: tokens, then [DONE].
    events = run(relay_service, tokens=5, done_after=2)
    assert text_of(events) == "t0 t1 "
    end = events[-2].json
    assert (end["type"], end["code"]) == ("error", "upstream_error")
    assert all(e.json["type"] != "done" for e in events[:-1])
    assert len(sim.requests) == 1 and sim.requests[0].completed  # not retried after deltas


def test_the_same_stream_with_its_finish_reason_is_done(relay_service: Service,
                                                        sim: Any) -> None:
    # The control for the test above: only the missing finish reason makes it an error.
    events = run(relay_service, tokens=2)
    assert text_of(events) == "t0 t1 "
    end = events[-2].json
    assert (end["type"], end["finish_reason"]) == ("done", "stop")


def test_an_oversized_line_is_an_upstream_error_and_closes_the_request(
        relay_service: Service, sim: Any) -> None:
    began = time.monotonic()
    events = run(relay_service, tokens=5, long_line=2 * 1024 * 1024, long_line_after=1)
    assert text_of(events) == "t0 "
    end = events[-2].json
    assert (end["type"], end["code"]) == ("error", "upstream_error")
    # Ended by the bound, not by the idle timeout (IDLE_TIMEOUT=3 in relay_service).
    assert time.monotonic() - began < 3
    record = sim.requests[0]
    assert record.wait_closed(5) and record.outcome == "client_closed"
