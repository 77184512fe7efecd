"""The benchmark's output: the side-by-side table, the chart, and the in-process parse cost."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

COLUMNS = (("ours", "ours"), ("ours_b1", "ours b=1"), ("ours_redis", "ours Redis"),
           ("baseline", "baseline"))
LABELS = {"ours": "ours", "ours_b1": "ours BUFFER_MAX_TOKENS=1", "ours_redis": "ours, Redis store",
          "baseline": "FastAPI baseline"}
COLORS = {"ours": "#2a7ab9", "ours_b1": "#7fb3dc", "ours_redis": "#3f9a55",
          "baseline": "#d9822b"}
# Redis's figures, shown in the ours Redis column; two workers: the `redisload` part.
REDIS_ROWS = (("redis_cpu_per_delta_us", "Redis's own CPU per delta (µs)", 1),
              ("redis_commands_per_delta", "Redis commands per delta (in scripts too)", 2),
              ("redis_scripts_per_delta", "Redis scripts called per delta", 3))


def _get(doc: dict[str, Any], *path: str) -> Any:
    node: Any = doc
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _num(value: float | None, digits: int = 0) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _pair(a: float | None, b: float | None, digits: int = 0) -> str:
    return "—" if a is None and b is None else f"{_num(a, digits)} / {_num(b, digits)}"


def error_count(results: dict[str, Any]) -> dict[str, int]:
    """Streams run and streams not exact, over every run of the benchmark."""
    total = {"streams": 0, "not_exact": 0}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "streams" in node and "ok" in node:
                total["streams"] += node["streams"]
                total["not_exact"] += node["streams"] - node["ok"]
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(results)
    return total


def rows(doc: dict[str, Any]) -> list[tuple[str, list[str]]]:
    res, args = doc["results"], doc["meta"]["args"]
    n = args["rate_streams"]
    out: list[tuple[str, list[str]]] = []
    for rate in (res.get("cpu") or {}):
        out.append((f"server CPU per delta, {n} streams x {rate}/s (µs)",
                    [_num(_get(res, "cpu", rate, k, "cpu_per_delta_us")) for k, _ in COLUMNS]))
    if "fixed" in res:
        out.append(("server CPU per one-delta stream (ms)",
                    [_num(_get(res, "fixed", k, "cpu_per_stream_ms"), 2) for k, _ in COLUMNS]))
    for rate in (res.get("ttft") or {}):
        out.append((f"added TTFT p50 / p99, {n} streams x {rate}/s (ms)",
                    [_pair(_get(res, "ttft", rate, k, "added_ttft_p50_ms"),
                           _get(res, "ttft", rate, k, "added_ttft_p99_ms"), 1)
                     for k, _ in COLUMNS]))
        out.append((f"added delay per delta, mean / p99, x {rate}/s (ms)",
                    [_pair(_get(res, "ttft", rate, k, "added_delay_per_delta_ms"),
                           _get(res, "ttft", rate, k, "added_delay_p99_ms"), 1)
                     for k, _ in COLUMNS]))
    if "memory" in res:
        out.append((f"memory per open stream, {args['memory_streams']} open (KiB)",
                    [_num(_get(res, "memory", k, "per_stream_kib"), 1) for k, _ in COLUMNS]))
    for workers in ("w1", "w2") if "burst" in res else ():
        out.append((f"burst of {args['burst_streams']}: TTFT p50 / p99, {workers[1]} "
                    f"worker{'s' if workers == 'w2' else ''} (ms)",
                    [_pair(_get(res, "burst", f"{k}_{workers}", "ttft_p50_ms"),
                           _get(res, "burst", f"{k}_{workers}", "ttft_p99_ms"))
                     for k, _ in COLUMNS]))
    if "capacity" in res:
        out.append(("most concurrent slow streams completed, 2 workers",
                    [_num(_get(res, "capacity", f"{k}_w2", "max_completed")) if k != "ours_b1"
                     else "—" for k, _ in COLUMNS]))
    for rate in (res.get("cpu") or {}):
        fig = _get(res, "cpu", rate, "ours_redis")
        if fig is None:
            continue
        for key, label, digits in REDIS_ROWS:
            out.append((f"  {label}, x {rate}/s", _only("ours_redis", _num(fig.get(key), digits))))
        out.append((f"  Redis connections per worker at the peak, x {rate}/s",
                    _only("ours_redis", _connections(fig.get("redis_connections")))))
    load = res.get("redisload")
    if load:
        n, r = args["redisload_streams"], args["redisload_rate"]
        head = f"{n} concurrent streams x {r:g}/s, 2 workers"
        out.append((f"{head}: exact / all open at once",
                    [_exact(_get(load, f"{k}_w2")) for k, _ in COLUMNS]))
        out.append(("  server CPU per delta (µs)",
                    [_num(_get(load, f"{k}_w2", "cpu_per_delta_us")) for k, _ in COLUMNS]))
        out.append(("  TTFT p50 / p99 (ms)",
                    [_pair(_get(load, f"{k}_w2", "ttft_p50_ms"),
                           _get(load, f"{k}_w2", "ttft_p99_ms")) for k, _ in COLUMNS]))
        for key, label, digits in REDIS_ROWS:
            out.append((f"  {label}",
                        [_num(_get(load, f"{k}_w2", key), digits) for k, _ in COLUMNS]))
        out.append(("  Redis connections per worker at the peak",
                    [_connections(_get(load, f"{k}_w2", "redis_connections"))
                     for k, _ in COLUMNS]))
    return out


def _only(key: str, cell: str) -> list[str]:
    return [cell if k == key else "" for k, _ in COLUMNS]


def _connections(conn: dict[str, Any] | None) -> str:
    """Connections per worker at the peak, e.g. `3 + 3`."""
    if not conn or not conn.get("per_worker"):
        return "—"
    return " + ".join(str(c) for c in conn["per_worker"])


def _exact(fig: dict[str, Any] | None) -> str:
    if fig is None:
        return "—"
    return f"{fig['ok']:,}/{fig['streams']:,} {'yes' if fig.get('passed') else 'NO'}"


def redis_vs_memory(doc: dict[str, Any]) -> list[str]:
    """Issue 6's figures in a sentence per rate: server CPU per delta with Redis over the memory
    store's (at most 1.5), and Redis's own CPU per delta."""
    lines = []
    for rate, by in (_get(doc, "results", "cpu") or {}).items():
        mem, red = _get(by, "ours", "cpu_per_delta_us"), _get(by, "ours_redis", "cpu_per_delta_us")
        own = _get(by, "ours_redis", "redis_cpu_per_delta_us")
        if mem and red is not None:
            lines.append(f"Redis vs memory, {doc['meta']['args']['rate_streams']} streams x "
                         f"{rate}/s: server CPU per delta {red:.1f} µs vs {mem:.1f} µs "
                         f"({red / mem:.2f} times; at most 1.5 wanted), Redis's own "
                         f"{_num(own, 1)} µs per delta")
    return lines


def table(doc: dict[str, Any]) -> str:
    body = rows(doc)
    width = max([len(label) for label, _ in body] + [10])
    lines = [f"{'':{width}}  " + "  ".join(f"{title:>14}" for _, title in COLUMNS)]
    lines += [f"{label:{width}}  " + "  ".join(f"{c:>14}" for c in cells) for label, cells in body]
    parse = doc["results"].get("parse")
    if parse:
        lines.append(f"parse one chunk: ours {_num(parse.get('ours_us'), 1)} µs, the SDK's typed "
                     f"chunk {_num(parse.get('sdk_us'), 1)} µs")
    for rate, by in (doc["results"].get("cpu") or {}).items():
        sim = [_get(by, k, "sim_cpu_per_delta_us") for k in (*dict(COLUMNS), "direct")]
        if any(v is not None for v in sim):
            lines.append(f"simulator CPU per delta at {rate}/s "
                         f"({', '.join([*dict(COLUMNS).values(), 'direct'])}): "
                         + ", ".join(_num(v) for v in sim) + " µs")
    lines += redis_vs_memory(doc)
    direct = _get(doc, "results", "burst", "direct")
    if direct:
        lines.append(f"burst straight to the simulator: TTFT p50 / p99 "
                     f"{_pair(direct['ttft_p50_ms'], direct['ttft_p99_ms'])} ms")
    errors = doc["errors"]
    lines.append(f"streams checked: {errors['streams']:,}, not exact or failed: "
                 f"{errors['not_exact']:,}; load average {doc['meta']['loadavg_start'][0]:.2f} "
                 f"at the start, {doc['meta']['loadavg_end'][0]:.2f} at the end")
    return "\n".join(lines)


def chart(doc: dict[str, Any], path: Path) -> bool:
    """A PNG of the main figures, one panel each; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Rectangle
    except ImportError:
        return False
    res, args = doc["results"], doc["meta"]["args"]
    n = args["rate_streams"]
    panels: list[tuple[str, dict[str, float | None]]] = []
    # Redis's own CPU per delta, stacked (hatched) on the bar of the server that used it.
    on_top: dict[int, dict[str, float]] = {}
    for rate, by in (res.get("cpu") or {}).items():
        on_top[len(panels)] = {k: v for k, _ in COLUMNS
                               if (v := _get(by, k, "redis_cpu_per_delta_us")) is not None}
        panels.append((f"server CPU per delta, µs\n({n} streams x {rate} deltas/s)",
                       {k: _get(by, k, "cpu_per_delta_us") for k, _ in COLUMNS}))
    if "fixed" in res:
        panels.append(("server CPU per one-delta stream, ms",
                       {k: _get(res, "fixed", k, "cpu_per_stream_ms") for k, _ in COLUMNS}))
    for rate, by in (res.get("ttft") or {}).items():
        panels.append((f"added time to first token p99, ms\n({n} streams x {rate} deltas/s)",
                       {k: _get(by, k, "added_ttft_p99_ms") for k, _ in COLUMNS}))
        break
    if "memory" in res:
        panels.append(("memory per open stream, KiB",
                       {k: _get(res, "memory", k, "per_stream_kib") for k, _ in COLUMNS}))
    if "burst" in res:
        panels.append((f"TTFT p99 of a burst of {doc['meta']['args']['burst_streams']}, ms\n"
                       "(1 worker)",
                       {k: _get(res, "burst", f"{k}_w1", "ttft_p99_ms") for k, _ in COLUMNS}))
        panels.append((f"TTFT p99 of a burst of {doc['meta']['args']['burst_streams']}, ms\n"
                       "(2 workers)",
                       {k: _get(res, "burst", f"{k}_w2", "ttft_p99_ms") for k, _ in COLUMNS}))
    if "capacity" in res:
        panels.append(("concurrent slow streams\ncompleted (2 workers)",
                       {k: _get(res, "capacity", f"{k}_w2", "max_completed")
                        for k, _ in COLUMNS}))
    if "redisload" in res:
        load = res["redisload"]
        on_top[len(panels)] = {k: v for k, _ in COLUMNS
                               if (v := _get(load, f"{k}_w2", "redis_cpu_per_delta_us"))
                               is not None}
        panels.append((f"server CPU per delta, µs, 2 workers\n({args['redisload_streams']} "
                       f"streams x {args['redisload_rate']:g} deltas/s)",
                       {k: _get(load, f"{k}_w2", "cpu_per_delta_us") for k, _ in COLUMNS}))
    if not panels:
        return False
    cols = min(4, len(panels))
    rows_ = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows_, cols, figsize=(3.4 * cols, 3.2 * rows_), squeeze=False)
    for i, (ax, (title, values)) in enumerate(zip(axes.flat, panels, strict=False)):
        names = [k for k, v in values.items() if v is not None]
        bars = ax.bar(range(len(names)), [values[k] for k in names],
                      color=[COLORS[k] for k in names])
        ax.bar_label(bars, fmt=lambda v: f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}",
                     fontsize=8, label_type="edge" if not on_top.get(i) else "center")
        for j, k in enumerate(names):
            extra = on_top.get(i, {}).get(k)
            if extra:
                top = ax.bar([j], [extra], bottom=[values[k]], color="white",
                             edgecolor=COLORS[k], hatch="///")
                ax.bar_label(top, labels=[f"+{extra:.3g} Redis"], fontsize=8)
        ax.set_xticks([])
        ax.set_title(title, fontsize=9)
        ax.margins(y=0.15)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    handles = [Rectangle((0, 0), 1, 1, color=COLORS[k]) for k, _ in COLUMNS]
    fig.legend(handles, [LABELS[k] for k, _ in COLUMNS], loc="lower center", ncol=len(COLUMNS),
               fontsize=9, frameon=False)
    meta = doc["meta"]
    fig.suptitle(f"flask-llm-stream vs FastAPI + uvicorn + AsyncOpenAI  ({meta['date']}, "
                 f"{meta['cpus']} CPUs, {meta['commit']})", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def parse_cost(n: int = 20000) -> dict[str, float | None]:
    """Per-chunk parse: ours (raw bytes + orjson) against the SDK's typed chunk model."""
    from openai.types.chat import ChatCompletionChunk

    raw = json.dumps({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
                      "model": "m", "choices": [{"index": 0, "delta": {"content": " token"},
                                                 "finish_reason": None}]}).encode()
    t0 = time.process_time()
    for _ in range(n):
        ChatCompletionChunk.model_validate(json.loads(raw))
    sdk = (time.process_time() - t0) / n * 1e6
    try:
        from streaming.upstream.chunks import parse_chunk
    except ImportError:  # the module is being reshaped: report the SDK's figure alone
        return {"ours_us": None, "sdk_us": sdk}
    t0 = time.process_time()
    for _ in range(n):
        parse_chunk(raw)
    return {"ours_us": (time.process_time() - t0) / n * 1e6, "sdk_us": sdk}
