"""Measure the CPU it costs to read upstream SSE bodies, per transport, under gevent.

Runs the OpenAI-wire simulator in a subprocess (its CPU stays out of this one), opens N
concurrent streams, waits until every response's headers are in (the script holds the first
chunk back for `--first-delay`), then reads all the bodies and prints this process's CPU per
chunk, and per stream for opening them. Bodies are only read, not parsed, so the differences
are the transports'. Modes:

- `socket`: a plain gevent socket, no HTTP parsing: the floor.
- `httpx2`: the SDK's default transport (httpx2 over httpcore2), `iter_raw()`.
- `urllib3-transport`: this project's transport under the SDK (`streaming/upstream/
  transport.py`), its body read as the provider reads it.
- `urllib3`, `geventhttpclient`: the library alone (`read1()`; `readline()`, the only public
  read of geventhttpclient that returns before a whole block has arrived). geventhttpclient
  is not a dependency: `pip install geventhttpclient` to include it.

The SDK modes open with the SDK's low-level `client.post()`.

    .venv/bin/python bench/upstream_read_bench.py --streams 100 --tokens 100 --delay 0.05

`--read-timeout` sets the per-read socket timeout of the urllib3 modes (0: none): under gevent
each read with a timeout arms a timer.
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
import urllib3  # noqa: E402

from streaming.upstream.transport import Urllib3Transport, body_of  # noqa: E402

MODES = ("socket", "httpx2", "urllib3-transport", "urllib3", "urllib3-chunked",
         "geventhttpclient")
# It serves until its stdin closes, so that it goes when we do, however we end.
SIMULATOR = ("import sys; sys.path.insert(0, 'tests'); "
             "from upstream_sim import UpstreamSimulator; "
             "s = UpstreamSimulator().start(); print(s.port, flush=True); sys.stdin.read()")


def start_simulator() -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen([sys.executable, "-c", SIMULATOR], cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


class Clients:
    """One client per mode, pools sized for every stream at once."""

    def __init__(self, port: int, streams: int, read_timeout: float | None) -> None:
        self.port = port
        timeout = httpx2.Timeout(connect=10.0, read=read_timeout, write=30.0, pool=10.0)
        limits = httpx2.Limits(max_connections=1000, max_keepalive_connections=32)
        base = f"http://127.0.0.1:{port}/v1"
        self.sdk = {
            "httpx2": openai.OpenAI(
                api_key="bench", base_url=base, max_retries=0, timeout=timeout,
                http_client=openai.DefaultHttpxClient(timeout=timeout, limits=limits)),
            "urllib3-transport": openai.OpenAI(
                api_key="bench", base_url=base, max_retries=0, timeout=timeout,
                http_client=openai.DefaultHttpxClient(
                    timeout=timeout, transport=Urllib3Transport(
                        max_idle=1000, body_read_timeout=read_timeout is not None))),
        }
        for client in self.sdk.values():
            _ = client.default_headers
        self.urllib3 = urllib3.HTTPConnectionPool(
            "127.0.0.1", port, maxsize=max(streams, 10), block=True, retries=False,
            timeout=urllib3.Timeout(connect=10.0, read=read_timeout))
        self.geventhttpclient: Any = None
        try:  # measured for comparison only: not a dependency of the project
            from geventhttpclient import HTTPClient
        except ImportError:
            return
        self.geventhttpclient = HTTPClient("127.0.0.1", port, concurrency=max(streams, 10),
                                           network_timeout=read_timeout)

    def close(self) -> None:
        for client in self.sdk.values():
            client.close()
        self.urllib3.close()
        if self.geventhttpclient is not None:
            self.geventhttpclient.close()


class Barrier:
    """Count greenlets through a point; `event` is set when all N are there."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.event = Event()

    def arrive(self) -> None:
        self.n -= 1
        if self.n == 0:
            self.event.set()


def read_socket(clients: Clients, body: bytes, opened: Barrier, go: Event,
                done: Barrier) -> None:
    sock = socket.create_connection(("127.0.0.1", clients.port))
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


def read_sdk(clients: Clients, mode: str, body: bytes, opened: Barrier, go: Event,
             done: Barrier) -> None:
    response = clients.sdk[mode].post("/chat/completions", content=body,
                                      cast_to=httpx2.Response, stream=True)
    try:
        opened.arrive()
        go.wait()
        own = body_of(response)  # as the provider reads it: the transport's own body
        for _ in response.iter_raw() if own is None else own:
            pass
        done.arrive()
    finally:
        response.close()


def open_urllib3(clients: Clients, body: bytes) -> Any:
    return clients.urllib3.urlopen(
        "POST", "/v1/chat/completions", body=body, preload_content=False,
        headers={"Content-Type": "application/json"})


def read_urllib3(clients: Clients, body: bytes, opened: Barrier, go: Event,
                 done: Barrier) -> None:
    response = open_urllib3(clients, body)
    opened.arrive()
    go.wait()
    while response.read1(65536):
        pass
    done.arrive()


def read_urllib3_chunked(clients: Clients, body: bytes, opened: Barrier, go: Event,
                         done: Barrier) -> None:
    response = open_urllib3(clients, body)
    opened.arrive()
    go.wait()
    for _ in response.read_chunked(decode_content=False):
        pass
    done.arrive()


def read_geventhttpclient(clients: Clients, body: bytes, opened: Barrier, go: Event,
                          done: Barrier) -> None:
    response = clients.geventhttpclient.request(
        "POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
    opened.arrive()
    go.wait()
    while response.readline(b"\n"):
        pass
    response.release()
    done.arrive()


def run(mode: str, clients: Clients, args: argparse.Namespace) -> tuple[float, float]:
    """CPU µs per content chunk while N bodies are read (closing them included), and CPU ms
    per stream to open them (N at once)."""
    script = {"tokens": args.tokens, "delay": args.delay, "first_delay": args.first_delay}
    body = json.dumps({"model": "bench", "stream": True, "messages": [
        {"role": "user", "content": "SIM " + json.dumps(script)}]}).encode()
    opened, done, go = Barrier(args.streams), Barrier(args.streams), Event()
    target: Callable[..., None]
    first: tuple[Any, ...]
    if mode in clients.sdk:
        target, first = read_sdk, (clients, mode, body)
    else:
        readers = {"socket": read_socket, "urllib3": read_urllib3,
                   "urllib3-chunked": read_urllib3_chunked,
                   "geventhttpclient": read_geventhttpclient}
        target, first = readers[mode], (clients, body)
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
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--read-timeout", type=float, default=65.0,
                        help="per-read timeout in seconds, 0 for none")
    args = parser.parse_args()

    platform.platform()  # the SDK's headers fork `uname -p` once: not N times, concurrently
    sim, port = start_simulator()
    clients = Clients(port, args.streams, args.read_timeout or None)
    if clients.geventhttpclient is None and "geventhttpclient" in args.modes:
        print("geventhttpclient is not installed (pip install geventhttpclient): skipped")
        args.modes.remove("geventhttpclient")
    try:
        warm = argparse.Namespace(**{**vars(args), "streams": 10, "tokens": 5,
                                     "first_delay": 0.5})
        for mode in args.modes:  # warm up imports and pools
            run(mode, clients, warm)
        results: dict[str, list[tuple[float, float]]] = {mode: [] for mode in args.modes}
        for _ in range(args.reps):
            for mode in args.modes:  # interleaved, so that a noisy neighbour hits all alike
                results[mode].append(run(mode, clients, args))
        print(f"{args.streams} streams x {args.tokens} chunks, {args.delay * 1000:.0f} ms apart; "
              f"read timeout {args.read_timeout or None}; CPU, {args.reps} runs each")
        print("                      read: us/chunk best, median   open: ms/stream median")
        for mode in args.modes:
            reads = [r for r, _ in results[mode]]
            opens = statistics.median(o for _, o in results[mode])
            print(f"  {mode:18s} {min(reads):6.1f} {statistics.median(reads):6.1f}"
                  f"   {opens:5.2f}")
    finally:
        clients.close()
        sim.terminate()
        sim.wait()


if __name__ == "__main__":
    main()
