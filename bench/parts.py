"""The benchmark's parts: each drives one server with the load generator and returns its figures.

Every function takes a running `Server` (or the simulator itself, for the direct reference) and
the sizes, and returns a dict of plain numbers plus the load generator's verdicts (`ok`,
`errors`), so that a figure is never shown without the count of exact streams behind it.
"""

from __future__ import annotations

import functools
import http.client
import math
import subprocess
import tempfile
import time
from collections.abc import Callable
from typing import Any

import orjson
from servers import BENCH, PYTHON, Server

KIND = {"sim": "direct", "baseline": "baseline"}  # by the server name's first part; else "ours"


def kind_of(server: Server) -> str:
    return KIND.get(server.name.split("-")[0], "ours")


def load(server: Server, on_open: Callable[[], None] | None = None, **spec: Any) -> dict[str, Any]:
    """Run the load generator (a separate process) against `server`; its result line."""
    spec = {"port": server.port, "kind": kind_of(server), "notify_open": on_open is not None,
            **spec}
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([PYTHON, str(BENCH / "loadgen.py"), orjson.dumps(spec).decode()],
                                stdout=subprocess.PIPE, stderr=err)
        assert proc.stdout is not None
        result: dict[str, Any] | None = None
        for line in proc.stdout:
            event = orjson.loads(line)
            if event.get("event") == "all_open" and on_open is not None:
                on_open()
            elif event.get("event") == "result":
                result = event
        proc.wait()
        if result is None:
            err.seek(0)
            raise RuntimeError(f"load generator failed:\n{err.read().decode()[-3000:]}")
    return result


def verdicts(result: dict[str, Any]) -> dict[str, Any]:
    return {"streams": result["streams"], "ok": result["ok"], "errors": result["errors"]}


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def warm_up(server: Server) -> None:
    """A few streams first: the first request builds clients, pools and lazy imports."""
    load(server, streams=40, concurrency=20, tokens=5, delay=0.01, timeout=60)


def rate(server: Server, sim: Server, streams: int, per_second: float,
         duration: float) -> dict[str, Any]:
    """`streams` concurrent streams, each `per_second` deltas/s for `duration` s: CPU per delta
    over the steady part (every stream started, none ended), time to first token, lag."""
    delay = 1 / per_second
    result = load(server, streams=streams, tokens=max(2, round(duration * per_second)),
                  delay=delay, ramp=min(1.0, duration / 4), lags=True, timeout=duration + 60)
    out = {**verdicts(result), "ttft_p50_ms": ms(result["ttft_p50_s"]),
           "ttft_p99_ms": ms(result["ttft_p99_s"]), "lag_mean_ms": ms(result.get("lag_mean_s")),
           "lag_p99_ms": ms(result.get("lag_p99_s"))}
    out.update(steady_figures(server, sim, result))
    out.update(redis_figures(server, result))
    return out


def steady_figures(server: Server, sim: Server, result: dict[str, Any]) -> dict[str, Any]:
    """Server CPU (and the simulator's) per delta over the load generator's steady window
    (every stream started, none ended); `cpu_per_delta_us` is None when there was none."""
    window = result.get("window")
    if not (window and window["deltas"]):
        return {"cpu_per_delta_us": None}
    start, end, deltas = window["start"], window["end"], window["deltas"]
    seconds = end - start
    cpu = server.cpu_between(start, end)
    return {"window_s": seconds, "window_deltas": deltas, "deltas_per_s": deltas / seconds,
            "cpu_cores": cpu / seconds, "cpu_per_delta_us": cpu / deltas * 1e6,
            "sim_cpu_per_delta_us": sim.cpu_between(start, end) / deltas * 1e6}


SCRIPTS = ("evalsha", "eval", "evalsha_ro", "eval_ro", "fcall")


def redis_figures(server: Server, result: dict[str, Any]) -> dict[str, Any]:
    """For a server on Redis: Redis's own CPU and the commands it ran per relayed delta over the
    load generator's steady window (commands run inside scripts count, as INFO counts them;
    `redis_scripts_per_delta` are the scripts called), and the service's Redis connections per
    worker at the run's peak. Empty for a server without Redis."""
    redis = server.redis
    if redis is None:
        return {}
    run_end = result["t0"] + result["wall_s"]
    out: dict[str, Any] = {"redis_connections": redis.connections(result["t0"], run_end),
                           "redis_cpu_per_delta_us": None, "redis_commands_per_delta": None}
    window = result.get("window")
    if window and window["deltas"]:
        n = window["deltas"]
        calls = redis.commands_between(window["start"], window["end"])
        out.update(
            redis_cpu_per_delta_us=redis.cpu_between(window["start"], window["end"]) / n * 1e6,
            redis_commands_per_delta=sum(calls.values()) / n,
            redis_scripts_per_delta=sum(calls.get(k, 0) for k in SCRIPTS) / n,
            redis_commands_by_name_per_delta={k: v / n for k, v in sorted(
                calls.items(), key=lambda kv: -kv[1])})
    return out


def fixed(server: Server, streams: int, concurrency: int) -> dict[str, Any]:
    """Many one-delta streams, `concurrency` at a time: the fixed CPU cost of a stream."""
    redis = server.redis
    cpu0, t0 = server.cpu(), time.monotonic()
    redis_cpu0 = redis.cpu() if redis is not None else 0.0
    result = load(server, streams=streams, concurrency=concurrency, tokens=1, delay=0,
                  timeout=300)
    time.sleep(0.2)  # the last responses' clean-up after the client saw [DONE]
    cpu = server.cpu() - cpu0
    out = {**verdicts(result), "cpu_per_stream_ms": cpu / streams * 1000,
           "streams_per_s": streams / (time.monotonic() - t0)}
    if redis is not None:
        out["redis_cpu_per_stream_ms"] = (redis.cpu() - redis_cpu0) / streams * 1000
    return out


GATE_TIMEOUT = 180.0  # from the first start: how long slow streams are held open at most
MAX_STARTING = 500  # slow streams waiting for their first delta at once (see loadgen.Run)


def slow(streams: int, open_rate: float, hold: float, delay: float) -> dict[str, Any]:
    """Load of slow streams: started over streams/open_rate s (or slower, as the server takes
    them), each a delta every `delay` s for at least `hold` s (what is measured is holding
    streams, not relaying). They go on at that pace through a simulator gate, opened by
    `release` once every stream is open at once (or after GATE_TIMEOUT), so that however long
    starting takes, the first streams do not end before the last begin."""
    ramp = streams / open_rate
    tokens = max(1, math.ceil(hold / delay))
    return {"streams": streams, "ramp": ramp, "tokens": tokens, "delay": delay,
            "max_starting": MAX_STARTING,
            "gate": f"g{time.monotonic_ns()}", "gate_timeout": GATE_TIMEOUT,
            "timeout": tokens * delay + GATE_TIMEOUT + 60}


def release(sim: Server, gate: str) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", sim.port, timeout=10)
    try:
        conn.request("POST", f"/bench/release/{gate}")
        conn.getresponse().read()
    finally:
        conn.close()


def memory(server: Server, sim: Server, streams: int, open_rate: float, hold: float,
           delay: float) -> dict[str, Any]:
    """RSS with `streams` slow streams open, minus warm RSS with none, per stream.

    Taken when the load generator sees every stream open at once; if starts are so slow that
    the first streams end before the last begin, the largest RSS of the run over the most
    streams seen open at once instead (`all_open` false)."""
    time.sleep(1.0)  # let the warm-up's streams end and their memory settle
    warm = server.rss()
    seen: list[int] = []
    spec = slow(streams, open_rate, hold, delay)

    def on_open() -> None:
        for _ in range(3):  # a few samples while every stream is open; the largest counts
            seen.append(server.rss())
            time.sleep(0.2)
        release(sim, spec["gate"])

    t0 = time.monotonic()
    result = load(server, on_open, **spec)
    out: dict[str, Any] = {**verdicts(result), "warm_rss_mib": warm / 2**20,
                           "all_open": bool(seen), "peak_open": result["peak_open"]}
    if seen:
        top, n = max(seen), streams
    else:
        top = max((s[2] for s in server.samples if s[0] >= t0), default=warm)
        n = max(1, result["peak_open"])
    out.update(open_rss_mib=top / 2**20, per_stream_kib=(top - warm) / n / 1024)
    return out


def burst(server: Server, streams: int) -> dict[str, Any]:
    """`streams` streams started at the same instant: time to first token."""
    result = load(server, streams=streams, tokens=3, delay=0.2, ramp=0, timeout=120)
    return {**verdicts(result), "ttft_p50_ms": ms(result["ttft_p50_s"]),
            "ttft_p99_ms": ms(result["ttft_p99_s"]), "ttft_max_ms": ms(result["ttft_max_s"])}


def redis_load(server: Server, sim: Server, streams: int, per_second: float, hold: float,
               open_rate: float) -> dict[str, Any]:
    """`streams` streams at `per_second` deltas/s each, all open at once: opened at up to
    `open_rate` per second, each lasting at least `hold` s and going on (the simulator's gate)
    until every one is open. Every stream must be exact and all open at the same time (`passed`).
    Server CPU per delta over the steady window and, on Redis, Redis's figures
    (`redis_figures`)."""
    spec = slow(streams, open_rate, hold, 1 / per_second)
    result = load(server, functools.partial(release, sim, spec["gate"]), **spec)
    out: dict[str, Any] = {
        **verdicts(result), "peak_open": result["peak_open"],
        "passed": result["ok"] == streams and result["peak_open"] == streams,
        "deltas_per_stream_per_s": per_second, "wall_s": result["wall_s"],
        "ttft_p50_ms": ms(result["ttft_p50_s"]), "ttft_p99_ms": ms(result["ttft_p99_s"])}
    out.update(steady_figures(server, sim, result))
    out.update(redis_figures(server, result))
    return out


def capacity(server: Server, sim: Server, levels: list[int], open_rate: float, hold: float,
             delay: float) -> dict[str, Any]:
    """The most concurrent slow streams completed, all exact, trying `levels` in order.

    A level passes when every stream is exact and all were open at the same time; the first
    level that fails ends the search."""
    tried, best = [], 0
    for n in levels:
        t0 = time.monotonic()
        spec = slow(n, open_rate, hold, delay)
        result = load(server, functools.partial(release, sim, spec["gate"]), **spec)
        passed = result["ok"] == n and result["peak_open"] == n
        tried.append({**verdicts(result), "peak_open": result["peak_open"], "passed": passed,
                      "peak_rss_mib": max((s[2] for s in server.samples if s[0] >= t0),
                                          default=0) / 2**20,
                      "wall_s": result["wall_s"]})
        if not passed:
            break
        best = n
    return {"max_completed": best, "levels": tried}
