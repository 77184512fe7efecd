"""Prometheus metrics. With PROMETHEUS_MULTIPROC_DIR set (gunicorn.conf.py sets it), every
worker writes its own files and `/metrics` sums them, so the page shows all workers together.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

from .events import Failed, Terminal, outcome
from .green import tasks_running

if TYPE_CHECKING:
    from .relay_core import RelayCore
    from .stores import StreamMeta

# One JSON line per stream end, on a logger of its own so operators can route it.
stream_log = logging.getLogger("streaming.streams")

# The error codes that come from the upstream (the others are ours or the store's).
UPSTREAM_CODES = frozenset(("timeout", "rate_limited", "upstream_auth", "upstream_unavailable",
                            "upstream_error"))

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
_DURATION_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)


class Metrics:
    """The service's metrics; one instance per app."""

    def __init__(self) -> None:
        self._multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        # In multiprocess mode values live in files, not in a registry: register nowhere, and
        # collect from the files on each scrape. Otherwise a private registry, so that several
        # apps in one process (tests, a team's app) never clash.
        self._registry = None if self._multiprocess else CollectorRegistry()
        reg = self._registry
        self.streams_active = Gauge(
            "llm_streams_active", "Generations running now.",
            registry=reg, multiprocess_mode="livesum",
        )
        self.streams_ended = Counter(
            "llm_streams_ended", "Generations ended, by outcome (finish reason or error code).",
            ["outcome"], registry=reg,
        )
        self.streams_started = Counter(
            "llm_streams_started", "Generations started.", registry=reg,
        )
        self.first_token_seconds = Histogram(
            "llm_time_to_first_token_seconds", "From the request to the first delta.",
            buckets=_TTFT_BUCKETS, registry=reg,
        )
        self.deltas = Counter(
            "llm_deltas_relayed", "Upstream deltas relayed (content, reasoning, tool calls).",
            registry=reg,
        )
        self.requests_refused = Counter(
            "llm_requests_refused", "Requests refused before reaching the upstream, by status.",
            ["status"], registry=reg,
        )
        self.clients_attached = Gauge(
            "llm_clients_attached", "Clients following a stream now.",
            registry=reg, multiprocess_mode="livesum",
        )
        self.stream_duration_seconds = Histogram(
            "llm_stream_duration_seconds", "From the request to the stream's terminal event.",
            buckets=_DURATION_BUCKETS, registry=reg,
        )
        self.upstream_errors = Counter(
            "llm_upstream_errors", "Streams that ended in an upstream error, by error code.",
            ["code"], registry=reg,
        )
        self.bytes_sent = Counter(
            "llm_bytes_sent", "Bytes written to clients in stream responses (counted per "
            "response, at its end).", registry=reg,
        )
        self.heartbeats = Counter(
            "llm_heartbeats", "Heartbeat comments written to clients.", registry=reg,
        )
        self.resumes = Counter(
            "llm_resumes", "Attaches to an existing stream (resumes and extra followers).",
            registry=reg,
        )
        self.disconnects = Counter(
            "llm_disconnects", "Stream responses that ended before [DONE], by cause: "
            "client_closed (noticed at once), send_timeout (the client stopped reading for "
            "SEND_TIMEOUT), write_failed, expired.", ["cause"], registry=reg,
        )

        self.tasks = Gauge(
            "llm_worker_tasks", "Greenlets (or threads) this worker's streams and stores run, "
            "per worker: back to its resting value when streams are gone.",
            registry=reg, multiprocess_mode="liveall",
        )
        self.open_files = Gauge(
            "llm_worker_open_files", "File descriptors this worker holds, per worker.",
            registry=reg, multiprocess_mode="liveall",
        )

    def stream_ended(self, meta: StreamMeta, core: RelayCore, ended: Terminal, *, now: float,
                     events: int, size: int, resumes: int) -> None:
        """Count a stream's end, and log one structured line about it (no key, no text)."""
        label = outcome(ended)
        duration = now - core.started_at
        self.streams_active.dec()
        self.streams_ended.labels(outcome=label).inc()
        self.stream_duration_seconds.observe(duration)
        if core.deltas:
            self.deltas.inc(core.deltas)  # once per stream: the hot path counts nothing
        if isinstance(ended, Failed) and ended.code in UPSTREAM_CODES:
            self.upstream_errors.labels(code=ended.code).inc()
        ttft = core.first_delta_at
        stream_log.info(json.dumps({
            "event": "stream_end", "stream": meta.stream_id[:8], "model": meta.model,
            "format": meta.format, "outcome": label,
            "ttft_ms": None if ttft is None else round((ttft - core.started_at) * 1000, 1),
            "deltas": core.deltas, "events": events, "bytes": size,
            "duration_ms": round(duration * 1000, 1), "resumes": resumes,
        }))

    def exposition(self) -> bytes:
        # Read when asked, for the worker that answers (cheap: a counter and a directory).
        self.tasks.set(tasks_running())
        with contextlib.suppress(OSError):
            self.open_files.set(len(os.listdir("/proc/self/fd")))
        if self._registry is not None:
            return generate_latest(self._registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]  # untyped upstream
        return generate_latest(registry)
