"""This service against the usual asyncio design, side by side, on loopback: `make bench`.

Starts the OpenAI-wire simulator (bench/wire_sim.py), this service under gunicorn's gevent
worker (default settings, BUFFER_MAX_TOKENS=1 since the baseline writes one event per
delta, and with its streams in Redis: a redis-server of its own) and the baseline
(bench/baseline/app.py: FastAPI + uvicorn + AsyncOpenAI), drives each
with the same load from a separate process (bench/loadgen.py, which checks every stream is
exact), and takes server CPU and memory from the kernel's accounting of the server processes.
Writes bench/results/latest.json and latest.png and prints a table.

    .venv/bin/python bench/relay_bench.py                  # everything, several minutes
    .venv/bin/python bench/relay_bench.py --quick          # smaller sizes, one to two minutes
    .venv/bin/python bench/relay_bench.py --only cpu,memory --rate-streams 100

Parts (`--only`): cpu (CPU per relayed delta at each `--rates`; also gives ttft), ttft (added
time to first token and per-delta delay against asking the simulator directly), fixed (CPU per
one-delta stream), memory (per open stream), burst (first token of a burst of starts, one and
two workers), capacity (most concurrent slow streams completed, two workers), redisload (many
concurrent streams over two workers with Redis, and the same with the memory store: all exact,
Redis connections per worker, Redis commands and CPU per delta), parse (per-chunk parse cost,
in-process).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]

import parts  # noqa: E402
import report  # noqa: E402
from servers import ROOT, Server, start_baseline, start_ours, start_simulator  # noqa: E402
from wire_sim import raise_open_files_limit  # noqa: E402

PARTS = ("cpu", "ttft", "fixed", "memory", "burst", "capacity", "redisload", "parse")
# name -> how to start it on the simulator's port
ONE_WORKER: dict[str, Callable[[int], Server]] = {
    "ours": lambda sim: start_ours(sim),
    "ours_b1": lambda sim: start_ours(sim, buffer_max_tokens=1),
    "ours_redis": lambda sim: start_ours(sim, redis=True),
    "baseline": lambda sim: start_baseline(sim),
}
TWO_WORKERS: dict[str, Callable[[int], Server]] = {
    "ours_w2": lambda sim: start_ours(sim, workers=2),
    "ours_redis_w2": lambda sim: start_ours(sim, workers=2, redis=True),
    "baseline_w2": lambda sim: start_baseline(sim, workers=2),
}
# The parts each server takes part in (when asked for).
SERVES: dict[str, set[str]] = {
    "ours": {"cpu", "ttft", "fixed", "memory", "burst"},
    "ours_b1": {"cpu", "ttft", "fixed"},
    "ours_redis": {"cpu", "ttft", "fixed"},
    "baseline": {"cpu", "ttft", "fixed", "memory", "burst"},
    "ours_w2": {"burst", "capacity", "redisload"},
    "ours_redis_w2": {"redisload"},
    "baseline_w2": {"burst", "capacity"},
}
QUICK = {"rate_streams": 50, "duration": 4.0, "fixed_streams": 200, "memory_streams": 300,
         "burst_streams": 300, "capacity": "300,1000", "hold": 3.0, "redisload_streams": 500,
         "redisload_hold": 6.0}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(PARTS),
                    help=f"comma-separated parts, of: {', '.join(PARTS)}")
    ap.add_argument("--quick", action="store_true", help="smaller sizes (one to two minutes)")
    ap.add_argument("--rates", default="50,20", help="deltas per second per stream")
    ap.add_argument("--rate-streams", type=int, default=200)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per rate run")
    ap.add_argument("--fixed-streams", type=int, default=1000)
    ap.add_argument("--fixed-concurrency", type=int, default=50)
    ap.add_argument("--memory-streams", type=int, default=1000)
    ap.add_argument("--burst-streams", type=int, default=2000)
    ap.add_argument("--capacity", default="2000,5000,10000", help="levels to try, in order")
    ap.add_argument("--hold", type=float, default=5.0,
                    help="memory, capacity: seconds a slow stream lasts at least (all are held "
                         "open until the last one has started)")
    ap.add_argument("--slow-delay", type=float, default=5.0,
                    help="memory, capacity: seconds between a slow stream's deltas")
    ap.add_argument("--open-rate", type=float, default=500.0,
                    help="new streams per second when opening many slow ones")
    ap.add_argument("--redisload-streams", type=int, default=2000,
                    help="redisload: concurrent streams over two workers")
    ap.add_argument("--redisload-rate", type=float, default=5.0,
                    help="redisload: deltas per second per stream")
    ap.add_argument("--redisload-hold", type=float, default=25.0,
                    help="redisload: seconds a stream lasts at least (all are held open until "
                         "the last one has started)")
    ap.add_argument("--servers", default=",".join([*ONE_WORKER, *TWO_WORKERS]),
                    help="which servers to measure (the simulator is always measured)")
    ap.add_argument("--json", type=Path, default=ROOT / "bench/results/latest.json")
    ap.add_argument("--replot", type=Path, metavar="JSON",
                    help="run nothing: print the table and draw the chart of an earlier run")
    ap.add_argument("--chart", type=Path, default=ROOT / "bench/results/latest.png")
    args = ap.parse_args(argv)
    if args.quick:
        defaults = ap.parse_args([])
        for key, value in QUICK.items():
            if getattr(args, key) == getattr(defaults, key):
                setattr(args, key, value)
    args.parts = {p.strip() for p in args.only.split(",") if p.strip()}
    args.server_names = {p.strip() for p in args.servers.split(",") if p.strip()}
    unknown = (args.parts - set(PARTS)) | (args.server_names - {*ONE_WORKER, *TWO_WORKERS})
    if unknown:
        ap.error(f"unknown parts or servers: {', '.join(sorted(unknown))}")
    return args


def meta(args: argparse.Namespace) -> dict[str, Any]:
    def version(name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    git = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT,
                         capture_output=True, text=True).stdout.strip()
    return {"date": datetime.now(UTC).isoformat(timespec="seconds"), "commit": git,
            "cpus": os.cpu_count(), "python": platform.python_version(),
            "loadavg_start": os.getloadavg(),
            "versions": {n: version(n) for n in ("gunicorn", "gevent", "openai", "httpx2",
                                                  "fastapi", "starlette", "uvicorn", "uvloop",
                                                  "httptools")},
            "args": {k: (sorted(v) if isinstance(v, set) else str(v) if isinstance(v, Path)
                         else v) for k, v in vars(args).items()}}


def run(args: argparse.Namespace) -> dict[str, Any]:
    want = args.parts
    rates = [float(r) for r in args.rates.split(",") if r.strip()]
    levels = [int(n) for n in args.capacity.split(",") if n.strip()]
    results: dict[str, Any] = {}
    do_rate = bool(want & {"cpu", "ttft"})

    def say(text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)

    if "parse" in want:
        say("parse cost per chunk")
        results["parse"] = report.parse_cost()
    sim = start_simulator()
    try:
        if do_rate:
            for r in rates:
                say(f"direct to the simulator: {args.rate_streams} streams x {r:g} deltas/s")
                results.setdefault("cpu", {}).setdefault(f"{r:g}", {})["direct"] = parts.rate(
                    sim, sim, args.rate_streams, r, args.duration)
        if "burst" in want:
            say(f"direct to the simulator: burst of {args.burst_streams}")
            results.setdefault("burst", {})["direct"] = parts.burst(sim, args.burst_streams)
        for name, start in ONE_WORKER.items():
            serves = SERVES[name]
            if name not in args.server_names or not want & serves:
                continue
            say(f"{name}: starting")
            server = start(sim.port)
            try:
                parts.warm_up(server)
                if "memory" in want & serves:
                    say(f"{name}: memory, {args.memory_streams} open streams")
                    results.setdefault("memory", {})[name] = parts.memory(
                        server, sim, args.memory_streams, args.open_rate, args.hold,
                        args.slow_delay)
                for r in rates if do_rate else []:
                    say(f"{name}: {args.rate_streams} streams x {r:g} deltas/s")
                    results.setdefault("cpu", {}).setdefault(f"{r:g}", {})[name] = parts.rate(
                        server, sim, args.rate_streams, r, args.duration)
                if "fixed" in want:
                    say(f"{name}: {args.fixed_streams} one-delta streams")
                    results.setdefault("fixed", {})[name] = parts.fixed(
                        server, args.fixed_streams, args.fixed_concurrency)
                if "burst" in want & serves:
                    say(f"{name}: burst of {args.burst_streams}")
                    results.setdefault("burst", {})[f"{name}_w1"] = parts.burst(
                        server, args.burst_streams)
            finally:
                server.stop()
        for name, start in TWO_WORKERS.items():
            serves = SERVES[name]
            if name not in args.server_names or not want & serves:
                continue
            say(f"{name}: starting")
            server = start(sim.port)
            try:
                parts.warm_up(server)
                if "burst" in want & serves:
                    say(f"{name}: burst of {args.burst_streams}")
                    results.setdefault("burst", {})[name] = parts.burst(server,
                                                                        args.burst_streams)
                if "capacity" in want & serves:
                    say(f"{name}: capacity, trying {levels}")
                    results.setdefault("capacity", {})[name] = parts.capacity(
                        server, sim, levels, args.open_rate, args.hold, args.slow_delay)
                if "redisload" in want & serves:
                    say(f"{name}: {args.redisload_streams} concurrent streams x "
                        f"{args.redisload_rate:g} deltas/s")
                    results.setdefault("redisload", {})[name] = parts.redis_load(
                        server, sim, args.redisload_streams, args.redisload_rate,
                        args.redisload_hold, args.open_rate)
            finally:
                server.stop()
    finally:
        sim.stop()
    if "ttft" in want and "cpu" in results:
        results["ttft"] = added_latency(results["cpu"])
    if "ttft" not in want:
        results.pop("ttft", None)
    return results


def added_latency(cpu: dict[str, Any]) -> dict[str, Any]:
    """Time to first token and per-delta delay over asking the simulator directly, per rate."""
    out: dict[str, Any] = {}
    for r, by_server in cpu.items():
        direct = by_server.get("direct")
        if direct is None:
            continue
        for name, fig in by_server.items():
            if name == "direct":
                continue
            out.setdefault(r, {})[name] = {
                "added_ttft_p50_ms": _minus(fig["ttft_p50_ms"], direct["ttft_p50_ms"]),
                "added_ttft_p99_ms": _minus(fig["ttft_p99_ms"], direct["ttft_p99_ms"]),
                "added_delay_per_delta_ms": _minus(fig["lag_mean_ms"], direct["lag_mean_ms"]),
                "added_delay_p99_ms": _minus(fig["lag_p99_ms"], direct["lag_p99_ms"]),
            }
    return out


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.replot:
        doc = orjson.loads(args.replot.read_bytes())
        print(report.table(doc))
        return 0 if report.chart(doc, args.chart) else 1
    raise_open_files_limit()  # the simulator and the servers inherit it
    started = time.monotonic()
    info = meta(args)
    results = run(args)
    info["loadavg_end"] = os.getloadavg()
    info["wall_s"] = time.monotonic() - started
    doc = {"meta": info, "results": results, "errors": report.error_count(results)}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
    print(report.table(doc))
    print(f"\nwrote {args.json}")
    if report.chart(doc, args.chart):
        print(f"wrote {args.chart}")
    else:
        print("no chart: matplotlib is not installed (pip install -e '.[bench]')")
    return 0


if __name__ == "__main__":
    sys.exit(main())
