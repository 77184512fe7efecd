"""Measure the client CPU it costs to start an upstream stream, under gevent.

Runs the OpenAI-wire simulator in a subprocess (its CPU stays out of this one) and starts
`--streams` one-token streams, `--concurrency` at a time, each read to its end; prints this
process's CPU per stream. Modes:

- `provider`: the project's `OpenAIProvider.open()` as the relay calls it, from the tree given
  by `--root` (default: this one), so the same command measures a before and an after:
  `git archive <commit> streaming | tar -x -C /tmp/before` and `--root /tmp/before`.
- `sdk-create`: `chat.completions.with_streaming_response.create` over the SDK's default
  transport, the body read with `iter_raw()` (the SDK's typed path, untyped chunks).
- `sdk-post`: the SDK's low-level `client.post()` with a body serialised once, over the
  default transport; `sdk-post-urllib3`: the same over this project's urllib3 transport.
- `urllib3`, `geventhttpclient`: the HTTP library alone, no SDK: the floor of each
  (geventhttpclient is not a dependency: `pip install geventhttpclient` to include it).

    .venv/bin/python bench/upstream_start_bench.py --streams 2000 --concurrency 100
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import gevent.pool  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SIMULATOR = ("import sys; sys.path.insert(0, 'tests'); "
             "from upstream_sim import UpstreamSimulator; "
             "s = UpstreamSimulator().start(); print(s.port, flush=True); sys.stdin.read()")
MODES = ("provider", "sdk-create", "sdk-post", "sdk-post-urllib3", "urllib3", "geventhttpclient")
MESSAGES = [{"role": "user", "content": 'SIM {"tokens": 1}'}]


def start_simulator() -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen([sys.executable, "-c", SIMULATOR], cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


def make_starter(mode: str, port: int, concurrency: int) -> Callable[[], None]:
    """A function that runs one one-token stream to its end."""
    base = f"http://127.0.0.1:{port}/v1"
    if mode == "provider":
        from streaming.settings import Settings
        from streaming.upstream.openai import OpenAIProvider

        settings = Settings(LLM_PROVIDER="openai", OPENAI_API_KEY="bench",
                            OPENAI_BASE_URL=base, WORKER_CONNECTIONS=max(concurrency, 100))
        provider = OpenAIProvider(settings)
        request = {"model": "bench", "messages": MESSAGES}

        def run_provider() -> None:
            with provider.open(request) as stream:
                for _ in stream:
                    pass

        return run_provider
    if mode.startswith("sdk"):
        import httpx2
        import openai

        transport: Any = None
        if mode == "sdk-post-urllib3":
            from streaming.upstream.transport import Urllib3Transport

            transport = Urllib3Transport(max_idle=max(concurrency, 100))
        limits = httpx2.Limits(max_connections=max(concurrency, 100),
                               max_keepalive_connections=32)
        http = (httpx2.Client(transport=transport, timeout=60.0) if transport
                else openai.DefaultHttpxClient(limits=limits, timeout=60.0))
        client = openai.OpenAI(api_key="bench", base_url=base, max_retries=0, http_client=http)
        _ = client.default_headers
        params: Any = {"model": "bench", "messages": MESSAGES, "stream": True,
                       "stream_options": {"include_usage": True}}
        if mode == "sdk-create":
            def run_create() -> None:
                with client.chat.completions.with_streaming_response.create(**params) as r:
                    for _ in r.http_response.iter_raw():
                        pass

            return run_create

        def run_post() -> None:
            body = json.dumps(params).encode()  # per stream, as the provider does
            response = client.post("/chat/completions", content=body, cast_to=httpx2.Response,
                                   stream=True)
            try:
                for _ in response.iter_raw():
                    pass
            finally:
                response.close()

        return run_post
    payload = json.dumps({"model": "bench", "messages": MESSAGES, "stream": True}).encode()
    headers = {"Content-Type": "application/json", "Authorization": "Bearer bench"}
    if mode == "urllib3":
        import urllib3

        pool = urllib3.HTTPConnectionPool("127.0.0.1", port, maxsize=max(concurrency, 100),
                                          block=True, retries=False)

        def run_urllib3() -> None:
            response = pool.urlopen("POST", "/v1/chat/completions", body=payload,
                                    headers=headers, preload_content=False)
            while response.read1(65536):
                pass

        return run_urllib3
    from geventhttpclient import HTTPClient

    http_client = HTTPClient("127.0.0.1", port, concurrency=max(concurrency, 100),
                             network_timeout=60.0)

    def run_geventhttpclient() -> None:
        response = http_client.request("POST", "/v1/chat/completions", body=payload,
                                       headers=headers)
        while response.readline(b"\n"):
            pass
        response.release()

    return run_geventhttpclient


def run(starter: Callable[[], None], streams: int, concurrency: int) -> float:
    """CPU ms per stream for `streams` streams, `concurrency` at a time."""
    pool = gevent.pool.Pool(concurrency)
    start = time.process_time()
    for _ in range(streams):
        pool.spawn(starter)
    pool.join(raise_error=True)
    return (time.process_time() - start) / streams * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--root", type=Path, default=ROOT,
                        help="the tree whose `streaming` package the provider mode imports")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    sys.path[:0] = [str(args.root.resolve())]
    os.environ.pop("OPENAI_API_KEY", None)

    platform.platform()  # the SDK's headers fork `uname -p` once: not N times, concurrently
    sim, port = start_simulator()
    if "geventhttpclient" in args.modes:
        try:
            import geventhttpclient  # noqa: F401
        except ImportError:
            print("geventhttpclient is not installed (pip install geventhttpclient): skipped")
            args.modes.remove("geventhttpclient")
    try:
        starters = {mode: make_starter(mode, port, args.concurrency) for mode in args.modes}
        for starter in starters.values():  # warm up imports, pools and caches
            run(starter, min(args.concurrency, 50), args.concurrency)
        results: dict[str, list[float]] = {mode: [] for mode in args.modes}
        for _ in range(args.reps):
            for mode in args.modes:  # interleaved, so that a noisy neighbour hits all alike
                results[mode].append(run(starters[mode], args.streams, args.concurrency))
        print(f"{args.streams} one-token streams, {args.concurrency} at a time, "
              f"{args.reps} runs; client CPU ms/stream (min, median, max); root {args.root}")
        for mode, figures in results.items():
            print(f"  {mode:18s} {min(figures):6.3f} {statistics.median(figures):6.3f} "
                  f"{max(figures):6.3f}")
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))
    finally:
        sim.terminate()
        sim.wait()


if __name__ == "__main__":
    main()
