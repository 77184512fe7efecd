"""The streams of this worker: starting them within limits, finding, cancelling, draining."""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

from .errors import ApiError
from .green import spawn
from .metrics import Metrics
from .provider import Provider
from .relay import Generation
from .settings import Settings
from .store import StreamStore


def owner_tag(api_key: str | None) -> str | None:
    """What a stream remembers of the key that started it: a digest, never the key."""
    if api_key is None:
        return None
    return hashlib.sha256(api_key.encode()).hexdigest()[:32]


class StreamManager:
    """Owns the running generations of one process."""

    def __init__(self, settings: Settings, store: StreamStore, provider: Provider,
                 metrics: Metrics) -> None:
        self.settings = settings
        self.store = store
        self.provider = provider
        self.metrics = metrics
        self._running: dict[str, Generation] = {}
        self._per_owner: dict[str | None, int] = {}
        self._lock = threading.Lock()
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

    def start(self, params: dict[str, Any], owner: str | None) -> Generation:
        """Reserve a slot, create the stream and its first event; the caller attaches."""
        s = self.settings
        stream_id = secrets.token_urlsafe(24)  # 192 random bits
        generation = Generation(
            stream_id, owner, params["model"], params,
            provider=self.provider, store=self.store, settings=s, metrics=self.metrics,
            on_end=self._ended,
        )
        with self._lock:
            if len(self._running) >= s.MAX_STREAMS:
                raise _too_many("this worker is at its limit of streams")
            if owner is not None and self._per_owner.get(owner, 0) >= s.MAX_STREAMS_PER_KEY:
                raise _too_many("this key is at its limit of streams")
            self._running[stream_id] = generation
            self._per_owner[owner] = self._per_owner.get(owner, 0) + 1
        generation.attach()
        try:
            generation.start()
        except BaseException:
            generation.detach()
            self._ended(generation)
            raise
        return generation

    def get(self, stream_id: str) -> Generation | None:
        return self._running.get(stream_id)

    def cancel(self, stream_id: str) -> None:
        generation = self._running.get(stream_id)
        if generation is not None:
            generation.cancel()

    def _ended(self, generation: Generation) -> None:
        with self._lock:
            if self._running.pop(generation.stream_id, None) is None:
                return
            left = self._per_owner.get(generation.owner, 1) - 1
            if left:
                self._per_owner[generation.owner] = left
            else:
                self._per_owner.pop(generation.owner, None)


def _too_many(message: str) -> ApiError:
    return ApiError(429, "too_many_streams", message, headers={"Retry-After": "1"})
