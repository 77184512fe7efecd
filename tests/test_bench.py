"""The benchmark keeps working: its SSE reader on exact bytes, and a tiny run of every part
(every server, ours on Redis included; one rate).

Its figures are not asserted (speed is measured by `make bench`, on a quiet machine): only that
the run completes, every stream it checked was exact, and the JSON holds every figure.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from loadgen import Run  # noqa: E402
from sse_reader import ResponseError, ResponseReader  # noqa: E402

HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


def chunked(*parts: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


def feed_bytewise(data: bytes) -> tuple[ResponseReader, list[bytes]]:
    reader, out = ResponseReader(), []
    for i in range(len(data)):
        out += reader.feed(data[i:i + 1])
    return reader, out


@pytest.mark.parametrize(("body", "events"), [
    pytest.param(chunked(b"retry: 1000\n: ping\n", b"id: 0\ndata: {\"a\":1}\n\n",
                         b"data: [DONE]\n\n"), [b'{"a":1}', b"[DONE]"],
                 id="retry-and-comment-without-blank-line"),
    pytest.param(chunked(b"data: x\n", b"\ndata: y\n\ndata:z\n\n"), [b"x", b"y", b"z"],
                 id="event-split-across-chunks"),
    pytest.param(chunked(b"data: a\ndata: b\n\n"), [b"a\nb"], id="two-data-lines"),
    pytest.param(chunked(b"data: a\r\n\r\ndata: b\r\n\r\n"), [b"a", b"b"], id="crlf"),
])
def test_reader_events(body: bytes, events: list[bytes]) -> None:
    whole = ResponseReader()
    assert whole.feed(HEAD + body) == events
    assert whole.ended and whole.status == 200
    reader, bytewise = feed_bytewise(HEAD + body)
    assert bytewise == events
    assert reader.ended


def test_reader_content_length_and_status() -> None:
    reader = ResponseReader()
    body = b'{"error": {"type": "rate_limited"}}'
    reader.feed(b"HTTP/1.1 429 Too Many\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
    assert (reader.status, reader.ended, reader.body()) == (429, True, body)


@pytest.mark.parametrize("head", [b"SSH-2.0-x\r\n\r\n", b"HTTP/1.1 abc\r\n\r\n"])
def test_reader_refuses_bad_status_line(head: bytes) -> None:
    with pytest.raises(ResponseError):
        ResponseReader().feed(head)


def test_reader_refuses_bad_chunk_size() -> None:
    with pytest.raises(ResponseError):
        ResponseReader().feed(HEAD + b"zz\r\n")


@pytest.mark.parametrize(("gate", "text", "exact"), [
    pytest.param(None, "s7-0 s7-1 s7-2 ", True, id="all"),
    pytest.param(None, "s7-0 s7-2 ", False, id="one-lost"),
    pytest.param(None, "s7-0 s7-1 s7-1 s7-2 ", False, id="one-repeated"),
    pytest.param(None, "s7-0 s7-1 s7-2 s7-3 ", False, id="one-too-many"),
    pytest.param(None, "s7-0 s7-1 ", False, id="tail-lost"),
    pytest.param("g", "s7-0 s7-1 s7-2 s7-3 s7-4 s7-end ", True, id="gated-held-longer"),
    pytest.param("g", "s7-0 s7-1 s7-2 s7-end ", True, id="gated-at-once"),
    pytest.param("g", "s7-0 s7-1 s7-2 s7-3 ", False, id="gated-end-lost"),
    pytest.param("g", "s7-0 s7-1 s7-end ", False, id="gated-too-few"),
    pytest.param("g", "s7-0 s7-2 s7-3 s7-end ", False, id="gated-one-lost"),
])
def test_load_generator_checks_text_exactly(gate: str | None, text: str, exact: bool) -> None:
    run = Run({"kind": "ours", "streams": 1, "tokens": 3, "delay": 0.1, "gate": gate})
    assert run.exact(7, text) is exact


SERVERS = ("ours", "ours_b1", "ours_redis", "baseline")
RATES = ("50",)  # one rate: the second runs the same code (and would add a run per server)
REDIS = ("redis_cpu_per_delta_us", "redis_commands_per_delta", "redis_scripts_per_delta")


def figures(doc: dict[str, Any]) -> dict[str, Any]:
    """Every figure the benchmark promises, by a readable name."""
    res = doc["results"]
    out: dict[str, Any] = {}
    for rate in RATES:
        for name in (*SERVERS, "direct"):
            out[f"cpu {rate} {name}"] = res["cpu"][rate][name]["cpu_per_delta_us"]
        for name in SERVERS:
            for key in ("added_ttft_p50_ms", "added_ttft_p99_ms", "added_delay_per_delta_ms"):
                out[f"ttft {rate} {name} {key}"] = res["ttft"][rate][name][key]
        redis = res["cpu"][rate]["ours_redis"]
        for key in REDIS:
            out[f"cpu {rate} ours_redis {key}"] = redis[key]
        out[f"cpu {rate} ours_redis connections"] = redis["redis_connections"]["max_per_worker"]
    for name in SERVERS:
        out[f"fixed {name}"] = res["fixed"][name]["cpu_per_stream_ms"]
    out["fixed ours_redis redis"] = res["fixed"]["ours_redis"]["redis_cpu_per_stream_ms"]
    for name in ("ours_w2", "ours_redis_w2"):
        out[f"redisload {name}"] = res["redisload"][name]["cpu_per_delta_us"]
        out[f"redisload {name} passed"] = int(res["redisload"][name]["passed"])
    redis = res["redisload"]["ours_redis_w2"]
    for key in REDIS:
        out[f"redisload ours_redis_w2 {key}"] = redis[key]
    out["redisload ours_redis_w2 workers"] = redis["redis_connections"]["workers"]
    out["redisload ours_redis_w2 connections"] = redis["redis_connections"]["max_per_worker"]
    for name in ("ours", "baseline"):
        out[f"memory {name}"] = res["memory"][name]["per_stream_kib"]
    for name in ("ours_w1", "ours_w2", "baseline_w1", "baseline_w2", "direct"):
        out[f"burst {name} p50"] = res["burst"][name]["ttft_p50_ms"]
        out[f"burst {name} p99"] = res["burst"][name]["ttft_p99_ms"]
    for name in ("ours_w2", "baseline_w2"):
        out[f"capacity {name}"] = res["capacity"][name]["max_completed"]
    out["parse sdk"] = res["parse"]["sdk_us"]
    return out


@pytest.mark.timeout(600)
def test_small_run_writes_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    png = tmp_path / "bench.png"
    cmd = [sys.executable, str(ROOT / "bench/relay_bench.py"), "--rates", ",".join(RATES),
           "--rate-streams", "10", "--duration", "2.5", "--fixed-streams", "30",
           "--fixed-concurrency", "10", "--memory-streams", "40", "--burst-streams", "40",
           "--capacity", "40", "--hold", "1", "--slow-delay", "0.5", "--open-rate", "200",
           "--redisload-streams", "40", "--redisload-rate", "10", "--redisload-hold", "2",
           "--json", str(out), "--chart", str(png)]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=580)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    doc = json.loads(out.read_text())
    missing = [name for name, value in figures(doc).items() if not isinstance(value, int | float)]
    assert not missing, missing
    assert doc["errors"]["streams"] > 0
    assert doc["errors"]["not_exact"] == 0, json.dumps(doc["results"], indent=1)
    assert doc["results"]["redisload"]["ours_redis_w2"]["redis_connections"]["workers"] == 2
    assert "server CPU per delta" in run.stdout
    assert "Redis vs memory" in run.stdout
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert not png.exists()
    else:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
