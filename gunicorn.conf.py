"""gunicorn settings for the streaming service: `gunicorn -c gunicorn.conf.py wsgi:app`.

Every value comes from the environment (PROTOCOL.md, "Configuration") with the contract's
defaults; see the comments for why each one is what it is.
"""

from __future__ import annotations

import gc
import os
import resource
import shutil
import tempfile

bind = os.environ.get("BIND", "127.0.0.1:8000")
# With REDIS_URL set, run one worker per core (and as many hosts as you need): any worker
# serves any request of any stream. With the in-memory store, a resume, a second follower or a
# cancel must reach the worker that runs the stream: keep one worker (it serves thousands of
# streams), or put sticky sessions in front.
workers = int(os.environ.get("WEB_CONCURRENCY", "1"))
if workers < 1:  # gunicorn would run a master with no worker, answering nothing, forever
    raise SystemExit(f"Error: invalid settings: WEB_CONCURRENCY: must be 1 or more (got {workers})")

# One gevent worker serves thousands of streams: each is two greenlets (its reader, and the
# response of each client) waiting on sockets.
worker_class = "gevent"
worker_connections = int(os.environ.get("WORKER_CONNECTIONS", "10000"))

# `timeout` is the worker's heartbeat to the master, not a request limit: a gevent worker
# beats once a second from its hub, so 30 s only fires when the hub is truly stuck (a CPU-bound
# bug). Streams are bounded by STREAM_TIMEOUT instead.
timeout = 30
# After SIGTERM the worker stops accepting, answers 503 on kept-alive connections, and gives
# running streams this long to finish before it is killed (finally blocks included). Streams
# run up to STREAM_TIMEOUT (600 s), far longer than a deploy should wait; 30 s (or
# GRACEFUL_TIMEOUT) lets most answers end cleanly. Just before the kill, streams still running
# end with an `error` event (`producer_lost`), so clients see why rather than a cut connection.
graceful_timeout = int(os.environ.get("GRACEFUL_TIMEOUT", "30"))
# Idle keep-alive between requests (nginx -> gunicorn); streams themselves are not idle.
keepalive = 5

# Logs to stdout/stderr, for the process supervisor to collect. The access log never holds
# headers (no Authorization) and our log lines never print keys.
accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info")
# The path without its query: a resume URL carries the stream's resume token (`?token=`).
access_log_format = '%(h)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(D)sus'

# Never --preload: the app (and its openai client) must be built in each worker after gevent
# patches the standard library.
preload_app = False

# Every stream holds two sockets: the client's and the upstream's.
_wanted_files = 2 * worker_connections + 256


def _raise_open_files_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _wanted_files if hard == resource.RLIM_INFINITY else min(_wanted_files, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


_raise_open_files_limit()

# /metrics sums all workers: prometheus_client's multiprocess mode needs a directory that is
# empty when the server starts; workers inherit the variable.
_own_metrics_dir = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if _own_metrics_dir:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="llm-stream-metrics-")
else:
    _dir = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    os.makedirs(_dir, exist_ok=True)
    for _name in os.listdir(_dir):
        if _name.endswith(".db"):
            os.unlink(os.path.join(_dir, _name))


def on_starting(server):  # type: ignore[no-untyped-def]
    if workers > 1 and not os.environ.get("REDIS_URL"):
        server.log.warning(
            "WEB_CONCURRENCY=%d with the in-memory store (REDIS_URL unset): a resume, a second "
            "follower or a cancel that reaches another worker than the stream's will miss it; "
            "set REDIS_URL, or run one worker", workers)


def post_worker_init(worker):  # type: ignore[no-untyped-def]
    # Let the app see SIGTERM: requests on kept-alive connections then get 503.
    manager = getattr(worker.wsgi, "extensions", {}).get("llm_stream")
    if manager is not None:
        manager.watch_server(lambda: worker.alive, worker.cfg.graceful_timeout)
    # The cyclic garbage collector: what the worker imported and built at start lives as long
    # as it does (frozen: never scanned again), and a stream start allocates a few thousand
    # objects, most freed by reference counting, so the youngest generation is collected
    # every 10,000 allocations rather than 700. Measured over 2000 stream starts: 0.5 s of
    # collection -> 0.19 s (about 6 % of their CPU).
    gc.freeze()
    gc.set_threshold(10_000, 20, 10)


def worker_exit(server, worker):  # type: ignore[no-untyped-def]
    # The worker is leaving (its streams have ended): give up its store lease now, so that
    # other workers never wait for it to lapse. A worker that failed to boot has no app.
    manager = getattr(getattr(worker, "wsgi", None), "extensions", {}).get("llm_stream")
    if manager is not None:
        try:
            manager.store.close()
        except Exception:  # exiting anyway: the lease lapses by itself
            server.log.warning("closing the stream store failed", exc_info=True)


def child_exit(server, worker):  # type: ignore[no-untyped-def]
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):  # type: ignore[no-untyped-def]
    if _own_metrics_dir:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
