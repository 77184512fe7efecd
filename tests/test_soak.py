"""A bounded soak: thousands of streams at once on one worker, a third of their clients cut
mid-answer, a tenth never reading; afterwards the worker's tasks (greenlets) and file
descriptors are back where they were, and a second identical round adds almost no memory."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import ROOT, Service, wait_http
from sseclient import request, start, until_first_token

STREAMS = 1500
DELTAS = 20


@pytest.fixture(scope="module")
def wire_sim() -> Iterator[str]:
    """The benchmark's lean upstream (one asyncio loop): thousands of answers at once."""
    proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / "wire_sim.py"), "--port", "0"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline().strip())
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/v1/models", proc=proc)
        yield url + "/v1"
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def worker_gauges(svc: Service) -> dict[str, float]:
    _, _, raw = request(svc.url, "GET", "/metrics")
    out: dict[str, float] = {}
    for line in raw.decode().splitlines():
        m = re.match(r'(llm_worker_tasks|llm_worker_open_files|llm_streams_active)'
                     r'(\{[^}]*\})? (\S+)$', line)
        if m:
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(3))
    return out


def worker_rss_kib(svc: Service) -> int:
    pids = subprocess.run(["pgrep", "-P", str(svc.proc.pid)], capture_output=True, text=True,
                          check=True).stdout.split()
    (pid,) = pids
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def one(port: int, i: int, mode: str, hold: asyncio.Event) -> str:
    """One client: 'read' (whole answer, checked), 'cut' (gone after its first token) or
    'stuck' (never reads; a small receive buffer; closed when the round ends)."""
    sock = socket.socket()
    if mode == "stuck":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    script = {"tokens": DELTAS, "delay": 0.05, "id": f"s{i}"}
    body = json.dumps({"messages": [{"role": "user", "content": "SIM " + json.dumps(script)}]})
    writer.write(b"POST /api/chat/stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body.encode()))
    try:
        if mode == "stuck":
            await hold.wait()
            return "stuck"
        data = b""
        while b"data: [DONE]" not in data:
            chunk = await reader.read(65536)
            if not chunk:
                return "cut-short"
            data += chunk
            if mode == "cut" and b'"type":"token"' in data:
                return "cut"
        tokens = [json.loads(m)["token"] for m in re.findall(rb'data: (\{"type":"token".*)\n',
                                                             data)]
        expected = "".join(f"s{i}-{k} " for k in range(DELTAS))
        return "exact" if "".join(tokens) == expected else "wrong"
    finally:
        writer.close()


async def soak_round(port: int) -> dict[str, int]:
    hold = asyncio.Event()
    modes = ["stuck" if i % 10 == 0 else "cut" if i % 3 == 0 else "read" for i in range(STREAMS)]
    tasks = [asyncio.create_task(one(port, i, mode, hold)) for i, mode in enumerate(modes)]
    _, _ = await asyncio.wait([t for t, m in zip(tasks, modes, strict=True) if m != "stuck"],
                                 timeout=120)
    hold.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    counts: dict[str, int] = {}
    for r in results:
        key = r if isinstance(r, str) else type(r).__name__
        counts[key] = counts.get(key, 0) + 1
    return counts


def wait_rested(svc: Service, rest: dict[str, float], timeout: float = 60) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    now = worker_gauges(svc)
    while time.monotonic() < deadline:
        now = worker_gauges(svc)
        if (now.get("llm_streams_active") == 0
                and now["llm_worker_tasks"] <= rest["llm_worker_tasks"]
                and now["llm_worker_open_files"] <= rest["llm_worker_open_files"]):
            return now
        time.sleep(0.25)  # the worker lets go asynchronously (keep-alive, grace): poll it
    return now


def test_an_open_stream_runs_one_task(service_factory: Any) -> None:
    # One greenlet per stream (its reader, which also runs the relay); deadlines ring a timer
    # that runs in the event loop itself, and each client's response is the server's own
    # greenlet. A second task per stream (a pump, a watcher) would double the count.
    svc = service_factory({"SIMULATED_TOKENS_PER_SECOND": 2})
    rest = worker_gauges(svc)
    streams = [start(svc.url, {"messages": [{"role": "user", "content": "hi"}]})
               for _ in range(20)]
    try:
        for stream in streams:
            assert until_first_token(stream)[-1].json["type"] == "token"
        now = worker_gauges(svc)
        assert now["llm_streams_active"] == 20, now
        assert now["llm_worker_tasks"] - rest["llm_worker_tasks"] == 20, (now, rest)
    finally:
        for stream in streams:
            stream.close()


def test_soak(service_factory: Any, wire_sim: str) -> None:
    svc = service_factory({"LLM_PROVIDER": "openai", "OPENAI_API_KEY": "sk-x",
                           "OPENAI_BASE_URL": wire_sim, "LLM_MODEL": "m",
                           "HEARTBEAT_INTERVAL": 1, "SEND_TIMEOUT": 2, "RESUME_GRACE": 1,
                           "STREAM_TTL": 5})
    # Warm: the upstream pool (full: more streams at once than it keeps idle) and the worker's
    # lazily made parts exist before the baseline.
    counts = asyncio.run(soak_round_small(svc.port))
    assert counts == {"exact": 64}, counts
    rest = wait_rested(svc, {"llm_worker_tasks": 1e9, "llm_worker_open_files": 1e9})
    rss = []
    for _ in range(2):
        counts = asyncio.run(soak_round(svc.port))
        expected_stuck = len(range(0, STREAMS, 10))
        assert counts.get("stuck") == expected_stuck
        assert counts.get("wrong", 0) == 0 and counts.get("cut-short", 0) == 0, counts
        assert counts["exact"] + counts["cut"] + expected_stuck == STREAMS, counts
        after = wait_rested(svc, rest)
        assert after.get("llm_streams_active") == 0, after
        assert after["llm_worker_tasks"] <= rest["llm_worker_tasks"], (after, rest)
        assert after["llm_worker_open_files"] <= rest["llm_worker_open_files"], (after, rest)
        rss.append(worker_rss_kib(svc))
    # The second round adds almost nothing: what the first grew was pools and caches.
    assert rss[1] - rss[0] < 16 * 1024, rss


async def soak_round_small(port: int) -> dict[str, int]:
    hold = asyncio.Event()
    results = await asyncio.gather(*(one(port, i, "read", hold) for i in range(64)))
    return {"exact": results.count("exact")} if set(results) == {"exact"} else {
        r: results.count(r) for r in set(results)}
