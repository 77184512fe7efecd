"""Measure the CPU it costs to read upstream SSE bodies: iter_raw() against rawbody.iter_body().

Runs the OpenAI-wire simulator in a subprocess (its CPU stays out of this one), opens N
concurrent streams through the SDK under gevent, waits until every response's headers are in
(the script holds the first chunk back for `--first-delay`), then reads all the bodies and
prints this process's CPU per chunk. `socket` reads the same stream from a plain gevent socket:
the floor. Bodies are only read, not parsed, so the differences are the transport's.

    .venv/bin/python bench/upstream_read_bench.py --streams 100 --tokens 100 --delay 0.05

`--keepalive` sets the pool's max_keepalive_connections (several values: one table each).
httpcore polls every idle pooled socket whenever a response opens or closes, and gevent's
select.poll costs ~28 µs a call, so with a full pool the close after each body costs as much
as the reads; `--keepalive 0` shows the read path alone, and `--real-poll` what a full pool
would cost if that check used the unpatched poll() (a poll with a zero timeout never blocks,
so it needs no gevent). `--timeout` adds a run of iter_body with a per-read timeout: its
gevent timer is the price of a backstop.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
from gevent.event import Event  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import httpx2  # noqa: E402
import openai  # noqa: E402

from streaming.upstream.rawbody import fallback_reason, iter_body  # noqa: E402

# It serves until its stdin closes, so that it goes when we do, however we end.
SIMULATOR = ("import sys; sys.path.insert(0, 'tests'); "
             "from upstream_sim import UpstreamSimulator; "
             "s = UpstreamSimulator().start(); print(s.port, flush=True); sys.stdin.read()")


def start_simulator() -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen([sys.executable, "-c", SIMULATOR], cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


def use_real_poll() -> None:
    """Make httpcore's check of idle pooled sockets use the unpatched select.poll."""
    import select

    import httpcore2._backends.sync as sync_backend
    from gevent.monkey import get_original

    real_poll = get_original("select", "poll")

    def is_socket_readable(sock: socket.socket | None) -> bool:
        fd = -1 if sock is None else sock.fileno()
        if fd < 0:
            return True
        poller = real_poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))

    sync_backend.is_socket_readable = is_socket_readable  # type: ignore[attr-defined]


def make_client(port: int, keepalive: int) -> openai.OpenAI:
    timeout = httpx2.Timeout(connect=10.0, read=65.0, write=30.0, pool=10.0)
    limits = httpx2.Limits(max_connections=1000, max_keepalive_connections=keepalive)
    client = openai.OpenAI(api_key="bench", base_url=f"http://127.0.0.1:{port}/v1",
                           max_retries=0, timeout=timeout,
                           http_client=openai.DefaultHttpxClient(timeout=timeout, limits=limits))
    _ = client.default_headers
    return client


class Barrier:
    """Count greenlets through a point; `event` is set when all N are there."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.event = Event()

    def arrive(self) -> None:
        self.n -= 1
        if self.n == 0:
            self.event.set()


def read_socket(port: int, body: bytes, opened: Barrier, go: Event, done: Barrier) -> None:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\n"
                 b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                 % (len(body), body))
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(65536)
    opened.arrive()
    go.wait()
    tail = head[-7:]
    while tail != b"\r\n0\r\n\r\n":  # the last chunk (the simulator sends no trailers)
        data = sock.recv(65536)
        if not data:
            break
        tail = (tail + data)[-7:]
    done.arrive()
    sock.close()


def read_sdk(client: openai.OpenAI, mode: str, script: dict[str, Any], opened: Barrier,
             go: Event, done: Barrier) -> None:
    messages: Any = [{"role": "user", "content": "SIM " + json.dumps(script)}]
    with client.chat.completions.with_streaming_response.create(
            model="bench", stream=True, messages=messages) as response:
        http_response = response.http_response
        opened.arrive()
        go.wait()
        if mode == "iter_raw":
            chunks = http_response.iter_raw()
        else:
            reason = fallback_reason(http_response)
            if reason is not None:
                raise SystemExit(f"iter_body would fall back ({reason}): nothing to measure")
            chunks = iter_body(http_response, timeout=65.0 if mode == "iter_body+timeout"
                               else None)
        for _ in chunks:
            pass
        done.arrive()


def run(mode: str, client: openai.OpenAI, port: int,
        args: argparse.Namespace) -> tuple[float, float]:
    """CPU µs per content chunk while N bodies are read (closing them included), and CPU ms
    per stream to open them (N at once)."""
    script = {"tokens": args.tokens, "delay": args.delay, "first_delay": args.first_delay}
    opened, done, go = Barrier(args.streams), Barrier(args.streams), Event()
    target: Callable[..., None]
    first: tuple[Any, ...]
    if mode == "socket":
        body = json.dumps({"model": "bench", "stream": True, "messages": [
            {"role": "user", "content": "SIM " + json.dumps(script)}]}).encode()
        target, first = read_socket, (port, body)
    else:
        target, first = read_sdk, (client, mode, script)
    start = time.process_time()
    greenlets = [gevent.spawn(target, *first, opened, go, done) for _ in range(args.streams)]
    for greenlet in greenlets:  # a failed stream never arrives: stop waiting for it
        greenlet.link_exception(lambda g: (opened.event.set(), done.event.set()))
    if not opened.event.wait(args.first_delay * 0.9 + 5):
        raise SystemExit("the streams did not open in time: raise --first-delay")
    go.set()
    opening = time.process_time() - start
    start = time.process_time()
    done.event.wait()
    reading = time.process_time() - start
    gevent.joinall(greenlets, raise_error=True)
    return reading / (args.streams * args.tokens) * 1e6, opening / args.streams * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--delay", type=float, default=0.05)
    parser.add_argument("--first-delay", type=float, default=2.0,
                        help="seconds the simulator holds the first chunk: time to open all")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--keepalive", type=int, nargs="+", default=[0, 256])
    parser.add_argument("--timeout", action="store_true",
                        help="also time iter_body with a per-read timeout")
    parser.add_argument("--real-poll", action="store_true",
                        help="check idle pooled sockets with the unpatched poll()")
    args = parser.parse_args()
    if args.real_poll:
        use_real_poll()

    platform.platform()  # the SDK's headers fork `uname -p` once: not N times, concurrently
    sim, port = start_simulator()
    modes = ["socket", "iter_raw", "iter_body"] + (["iter_body+timeout"] if args.timeout else [])
    try:
        print(f"{args.streams} streams x {args.tokens} chunks, {args.delay * 1000:.0f} ms apart; "
              f"CPU, {args.reps} runs each"
              + ("; idle sockets checked with the real poll()" if args.real_poll else ""))
        for keepalive in args.keepalive:
            client = make_client(port, keepalive)
            run("iter_raw", client, port, argparse.Namespace(  # warm up imports and the pool
                **{**vars(args), "streams": 10, "tokens": 5, "first_delay": 0.5}))
            results: dict[str, list[tuple[float, float]]] = {mode: [] for mode in modes}
            for _ in range(args.reps):
                for mode in modes:  # interleaved, so that a noisy neighbour hits all alike
                    results[mode].append(run(mode, client, port, args))
            print(f"\nmax_keepalive_connections={keepalive}"
                  "     read: us/chunk best, median   open: ms/stream median")
            for mode in modes:
                reads = [r for r, _ in results[mode]]
                opens = statistics.median(o for _, o in results[mode])
                print(f"  {mode:18s} {min(reads):6.1f} {statistics.median(reads):6.1f}"
                      f"   {opens:5.2f}")
            client.close()
    finally:
        sim.terminate()
        sim.wait()


if __name__ == "__main__":
    main()
