"""One stream's producer: the shell around `relay_core.RelayCore`.

One task per stream reads the upstream and runs the core on what it read, in that same task:
feed the items, take what is due, encode the events once in the stream's wire format and
append them to the store in one batch. What must happen while the upstream is silent (a
buffer's deadline, a timeout, a cancel, the last client leaving) comes from an `Alarm`: a
timer armed at the core's next deadline that runs a round in a short-lived task when it
rings. So a blocked read never delays a deadline or a cancel, and an open stream keeps one
stack, not a reader's and a pump's. Rounds are serialised by a lock.

Under gevent the task is a greenlet and the alarm a libev timer; under plain threads, a
thread each (only `threading` primitives are used, which gevent patches).
"""

from __future__ import annotations

import logging
import random
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from .errors import StoreUnavailableError, UpstreamError
from .events import INTERNAL, STORE_UNAVAILABLE, Failed, Start, Terminal
from .formats import WireFormat
from .green import Alarm, spawn
from .metrics import Metrics
from .relay_core import Limits, RelayCore
from .settings import Settings
from .stores import StreamClosedError, StreamMeta, StreamStore
from .upstream.provider import DELTA_KINDS, Item, Provider, UpstreamStream

log = logging.getLogger(__name__)
_END = object()  # the reader's result: the upstream finished its body

SHUTTING_DOWN = Failed("producer_lost", "the server is restarting; start the answer again")


class Generation:
    """A running stream. `cancel`, `presence_changed` and `abandon` may come from any thread."""

    def __init__(
        self,
        meta: StreamMeta,
        request: dict[str, Any],
        *,
        fmt: WireFormat,
        provider: Provider,
        store: StreamStore,
        settings: Settings,
        metrics: Metrics,
        on_end: Callable[[Generation], None],
    ) -> None:
        self.meta = meta
        self.stream_id = meta.stream_id
        self._request = request
        self._fmt = fmt
        self._provider = provider
        self._store = store
        self._settings = settings
        self._metrics = metrics
        self._on_end = on_end
        self._clock = time.monotonic  # the alarm's clock too
        self._core = RelayCore(
            Start(meta.stream_id, meta.model, meta.resume_token, int(meta.created)),
            Limits.from_settings(settings), self._clock(),
        )
        self._encoder = fmt.encoder(meta)
        self._seq = 0  # events the store holds
        self._bytes = 0  # their size
        self.resumes = 0  # attaches on this worker after the start
        self._lock = threading.Lock()  # one round at a time
        # A store that never blocks lets the alarm run rounds in the event loop itself (no
        # task to start per deadline).
        self._alarm = Alarm(self._on_alarm, f"alarm-{meta.stream_id[:8]}",
                            inline=None if store.may_block else self._on_alarm_inline)
        self._cancelled = False
        self._abandoned = False
        self._presence = False  # a follower count reached 0 somewhere: look again
        self._finished = False  # the stream has ended and been reported
        self._stop = threading.Event()  # tells the reader to give up
        self._upstream: UpstreamStream | None = None
        self._reader: Any = None
        self.held: list[Any] = []  # the store counters the stream itself holds

    @property
    def started_at(self) -> float:
        return self._core.started_at

    # -- control, from any thread -------------------------------------------------------

    def start(self) -> None:
        """Create the stream with its `start` event, then run the reader and the alarm."""
        first = self._encoder.encode(self._core.take())
        self._store.create(self.meta, first)
        self._seq = len(first)
        self._bytes = sum(map(len, first))
        self._store.register(self.stream_id, self)
        self._metrics.streams_started.inc()
        self._metrics.streams_active.inc()
        self._reader = spawn(self._read, f"reader-{self.stream_id[:8]}")
        self._alarm.set(self._core.deadline())

    def cancel(self) -> None:
        self._cancelled = True
        self._alarm.poke()

    def presence_changed(self) -> None:
        self._presence = True
        self._alarm.poke()

    def abandon(self) -> None:
        """End the stream with `producer_lost`: this worker is about to be stopped."""
        self._abandoned = True
        self._alarm.poke()

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
                            if not self._round(items):
                                return
                        # Before the `with` ends: releasing the connection for reuse may read
                        # a little more, and the client need not wait for that.
                        self._round(None, _END)
                    return
                except UpstreamError as exc:
                    if self._stop.is_set():
                        return
                    remaining = self.started_at + settings.FIRST_TOKEN_TIMEOUT - self._clock()
                    if delivered or not exc.retryable or attempt >= settings.UPSTREAM_RETRIES:
                        self._round(None, exc)
                        return
                    attempt += 1
                    backoff = _backoff(attempt, exc.retry_after)
                    if backoff >= remaining:
                        self._round(None, exc)
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
                self._round(None, exc)
            if not isinstance(exc, Exception):
                raise

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

    # -- rounds -------------------------------------------------------------------------

    def _on_alarm(self) -> None:
        self._round(None)

    def _on_alarm_inline(self) -> bool:
        """The alarm, in the event loop itself (a store that never blocks): run the round at
        once unless one is under way; False to have it run in a task instead."""
        if not self._lock.acquire(blocking=False):
            return False
        self._locked_round(None, None)
        return True

    def _round(self, items: list[Item] | None, result: object = None) -> bool:
        """Run the core on what the reader brings (`items`, or its `result`: _END or an
        exception), on controls and on time; write what it emits. False once the stream has
        ended: the reader stops."""
        self._lock.acquire()
        return self._locked_round(items, result)

    def _locked_round(self, items: list[Item] | None, result: object) -> bool:
        # Entered with the lock held; releases it.
        try:
            if self._finished:
                return False
            try:
                going = self._step(items, result)
            except Exception:
                log.error("stream %s: relay failed\n%s", self.stream_id[:8], _traceback())
                self._end_with(INTERNAL)
                going = False
            if going:
                self._alarm.set(self._core.deadline())
                return True
            self._finished = True
        finally:
            self._lock.release()
        self._finish(reader_ended=items is not None or result is not None)
        return False

    def _step(self, items: list[Item] | None, result: object) -> bool:
        core = self._core
        now = self._clock()
        if items:
            first = core.first_delta_at is None
            core.feed(items, now)
            if first and core.first_delta_at is not None:
                self._metrics.first_token_seconds.observe(core.first_delta_at - core.started_at)
        if result is _END:
            core.upstream_ended()
        elif isinstance(result, BaseException):
            core.fail(result)
        if self._abandoned:
            core.abort(SHUTTING_DOWN)
        if self._cancelled:
            core.cancel()
        if self._presence:
            self._presence = False
            alone = self._store.count(("followers", self.stream_id)) == 0
            core.alone(now if alone else None)
        core.tick(now)
        if core.grace_due(now):
            if self._store.count(("followers", self.stream_id)) == 0:
                core.cancel()
            else:
                core.alone(None)
        events = core.take()
        if events and not self._write(events, core.ended):
            return False
        return core.ended is None

    def _finish(self, reader_ended: bool) -> None:
        """Once, after the stream's last event: stop the reader (unless it is the one that
        ended it), forget the stream, count and log it."""
        self._alarm.close()
        if not reader_ended:
            self._stop_reader()
        try:
            self._store.unregister(self.stream_id)
            self._metrics.stream_ended(
                self.meta, self._core, self._core.ended or INTERNAL, now=self._clock(),
                events=self._seq, size=self._bytes, resumes=self.resumes)
        finally:
            self._on_end(self)

    def _write(self, events: list[Any], terminal: Terminal | None) -> bool:
        """Encode and append one round's events; False if the stream cannot go on."""
        try:
            data = self._encoder.encode(events)
        except Exception:
            log.error("stream %s: could not encode\n%s", self.stream_id[:8], _traceback())
            self._end_with(INTERNAL)
            return False
        try:
            self._store.append(self.stream_id, self._seq, data, end=terminal is not None)
        except StreamClosedError:
            # Another worker wrote its end (it found this one's lease lapsed): stop quietly.
            log.warning("stream %s: ended elsewhere; stopping its producer", self.stream_id[:8])
            self._core.abort(SHUTTING_DOWN)
            return False
        except StoreUnavailableError:
            log.error("stream %s: the store is unavailable; ending it", self.stream_id[:8])
            self._core.abort(STORE_UNAVAILABLE)
            self._store.end_locally(self.stream_id, self._terminal(STORE_UNAVAILABLE))
            return False
        except Exception:
            log.error("stream %s: could not append\n%s", self.stream_id[:8], _traceback())
            # What this round had numbered goes out with the terminal event: no seq gap.
            self._end_with(INTERNAL, data)
            return False
        self._seq += len(data)
        self._bytes += sum(map(len, data))
        return True

    def _end_with(self, event: Failed, pending: list[bytes] | None = None) -> None:
        """Write `pending` and `event` as the end, whatever the state, whatever fails."""
        self._core.abort(event)
        self._core.take()
        data = (pending or []) + self._terminal(event, len(pending or []))
        try:
            self._store.append(self.stream_id, self._seq, data, end=True)
        except Exception:
            log.error("stream %s: could not write its end\n%s", self.stream_id[:8],
                      _traceback())
            try:
                self._store.end_locally(self.stream_id, data)
            except Exception:
                log.error("stream %s: could not end it here either", self.stream_id[:8])

    def _terminal(self, event: Failed, after: int = 0) -> list[bytes]:
        # A fresh encoder at the stream's next seq: the stream's own may be mid-way through a
        # batch that failed.
        return self._fmt.encoder(self.meta, self._seq + after).encode([event])


def _traceback() -> str:
    # Without the chain: an exception raised while handling an SDK error carries it as its
    # context, and the SDK's message holds the upstream's body, which must never be logged.
    return "".join(traceback.format_exception(sys.exc_info()[1], chain=False))


def _backoff(attempt: int, retry_after: float | None) -> float:
    if retry_after is not None:
        return retry_after
    # Full jitter around an exponential step: retries from many streams do not align.
    step: float = min(4.0, 0.25 * 2.0 ** (attempt - 1))
    return random.uniform(0.5, 1.0) * step
