"""The benchmark's load generator: one process, one asyncio loop (uvloop when installed), raw HTTP.

    python bench/loadgen.py '{"port": 8000, "kind": "ours", "streams": 200, "tokens": 100, ...}'

Opens `streams` streams (a new connection each; at most `concurrency` at once; starts spread
over `ramp` seconds), each asking the simulator for `tokens` deltas `delay` s apart, reads every
SSE event as it arrives and checks each stream exactly: the joined text must equal what the
simulator sent, and the stream must end properly (`done` then `[DONE]` for ours, `[DONE]` for the
others). `kind` says how to ask and read: "ours" (this service's native format), "baseline" (the
FastAPI app: `data: {"token": ...}`), "direct" (the simulator itself, OpenAI chunks).

Prints JSON lines: {"event": "all_open"} once every stream is open at the same time (with
`notify_open`), then {"event": "result", ...}. Times are time.monotonic(), which is the same
clock in every process of the machine, so the caller can line them up with its CPU samples.
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
from collections import Counter
from typing import Any, cast

import orjson
from sse_reader import ResponseError, ResponseReader
from wire_sim import delta_text, end_text, raise_open_files_limit

BUCKET = 0.01  # seconds per bucket of the delta arrival histogram


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


class Run:
    """What every stream of one run shares: the spec, counters and measurements."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.kind: str = spec["kind"]
        self.delay = float(spec.get("delay", 0.05))
        self.tokens = int(spec.get("tokens", 20))
        self.t0 = time.monotonic()
        self.buckets: Counter[int] = Counter()
        self.lags: list[float] | None = [] if spec.get("lags") else None
        self.ttft: list[float] = []
        self.first_at: list[float] = []
        self.end_at: list[float] = []
        self.errors: Counter[str] = Counter()
        self.ok = 0
        self.open = 0  # streams that have had a first delta and have not ended
        self.peak_open = 0
        self.all_open_at: float | None = None
        # At most this many streams between connecting and their first delta: starts then go at
        # the pace the server accepts them instead of overflowing its listen backlog.
        self.starting = asyncio.Semaphore(int(spec.get("max_starting") or 1 << 30))
        self.stopped = False  # past the deadline: start nothing more

    def request(self, index: int, at: float) -> bytes:
        """The request of stream `index`; its deltas are due at `at` + i * delay."""
        script = {"tokens": self.tokens, "delay": self.delay, "at": at, "id": f"s{index}"}
        if self.spec.get("gate"):  # wire_sim: deltas go on until the gate opens, then an end
            script.update(gate=self.spec["gate"],
                          gate_until=self.t0 + float(self.spec.get("gate_timeout", 300)))
        messages = [{"role": "user", "content": "SIM " + orjson.dumps(script).decode()}]
        if self.kind == "direct":
            path = "/v1/chat/completions"
            body = orjson.dumps({"model": "sim-model", "messages": messages, "stream": True,
                                 "stream_options": {"include_usage": True}})
        else:
            path = "/api/chat/stream"
            body = orjson.dumps({"messages": messages})
        return (b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Accept: text/event-stream\r\nContent-Length: %d\r\n\r\n%s"
                % (path.encode(), len(body), body))

    def exact(self, index: int, text: str) -> bool:
        """Is `text` exactly what the simulator sent? A gated stream sends `tokens` deltas or
        more (as many as it took to open the gate), then its end marker."""
        prefix = f"s{index}"
        if not self.spec.get("gate"):
            return text == "".join(delta_text(prefix, i) for i in range(self.tokens))
        end = end_text(prefix)
        body = text[:-len(end)]
        n = body.count(" ")
        return (text.endswith(end) and n >= self.tokens
                and body == "".join(delta_text(prefix, i) for i in range(n)))


class StreamClient(asyncio.Protocol):
    """One stream: send the request, read the events, check the text, resolve `done`."""

    def __init__(self, run: Run, index: int, sent: float) -> None:
        self.run, self.index, self.sent = run, index, sent
        self.reader = ResponseReader()
        self.pieces: list[str] = []
        self.deltas = 0
        self.first: float | None = None
        self.saw_done = False
        self.finish: str | None = None
        self.error: str | None = None
        self.transport: asyncio.Transport | None = None
        self.done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.started = asyncio.Event()  # the first delta came, or the stream ended

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(self.run.request(self.index, self.sent))

    def data_received(self, data: bytes) -> None:
        try:
            payloads = self.reader.feed(data)
        except ResponseError:
            self._end("malformed")
            return
        if self.reader.status and self.reader.status != 200:
            self._end(f"status_{self.reader.status}")
            return
        now = time.monotonic()
        for payload in payloads:
            if payload == b"[DONE]":
                self.saw_done = True
                continue
            text = self._text(orjson.loads(payload))
            if text:
                self._delta(text, now)
        if self.saw_done and (self.reader.ended or not self.reader.headers.get(
                "transfer-encoding")):
            self._end(self._verdict())

    def connection_lost(self, exc: Exception | None) -> None:
        self._end(self._verdict() if self.saw_done else
                  "cut" if self.reader.status else "no_response")

    def _text(self, obj: dict[str, Any]) -> str | None:
        kind = self.run.kind
        if kind == "ours":
            kind_of = obj.get("type")
            if kind_of == "done":
                self.finish = obj.get("finish_reason")
            elif kind_of == "error":
                self.error = str(obj.get("code"))
            return obj.get("token") if kind_of == "token" else None
        if kind == "baseline":
            return obj.get("token")
        choices = obj.get("choices") or [{}]
        return (choices[0].get("delta") or {}).get("content")

    def _delta(self, text: str, now: float) -> None:
        run = self.run
        if self.first is None:
            self.first = now
            self.started.set()
            run.ttft.append(now - self.sent)
            run.first_at.append(now)
            run.open += 1
            run.peak_open = max(run.peak_open, run.open)
            if run.open == int(run.spec["streams"]) and run.all_open_at is None:
                run.all_open_at = now
                if run.spec.get("notify_open"):
                    print(orjson.dumps({"event": "all_open", "t": now}).decode(), flush=True)
        k = text.count(" ")  # each delta ends with its only space (wire_sim.delta_text)
        self.pieces.append(text)
        run.buckets[int((now - run.t0) / BUCKET)] += k
        if run.lags is not None:
            # From the simulator's write (on schedule) to our read, for the deltas due after the
            # first one arrived: by then the simulator had the request, so it wrote them on time.
            due = (self.sent + j * run.delay for j in range(self.deltas, self.deltas + k))
            run.lags.extend(now - t for t in due if t > self.first)
        self.deltas += k

    def _verdict(self) -> str:
        if self.error is not None:
            return f"error_{self.error}"
        if self.run.kind == "ours" and self.finish != "stop":
            return f"finish_{self.finish}"
        return "ok" if self.run.exact(self.index, "".join(self.pieces)) else "mismatch"

    def _end(self, verdict: str) -> None:
        if self.done.done():
            return
        self.started.set()
        if self.first is not None:
            self.run.open -= 1
            self.run.end_at.append(time.monotonic())
        self.done.set_result(verdict)
        if self.transport is not None:
            self.transport.close()

    def abort(self, verdict: str = "timeout") -> None:
        self._end(verdict)


async def one(run: Run, index: int, start_at: float, slots: asyncio.Semaphore,
              clients: set[StreamClient]) -> None:
    await asyncio.sleep(max(0.0, start_at - time.monotonic()))
    async with slots:
        loop = asyncio.get_running_loop()
        async with run.starting:
            if run.stopped:
                run.errors["not_started"] += 1
                return
            sent = time.monotonic()
            client = StreamClient(run, index, sent)
            clients.add(client)
            try:
                await loop.create_connection(lambda: client, "127.0.0.1", int(run.spec["port"]))
            except OSError as exc:
                client.abort(f"connect_{type(exc).__name__}")
            await client.started.wait()
        verdict = await client.done
        clients.discard(client)
    if verdict == "ok":
        run.ok += 1
    else:
        run.errors[verdict] += 1


async def drive(spec: dict[str, Any]) -> dict[str, Any]:
    run = Run(spec)
    n = int(spec["streams"])
    slots = asyncio.Semaphore(int(spec.get("concurrency") or n))
    ramp = float(spec.get("ramp", 0))
    clients: set[StreamClient] = set()
    tasks = [asyncio.ensure_future(one(run, i, run.t0 + ramp * i / n, slots, clients))
             for i in range(n)]
    _, pending = await asyncio.wait(tasks, timeout=float(spec.get("timeout", 120)))
    run.stopped = True
    for client in list(clients):
        client.abort()
    if pending:
        _, pending = await asyncio.wait(pending, timeout=5)
    for task in pending:  # still waiting to start: counted as not started
        task.cancel()
        run.errors["not_started"] += 1
    return summarize(run, time.monotonic() - run.t0)


def summarize(run: Run, wall: float) -> dict[str, Any]:
    out: dict[str, Any] = {
        "event": "result", "kind": run.kind, "streams": int(run.spec["streams"]), "ok": run.ok,
        "errors": dict(run.errors), "wall_s": wall, "t0": run.t0,
        "deltas": sum(run.buckets.values()), "peak_open": run.peak_open,
        "all_open_at": run.all_open_at,
        "ttft_p50_s": percentile(run.ttft, 50), "ttft_p99_s": percentile(run.ttft, 99),
        "ttft_max_s": max(run.ttft, default=None),
    }
    if run.lags:
        out.update(lag_mean_s=sum(run.lags) / len(run.lags), lag_p50_s=percentile(run.lags, 50),
                   lag_p99_s=percentile(run.lags, 99))
    # The steady part: every stream has started and none has ended yet.
    if run.first_at and run.end_at:
        start, end = max(run.first_at) + 0.5, min(run.end_at) - 0.2
        if end - start >= 0.5:
            lo, hi = int((start - run.t0) / BUCKET), int((end - run.t0) / BUCKET)
            count = sum(v for b, v in run.buckets.items() if lo <= b < hi)
            out["window"] = {"start": run.t0 + lo * BUCKET, "end": run.t0 + hi * BUCKET,
                             "deltas": count}
    return out


def main() -> None:
    spec = orjson.loads(sys.argv[1])
    raise_open_files_limit()
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(drive(spec))
    else:
        result = uvloop.run(drive(spec))
    print(orjson.dumps(result).decode(), flush=True)


if __name__ == "__main__":
    main()
