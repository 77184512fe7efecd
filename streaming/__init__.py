"""flask-llm-stream: relay OpenAI-compatible streams to browsers as Server-Sent Events."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .errors import ApiError, StreamingError, UpstreamError
from .settings import Settings, startup_warnings

if TYPE_CHECKING:
    from flask import Flask

    from .stores import StreamStore
    from .upstream.provider import Provider

__all__ = ["ApiError", "LLMStream", "Settings", "StreamingError", "UpstreamError"]


class LLMStream:
    """Mounts the streaming endpoints on a Flask app::

        from streaming import LLMStream
        LLMStream(app)            # settings from the environment
    """

    def __init__(self, app: Flask | None = None, settings: Settings | None = None, *,
                 store: StreamStore | None = None, provider: Provider | None = None) -> None:
        self.settings = settings
        self._store = store
        self._provider = provider
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask, url_prefix: str | None = None) -> None:
        from . import api_aisdk, api_v1
        from .manager import StreamManager
        from .metrics import Metrics
        from .views import EXTENSION, bp

        settings = self.settings or Settings()
        store = self._store or make_store(settings)
        provider = self._provider or make_provider(settings)
        app.extensions[EXTENSION] = StreamManager(settings, store, provider, Metrics())
        app.register_blueprint(bp, url_prefix=url_prefix)
        app.register_blueprint(api_aisdk.bp, url_prefix=url_prefix)
        app.register_blueprint(api_v1.bp, url_prefix=url_prefix)
        for warning in startup_warnings(settings):
            logging.getLogger(__name__).warning("%s", warning)
        if settings.CORS_ORIGINS:
            from .cors import Cors

            Cors(settings.CORS_ORIGINS).install(app)


def make_store(settings: Settings) -> StreamStore:
    if settings.REDIS_URL:
        from .stores.redis import RedisStore

        return RedisStore(settings)
    from .stores.memory import MemoryStore

    # An idempotency key or a chat index outlives the stream it names by the stream's own TTL.
    return MemoryStore(settings.STREAM_TTL, index_ttl=settings.STREAM_TIMEOUT + settings.STREAM_TTL)


def make_provider(settings: Settings) -> Provider:
    if settings.provider == "openai":
        from .upstream.openai import OpenAIProvider

        return OpenAIProvider(settings)
    from .upstream.simulated import SimulatedProvider

    return SimulatedProvider(settings.SIMULATED_TOKENS_PER_SECOND, settings.BUFFER_MAX_DELAY_MS)
