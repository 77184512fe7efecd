"""Measure the relay: many concurrent streams through one gevent worker, on loopback.

Starts the OpenAI-wire simulator and the service (gunicorn, one gevent worker) as subprocesses,
drives N concurrent streams from a gevent client, and prints time to first token, throughput,
the worker's CPU per delta and its memory per stream. Also times the per-chunk parse: ours
(raw bytes + orjson) against the SDK's typed chunk model.

    .venv/bin/python bench/relay_bench.py --streams 1000 --tokens 100 --delay 0.05
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            return
        except OSError:
            gevent.sleep(0.05)
    raise RuntimeError(f"port {port} did not open")


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def worker_pid(master: int) -> int:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        out = subprocess.run(["pgrep", "-P", str(master)], capture_output=True, text=True)
        pids = [int(p) for p in out.stdout.split()]
        if pids:
            return pids[0]
        gevent.sleep(0.05)
    raise RuntimeError("no worker")


def one_stream(port: int, script: dict[str, object], out: list[dict[str, float]]) -> None:
    body = json.dumps({"messages": [{"role": "user", "content": "SIM " + json.dumps(script)}]})
    req = (f"POST /api/chat/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n"
           f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}")
    sent = time.monotonic()
    sock = socket.create_connection(("127.0.0.1", port), 30)
    sock.sendall(req.encode())
    first_token = None
    events = 0
    buf = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                raise RuntimeError("stream cut")
            buf += chunk
            if first_token is None and b'"type":"token"' in buf:
                first_token = time.monotonic()
            if b"data: [DONE]" in buf:
                break
            # Keep only the tail: enough to find a marker split across reads.
            events += buf.count(b"\n\n")
            buf = buf[-32:]
    finally:
        sock.close()
    out.append({"ttft": (first_token or time.monotonic()) - sent,
                "total": time.monotonic() - sent, "events": events})


def parse_cost(n: int = 20000) -> tuple[float, float]:
    from openai.types.chat import ChatCompletionChunk

    from streaming.upstream.chunks import parse_chunk

    raw = json.dumps({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
                      "model": "m", "choices": [{"index": 0, "delta": {"content": " token"},
                                                 "finish_reason": None}]}).encode()
    t0 = time.process_time()
    for _ in range(n):
        parse_chunk(raw)
    ours = (time.process_time() - t0) / n * 1e6
    t0 = time.process_time()
    for _ in range(n):
        ChatCompletionChunk.model_validate(json.loads(raw))
    sdk = (time.process_time() - t0) / n * 1e6
    return ours, sdk


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--streams", type=int, default=500)
    ap.add_argument("--tokens", type=int, default=100)
    ap.add_argument("--delay", type=float, default=0.05, help="seconds between upstream deltas")
    ap.add_argument("--buffer-max-tokens", type=int, default=8)
    args = ap.parse_args()

    ours, sdk = parse_cost()
    print(f"parse per chunk: ours {ours:.1f} µs, SDK typed chunk {sdk:.1f} µs")

    tmp = Path(tempfile.mkdtemp(prefix="llm-bench-"))
    sim = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; sys.path.insert(0, 'tests');"
         "from upstream_sim import UpstreamSimulator;"
         "s = UpstreamSimulator().start(); print(s.port, flush=True); time.sleep(1e9)"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert sim.stdout is not None
    sim_port = int(sim.stdout.readline())
    port = free_port()
    env = {**os.environ, "BIND": f"127.0.0.1:{port}", "LLM_PROVIDER": "openai",
           "OPENAI_API_KEY": "sk-bench", "OPENAI_BASE_URL": f"http://127.0.0.1:{sim_port}/v1",
           "XDG_RUNTIME_DIR": str(tmp), "PROMETHEUS_MULTIPROC_DIR": str(tmp / "metrics"),
           "BUFFER_MAX_TOKENS": str(args.buffer_max_tokens), "LOG_LEVEL": "warning",
           "WEB_CONCURRENCY": "1"}
    service = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py",
                                "--access-logfile", "/dev/null", "wsgi:app"],
                               cwd=ROOT, env=env)
    try:
        wait_port(port)
        worker = worker_pid(service.pid)
        # Warm up: the first request builds the openai client.
        one_stream(port, {"tokens": 3}, [])
        idle_rss = proc_rss_mb(worker)
        cpu0 = proc_cpu(worker)
        peak = [idle_rss]

        def sample() -> None:
            while True:
                peak[0] = max(peak[0], proc_rss_mb(worker))
                gevent.sleep(0.2)

        sampler = gevent.spawn(sample)
        results: list[dict[str, float]] = []
        script = {"tokens": args.tokens, "delay": args.delay}
        t0 = time.monotonic()
        jobs = [gevent.spawn(one_stream, port, script, results) for _ in range(args.streams)]
        gevent.joinall(jobs, timeout=600)
        wall = time.monotonic() - t0
        sampler.kill()
        cpu = proc_cpu(worker) - cpu0
        failed = sum(1 for j in jobs if not j.successful())
        deltas = len(results) * args.tokens
        ttft = sorted(r["ttft"] for r in results)
        print(f"streams: {len(results)} ok, {failed} failed; {args.tokens} deltas each, "
              f"{args.delay * 1000:.0f} ms apart; wall {wall:.1f} s")
        if ttft:
            print(f"time to first token: p50 {statistics.median(ttft) * 1000:.0f} ms, "
                  f"p99 {ttft[int(len(ttft) * 0.99) - 1] * 1000:.0f} ms")
        print(f"worker CPU: {cpu:.2f} s for {deltas} deltas = {cpu / max(deltas, 1) * 1e6:.0f} µs "
              f"per delta (all included: HTTP in and out, SSE, buffering)")
        print(f"worker RSS: idle {idle_rss:.0f} MB, peak {peak[0]:.0f} MB, "
              f"{(peak[0] - idle_rss) * 1024 / max(args.streams, 1):.0f} KB per concurrent stream")
    finally:
        service.send_signal(signal.SIGTERM)
        sim.send_signal(signal.SIGTERM)
        service.wait(30)
        sim.wait(10)


if __name__ == "__main__":
    main()
