"""This worker's streams: starting them within limits, following, cancelling and draining them.

Limits and presence are counted in the store, so with Redis they hold across every worker.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import suppress
from typing import Any

from . import formats
from .errors import ApiError
from .green import spawn
from .metrics import Metrics
from .relay import Generation
from .settings import Settings
from .stores import Counter, StreamMeta, StreamStore
from .upstream.provider import Provider

log = logging.getLogger(__name__)

READY_PERIOD = 5.0  # PROTOCOL.md: the upstream is probed at most once per 5 s


def owner_tag(api_key: str | None) -> str | None:
    """What a stream remembers of the key that started it: a digest, never the key."""
    if api_key is None:
        return None
    return hashlib.sha256(api_key.encode()).hexdigest()[:32]


class Following:
    """One client's hold on a stream (its follower and connection counts); release once."""

    def __init__(self, store: StreamStore, counters: list[Counter]) -> None:
        self._store = store
        self._counters = counters

    def release(self) -> None:
        counters, self._counters = self._counters, []
        for counter in reversed(counters):
            self._store.release(counter)


class Readiness:
    """Whether a check passes, asked at most once per `period` however many ask (single
    flight: concurrent callers wait for the one check under way). Unauthenticated readiness
    probes then cannot multiply calls to the upstream."""

    def __init__(self, check: Callable[[], bool], period: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._check = check
        self._period = period
        self._clock = clock
        self._lock = threading.Lock()
        self._value = False
        self._until = float("-inf")

    def __call__(self) -> bool:
        if self._clock() < self._until:
            return self._value
        with self._lock:
            if self._clock() < self._until:  # answered while we waited
                return self._value
            try:
                self._value = bool(self._check())
            except Exception:
                log.warning("readiness check failed", exc_info=True)
                self._value = False
            self._until = self._clock() + self._period
            return self._value


class StreamManager:
    """Owns the running generations of one process."""

    def __init__(self, settings: Settings, store: StreamStore, provider: Provider,
                 metrics: Metrics) -> None:
        self.settings = settings
        self.store = store
        self.provider = provider
        self.metrics = metrics
        self._running: dict[str, Generation] = {}
        self.provider_ready = Readiness(provider.ready, READY_PERIOD)
        self._lock = threading.Lock()
        self._starting = 0  # slots reserved by starts under way
        self._serving: Callable[[], bool] = lambda: True

    @property
    def draining(self) -> bool:
        """True once the server stopped taking work (gunicorn got SIGTERM)."""
        return not self._serving()

    def watch_server(self, serving: Callable[[], bool], graceful_timeout: float) -> None:
        """Follow the server's life: once it stops taking work (SIGTERM), running streams get
        until just before `graceful_timeout`, then end with `producer_lost`, so that their
        clients read a terminal event instead of a cut connection when the worker is killed."""
        self._serving = serving
        margin = min(3.0, graceful_timeout * 0.3)

        def watch() -> None:
            while serving():
                time.sleep(1.0)
            deadline = time.monotonic() + graceful_timeout - margin
            while self._running and time.monotonic() < deadline:
                time.sleep(0.25)
            for generation in list(self._running.values()):
                generation.abandon()

        spawn(watch, "drain-watch")

    def __len__(self) -> int:
        return len(self._running)

    @staticmethod
    def new_stream_id() -> str:
        return secrets.token_urlsafe(24)  # 192 random bits

    def start(self, params: dict[str, Any], owner: str | None, *, fmt: str = "native",
              options: Mapping[str, Any] | None = None,
              stream_id: str | None = None) -> tuple[Generation, Following]:
        """Reserve the slots, create the stream and its first event, follow it."""
        s = self.settings
        stream_id = stream_id or self.new_stream_id()
        meta = StreamMeta(
            stream_id=stream_id, owner=owner, model=params["model"], format=fmt,
            resume_token=secrets.token_urlsafe(24), worker=self.store.worker_id,
            created=time.time(), options=dict(options or {}),
        )
        with self._lock:
            if len(self._running) + self._starting >= s.MAX_STREAMS:
                raise _too_many("this worker is at its limit of streams")
            self._starting += 1
        held: list[Counter] = []
        try:
            if owner is not None:
                self._acquire(("streams", owner), s.MAX_STREAMS_PER_KEY,
                              "this key is at its limit of streams", held)
                self._acquire(("connections", owner), s.MAX_CONNECTIONS_PER_KEY,
                              "this key is at its limit of open streams", held)
            generation = Generation(
                meta, params, fmt=formats.get(fmt), provider=self.provider, store=self.store,
                settings=s, metrics=self.metrics, on_end=self._ended,
            )
            self._acquire(("followers", stream_id), s.MAX_FOLLOWERS, "", held)
            with self._lock:
                self._running[stream_id] = generation
            generation.start()
        except BaseException:
            with self._lock:
                self._running.pop(stream_id, None)
            for counter in reversed(held):
                self.store.release(counter)
            raise
        finally:
            with self._lock:
                self._starting -= 1
        # The stream's own count is released when it ends; the client's when it goes.
        streams = [c for c in held if c[0] == "streams"]
        generation.held = streams
        return generation, Following(self.store, [c for c in held if c[0] != "streams"])

    def follow(self, stream_id: str, owner: str | None) -> Following:
        """Count one more client of a stream, within MAX_FOLLOWERS and the key's connections."""
        s = self.settings
        held: list[Counter] = []
        try:
            if owner is not None:
                self._acquire(("connections", owner), s.MAX_CONNECTIONS_PER_KEY,
                              "this key is at its limit of open streams", held)
            self._acquire(("followers", stream_id), s.MAX_FOLLOWERS,
                          "this stream is at its limit of followers", held)
        except BaseException:
            for counter in reversed(held):
                self.store.release(counter)
            raise
        generation = self._running.get(stream_id)
        if generation is not None:
            generation.resumes += 1
        return Following(self.store, held)

    def get(self, stream_id: str) -> Generation | None:
        return self._running.get(stream_id)

    def cancel(self, stream_id: str) -> None:
        generation = self._running.get(stream_id)
        if generation is not None:
            generation.cancel()
        else:
            self.store.cancel(stream_id)

    def _acquire(self, counter: Counter, limit: int, message: str, held: list[Counter]) -> None:
        if not self.store.acquire(counter, limit):
            raise _too_many(message or "too many clients")
        held.append(counter)

    def _ended(self, generation: Generation) -> None:
        with self._lock:
            self._running.pop(generation.stream_id, None)
        for counter in generation.held:
            # What cannot be released now (the store is down) lapses with the store's own
            # lifetimes.
            with suppress(Exception):
                self.store.release(counter)


def _too_many(message: str) -> ApiError:
    return ApiError(429, "too_many_streams", message, headers={"Retry-After": "1"})
