"""One stream's producer: a reader greenlet and a pump greenlet around a small inbox.

The reader blocks on the upstream socket and only hands items over. The pump owns every
decision: it joins deltas (TokenBuffer), numbers events, appends them to the store, and keeps
the clocks (first-token, idle and total timeouts, the buffer's deadline, the resume grace). A
blocked read never delays a heartbeat, a cancel or a timeout, because nobody waits on it.

Only `threading` primitives are used: gevent patches them into greenlet ones, and under a
plain threaded server they are real threads.
"""

from __future__ import annotations

import logging
import random
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from typing import Any

import orjson

from .buffer import TokenBuffer
from .errors import UpstreamError
from .events import (
    INTERNAL_ERROR,
    contract_finish_reason,
    error_event,
    timeout_message,
    usage_counts,
)
from .green import spawn
from .metrics import Metrics
from .provider import (
    CONTENT,
    DELTA_KINDS,
    FINISH,
    REASONING,
    TOOL_CALL,
    USAGE,
    Item,
    Provider,
    UpstreamStream,
)
from .settings import Settings
from .sse import encode_json_event
from .store import StreamStore

log = logging.getLogger(__name__)

_END = "_end"  # the reader's last item: the upstream finished
_FAIL = "_fail"  # the reader's last item: (exception)



class Generation:
    """A running stream. Thread-safe: `cancel`, `attach` and `detach` come from request threads."""

    def __init__(
        self,
        stream_id: str,
        owner: str | None,
        model: str,
        request: dict[str, Any],
        *,
        provider: Provider,
        store: StreamStore,
        settings: Settings,
        metrics: Metrics,
        on_end: Callable[[Generation], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream_id = stream_id
        self.owner = owner
        self.model = model
        self._request = request
        self._provider = provider
        self._store = store
        self._settings = settings
        self._metrics = metrics
        self._on_end = on_end
        self._clock = clock
        # The pump's single wake-up: set by the reader (items), cancel, attach and detach.
        self._wake = threading.Event()
        self._inbox: deque[Item] = deque()  # appended by the reader, drained by the pump
        self._cancelled = False
        self._abandoned = False
        self._lock = threading.Lock()
        self._clients = 0
        self._alone_since: float | None = None
        self._stop = threading.Event()  # tells the reader to give up
        self._upstream: UpstreamStream | None = None
        self._reader: Any = None
        self._seq = 0
        self._token_index = 0
        self._out: list[bytes] = []  # the events the pump has numbered but not yet written
        self.started_at = clock()

    # -- control, from any thread -------------------------------------------------------

    def start(self) -> None:
        self._store.create(self.stream_id, self.owner)
        self._store.append(self.stream_id, [self._event(
            {"type": "start", "stream_id": self.stream_id, "model": self.model})])
        self._metrics.streams_started.inc()
        self._metrics.streams_active.inc()
        self._reader = spawn(self._read, f"reader-{self.stream_id[:8]}")
        spawn(self._pump, f"pump-{self.stream_id[:8]}")

    def cancel(self) -> None:
        self._cancelled = True
        self._wake.set()

    def abandon(self) -> None:
        """End the stream with `producer_lost`: this worker is about to be stopped."""
        self._abandoned = True
        self._wake.set()

    def attach(self) -> None:
        with self._lock:
            self._clients += 1
            self._alone_since = None
        self._metrics.clients_attached.inc()

    def detach(self) -> None:
        with self._lock:
            self._clients -= 1
            if self._clients == 0:
                self._alone_since = self._clock()
        self._wake.set()
        self._metrics.clients_attached.dec()

    # -- the reader ---------------------------------------------------------------------

    def _read(self) -> None:
        settings = self._settings
        delivered = False
        attempt = 0
        try:
            while not self._stop.is_set():
                try:
                    with self._provider.open(self._request) as upstream:
                        self._upstream = upstream
                        if self._stop.is_set():
                            return
                        for items in upstream:
                            if not delivered:
                                delivered = any(kind in DELTA_KINDS for kind, _ in items)
                            self._put(items)
                            if self._stop.is_set():
                                return
                        # Told before the `with` ends: releasing the connection for reuse may
                        # read a little more, and the client need not wait for that.
                        if not self._stop.is_set():
                            self._put([(_END, None)])
                    return
                except UpstreamError as exc:
                    if self._stop.is_set():
                        return
                    remaining = self.started_at + settings.FIRST_TOKEN_TIMEOUT - self._clock()
                    if delivered or not exc.retryable or attempt >= settings.UPSTREAM_RETRIES:
                        self._put([(_FAIL, exc)])
                        return
                    attempt += 1
                    backoff = _backoff(attempt, exc.retry_after)
                    if backoff >= remaining:
                        self._put([(_FAIL, exc)])
                        return
                    log.info("stream %s: upstream failed (%s), retry %d in %.2fs",
                             self.stream_id[:8], exc.code, attempt, backoff)
                    if self._stop.wait(backoff):
                        return
                finally:
                    self._upstream = None
        except BaseException as exc:
            if not self._stop.is_set():
                log.error("stream %s: reader failed\n%s", self.stream_id[:8], _traceback())
                self._put([(_FAIL, exc)])
            if not isinstance(exc, Exception):
                raise

    def _put(self, items: list[Item]) -> None:
        self._inbox.extend(items)
        self._wake.set()

    def _stop_reader(self) -> None:
        self._stop.set()
        reader = self._reader
        if reader is not None and hasattr(reader, "kill"):
            # gevent: unwind the reader where it blocks; its `with` blocks close the response.
            reader.kill(block=False)
        else:
            upstream = self._upstream
            if upstream is not None:
                upstream.close()

    # -- the pump -----------------------------------------------------------------------

    def _pump(self) -> None:
        try:
            self._run_pump()
        except Exception:
            log.error("stream %s: pump failed\n%s", self.stream_id[:8], _traceback())
            # What this round had already numbered goes out first: no gap in seq.
            self._end(self._out, INTERNAL_ERROR, "internal")

    def _run_pump(self) -> None:
        s = self._settings
        delay = s.BUFFER_MAX_DELAY_MS / 1000.0
        buffers = {CONTENT: TokenBuffer(s.BUFFER_MAX_TOKENS, delay),
                   REASONING: TokenBuffer(s.BUFFER_MAX_TOKENS, delay)}
        first_deadline = self.started_at + s.FIRST_TOKEN_TIMEOUT
        total_deadline = self.started_at + s.STREAM_TIMEOUT
        idle_deadline: float | None = None
        finish_reason: str | None = None
        usage: dict[str, Any] | None = None
        metrics = self._metrics
        inbox = self._inbox
        wake = self._wake
        while True:
            while not inbox and not self._cancelled and not self._abandoned:
                now = self._clock()
                deadline = first_deadline if idle_deadline is None else idle_deadline
                if total_deadline < deadline:
                    deadline = total_deadline
                for d in (buffers[CONTENT].deadline, buffers[REASONING].deadline):
                    if d is not None and d < deadline:
                        deadline = d
                if self._alone_since is not None:
                    deadline = min(deadline, self._alone_since + s.RESUME_GRACE)
                if now >= deadline:
                    break
                # Cleared before the inbox is looked at again, so no wake-up is lost.
                wake.wait(deadline - now)
                wake.clear()
            items = [inbox.popleft() for _ in range(len(inbox))]
            cancelled = self._cancelled
            alone_since = self._alone_since
            now = self._clock()
            out: list[bytes] = []
            self._out = out
            terminal: dict[str, Any] | None = None
            reader_ended = False
            outcome = ""
            deltas = 0
            for kind, value in items:
                if kind in DELTA_KINDS:
                    deltas += 1
                    if idle_deadline is None:
                        metrics.first_token_seconds.observe(now - self.started_at)
                    idle_deadline = now + s.IDLE_TIMEOUT
                    if kind == TOOL_CALL:
                        self._flush(buffers, None, out)
                        out.append(self._event({"type": "tool_call", **value}))
                    else:
                        other = REASONING if kind == CONTENT else CONTENT
                        self._flush(buffers, other, out)
                        text = buffers[kind].push(value, now)
                        if text is not None:
                            out.append(self._text_event(kind, text))
                elif kind == FINISH:
                    finish_reason = value
                elif kind == USAGE:
                    usage = usage_counts(value)
                elif kind == _END:
                    reader_ended = True
                    outcome = contract_finish_reason(finish_reason)
                    terminal = {"type": "done", "finish_reason": outcome, "usage": usage}
                elif kind == _FAIL:
                    terminal, outcome = error_event(value)
                if terminal is not None:
                    break
            if deltas:
                metrics.deltas.inc(deltas)
            if terminal is None:
                for kind, buffer in buffers.items():
                    text = buffer.due(now)
                    if text is not None:
                        out.append(self._text_event(kind, text))
                timed_out = (
                    (idle_deadline is None and now >= first_deadline)
                    or (idle_deadline is not None and now >= idle_deadline)
                    or now >= total_deadline
                )
                if self._abandoned:
                    outcome = "producer_lost"
                    terminal = {"type": "error", "code": "producer_lost",
                                "message": "the server is restarting; start the answer again"}
                elif cancelled or (alone_since is not None and now >= alone_since + s.RESUME_GRACE):
                    outcome = "cancelled"
                    terminal = {"type": "done", "finish_reason": "cancelled", "usage": usage}
                elif timed_out:
                    outcome = "timeout"
                    terminal = {"type": "error", "code": "timeout",
                                "message": timeout_message(idle_deadline, now, total_deadline)}
            if terminal is not None:
                self._flush(buffers, None, out)
                # After the reader's own end it is releasing the connection: leave it be.
                self._end(out, terminal, outcome, stop_reader=not reader_ended)
                return
            if out:
                self._store.append(self.stream_id, out)

    def _flush(self, buffers: dict[str, TokenBuffer], kind: str | None, out: list[bytes]) -> None:
        for k, buffer in buffers.items():
            if kind is None or k == kind:
                text = buffer.flush()
                if text is not None:
                    out.append(self._text_event(k, text))

    def _text_event(self, kind: str, text: str) -> bytes:
        if kind == REASONING:
            return self._event({"type": "reasoning", "token": text})
        index = self._token_index
        self._token_index += 1
        return self._event({"type": "token", "token": text, "index": index})

    def _event(self, payload: dict[str, Any]) -> bytes:
        data = orjson.dumps(payload)  # before taking a seq: a failure here leaves no gap
        seq = self._seq
        self._seq += 1
        return encode_json_event(seq, data)

    def _end(self, out: list[bytes], terminal: dict[str, Any], outcome: str,
             stop_reader: bool = True) -> None:
        """Write the terminal event and release everything, whatever fails on the way."""
        if stop_reader:
            self._stop_reader()
        try:
            try:
                out.append(self._event(terminal))
            except Exception:
                log.error("stream %s: bad terminal event\n%s", self.stream_id[:8], _traceback())
                out.append(self._event(INTERNAL_ERROR))
            self._store.append(self.stream_id, out)
        except Exception:
            log.error("stream %s: could not write its end\n%s", self.stream_id[:8],
                      _traceback())
        finally:
            try:
                self._store.finish(self.stream_id)
            except Exception:
                log.error("stream %s: could not finish\n%s", self.stream_id[:8], _traceback())
            self._metrics.streams_active.dec()
            self._metrics.streams_ended.labels(outcome=outcome).inc()
            self._on_end(self)


def _traceback() -> str:
    # Without the chain: an exception raised while handling an SDK error carries it as its
    # context, and the SDK's message holds the upstream's body, which must never be logged.
    return "".join(traceback.format_exception(sys.exc_info()[1], chain=False))


def _backoff(attempt: int, retry_after: float | None) -> float:
    if retry_after is not None:
        return retry_after
    # Full jitter around an exponential step: retries from many streams do not align.
    return random.uniform(0.5, 1.0) * min(4.0, 0.25 * 2 ** (attempt - 1))
