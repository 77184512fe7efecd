"""The upstream boundary: its header handling, and upstream faults seen from a client."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import Service, sim_prompt
from sseclient import collect, start, text_of

from streaming.upstream.openai import parse_retry_after

ROOT = Path(__file__).resolve().parent.parent


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


# -- the provider: close() from elsewhere, and reuse ------------------------------------------

PROVIDER_SCRIPT = r"""
import sys

if sys.argv[3] == "gevent":
    from gevent import monkey

    monkey.patch_all()

import json, threading, time

sys.path.insert(0, sys.argv[2])
from streaming.green import spawn
from streaming.settings import Settings
from streaming.upstream.openai import OpenAIProvider

settings = Settings(LLM_PROVIDER="openai", OPENAI_API_KEY="sk-test", OPENAI_BASE_URL=sys.argv[1])
provider = OpenAIProvider(settings)


def request(**script):
    return {"model": "m", "messages": [{"role": "user", "content": "SIM " + json.dumps(script)}]}


def blocked_in_read(reader):
    # Wait until the reader is blocked reading the socket (there is no event for that).
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        frame = getattr(reader, "gr_frame", None) or sys._current_frames().get(
            getattr(reader, "ident", 0))
        while frame is not None:
            if frame.f_code.co_name in ("recv_into", "recv", "readinto"):
                return True
            frame = frame.f_back
        time.sleep(0.005)
    return False


out = {"texts": []}
for _ in range(2):  # complete answers: the connection is kept
    with provider.open(request(tokens=3)) as stream:
        out["texts"].append([item for items in stream for item in items][:3])

with provider.open(request(tokens=5, stall_after=1)) as stream:
    items = iter(stream)
    out["first"] = next(items)
    ended = threading.Event()

    def read():
        out["rest"] = [item for batch in items for item in batch]
        ended.set()

    reader = spawn(read, "reader")
    out["blocked"] = blocked_in_read(reader)
    began = out["closed_at"] = time.monotonic()
    stream.close()
    out["unblocked"] = ended.wait(5)
    out["elapsed"] = time.monotonic() - began
provider.close()
print(json.dumps(out))
"""


@pytest.mark.parametrize("mode", ["gevent", "threads"])
def test_provider_close_from_elsewhere_unblocks_the_reader_at_once(sim: Any, mode: str) -> None:
    run = subprocess.run([sys.executable, "-c", PROVIDER_SCRIPT, sim.base_url, str(ROOT), mode],
                         capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout)
    assert out["texts"] == [[["content", "t0 "], ["content", "t1 "], ["content", "t2 "]]] * 2
    assert out["first"] == [["content", "t0 "]]
    assert out["blocked"] and out["unblocked"] and out["elapsed"] < 1.0
    assert out["rest"] == []  # a close is not an error of the upstream
    first, second, stalled = sim.requests
    assert first.peer == second.peer  # kept alive after a complete answer
    assert stalled.wait_closed(5) and stalled.outcome == "client_closed"
    # The FIN reached the upstream at once (both clocks are the system's monotonic clock).
    assert stalled.closed_at is not None and stalled.closed_at - out["closed_at"] < 1.0
