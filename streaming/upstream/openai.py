"""The OpenAI-compatible upstream: the one module that imports `openai` and its transport.

The SDK is the client's face (configuration, keys, base URL, headers, error types); its HTTP
client runs on our urllib3 transport (transport.py), plugged in through the SDK's public
`http_client` hook. A stream is opened with the SDK's documented low-level `post()` and a
body serialised once, because `chat.completions.create` validates and builds far more per
request than a relay needs; the stream itself is read as raw bytes and parsed here (chunks.py),
because the SDK's typed chunk iteration builds a pydantic object per chunk on the hot path.
"""

from __future__ import annotations

import email.utils
import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import httpx2
import openai
import orjson

from ..errors import (
    UpstreamAuthError,
    UpstreamError,
    UpstreamRateLimitedError,
    UpstreamRefusedError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from ..green import gevent_active
from ..settings import Settings
from .chunks import UpstreamCutError, iter_sse_batches, parse_chunk
from .provider import FINISH, Item
from .transport import Urllib3Transport, body_of

# Idle upstream connections kept for reuse (a burst of streams opens more, closed after).
_IDLE_CONNECTIONS = 32
_READY_CACHE_SECONDS = 5.0
_READY_PROBE_TIMEOUT = 3.0
# After [DONE], how long the end of the body may take to arrive for the connection to be kept.
_FINISH_TIMEOUT = 1.0


class OpenAIProvider:
    """Chat completions from any OpenAI-compatible server, through the official SDK."""

    name = "openai"

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._client: openai.OpenAI | None = None
        self._lock = threading.Lock()
        self._ready = False
        self._ready_until = 0.0

    def _get_client(self) -> openai.OpenAI:
        # Created on first use, inside the worker, after gevent has patched the socket module:
        # a client made before the patch holds unpatched sockets and every request fails.
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    self._client = _make_client(self._settings)
                client = self._client
        return client

    def ready(self) -> bool:
        """Whether the upstream answers with our key; probed at most every few seconds."""
        now = time.monotonic()
        if now < self._ready_until:
            return self._ready
        self._ready = self._probe()
        self._ready_until = now + _READY_CACHE_SECONDS
        return self._ready

    def _probe(self) -> bool:
        try:
            self._get_client().models.with_raw_response.list(timeout=_READY_PROBE_TIMEOUT)
        except openai.APIStatusError as exc:
            # Reachable; a server without /models (404) can still stream, a refused key cannot.
            return exc.status_code not in (401, 403) and exc.status_code < 500
        except openai.OpenAIError:
            return False
        return True

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    @contextmanager
    def open(self, request: dict[str, Any]) -> Iterator[_OpenAIStream]:
        # Copied: orjson's bytes keep its whole working buffer (4 KiB for a short request),
        # and the body lives as long as the stream (the response holds its request).
        body = memoryview(orjson.dumps({**request, "stream": True,
                                        "stream_options": {"include_usage": True}})).tobytes()
        try:
            response = self._get_client().post(
                "/chat/completions", content=body, cast_to=httpx2.Response, stream=True)
            stream = _OpenAIStream(response)
            try:
                yield stream
            finally:
                stream.release()
        # `from None`: the SDK's exceptions quote the upstream's body, which may echo a key;
        # nothing of it may travel on with ours into a log.
        except UpstreamError:
            raise
        except openai.APIStatusError as exc:
            raise _status_error(exc.status_code, exc.response.headers) from None
        except openai.APITimeoutError:
            raise UpstreamTimeoutError("the upstream did not answer in time") from None
        except openai.APIConnectionError:
            raise UpstreamUnavailableError("could not connect to the upstream") from None
        except openai.OpenAIError:
            raise UpstreamError("the upstream request failed") from None


def _make_client(settings: Settings) -> openai.OpenAI:
    first = settings.FIRST_TOKEN_TIMEOUT
    # The SDK waits 600 s by default. Our relay enforces the contract's timeouts itself; these
    # are a backstop so that no socket read outlives them.
    timeout = httpx2.Timeout(
        connect=min(10.0, first),
        read=max(first, settings.IDLE_TIMEOUT) + 5.0,
        write=30.0,
        pool=min(10.0, first),
    )
    # One worker may run WORKER_CONNECTIONS streams, each holding one upstream connection.
    # Under gevent the relay unblocks a stuck read itself (it kills the reading greenlet), so
    # body reads go without the per-read timer; under threads the read timeout stays as a
    # backstop.
    transport = Urllib3Transport(max_idle=_IDLE_CONNECTIONS,
                                 body_read_timeout=not gevent_active())
    key = settings.OPENAI_API_KEY
    client = openai.OpenAI(
        api_key=key.get_secret_value() if key is not None else None,
        base_url=settings.OPENAI_BASE_URL,
        max_retries=0,  # retries are ours: only before the first delta, inside FIRST_TOKEN_TIMEOUT
        timeout=timeout,
        # The raw body is read as it comes: a compressed stream would not parse (and gzip
        # batches tokens anyway).
        default_headers={"Accept-Encoding": "identity"},
        http_client=openai.DefaultHttpxClient(timeout=timeout, transport=transport),
    )
    # The SDK's platform headers call platform.platform(), which runs `uname -p` in a
    # subprocess the first time: compute them now, or hundreds of first requests arriving at
    # once each fork the worker.
    _ = client.default_headers
    return client


def _status_error(status: int, headers: httpx2.Headers) -> UpstreamError:
    retry_after = parse_retry_after(headers)
    if status in (401, 403):
        return UpstreamAuthError(f"the upstream refused our credentials ({status})", status=status)
    if status == 429:
        return UpstreamRateLimitedError(
            "the upstream is rate limiting us", status=status, retry_after=retry_after
        )
    if status in (408, 409):
        return UpstreamRefusedError(f"the upstream answered {status}", status=status,
                                    retry_after=retry_after)
    if status >= 500:
        return UpstreamUnavailableError(f"the upstream failed ({status})", status=status,
                                        retry_after=retry_after)
    return UpstreamError(f"the upstream refused the request ({status})", status=status)


def parse_retry_after(headers: Any) -> float | None:
    """Seconds to wait from `retry-after-ms` or `Retry-After` (seconds or an HTTP date);
    None for anything else, never an exception (the header is the upstream's to get wrong)."""
    try:
        value = headers.get("retry-after-ms")
        if value:
            with suppress(ValueError):
                return _seconds(float(value) / 1000.0)
        value = headers.get("retry-after")
        if not value:
            return None
        with suppress(ValueError):
            return _seconds(float(value))
        parsed = email.utils.parsedate_tz(value)
        return None if parsed is None else _seconds(email.utils.mktime_tz(parsed) - time.time())
    except (ValueError, TypeError, OverflowError):
        return None


def _seconds(value: float) -> float | None:
    return max(0.0, value) if math.isfinite(value) else None


class _OpenAIStream:
    """Raw SSE from the upstream, parsed into items without building a model per chunk."""

    def __init__(self, response: httpx2.Response) -> None:
        self._response = response
        # None only for a response from another transport (a proxy from the environment).
        self._body = body_of(response)
        self._closed = False
        self._done = False  # [DONE] was read

    def release(self) -> None:
        """After a complete answer, keep the connection for the next stream (no new TCP and
        TLS handshake) if the body's end arrives at once; otherwise close it."""
        if self._done and not self._closed and self._body is not None:
            self._body.finish(_FINISH_TIMEOUT)
        self.close()

    def close(self) -> None:
        # Called from the relay to cancel, maybe while another thread is blocked reading:
        # the transport's close wakes that read and sends the upstream a FIN at once.
        if self._closed:
            return
        self._closed = True
        with suppress(Exception):  # a half-closed transport must not mask the cancel
            self._response.close()

    def _chunks(self) -> Iterator[bytes]:
        encoding = self._response.headers.get("content-encoding", "identity")
        if encoding.strip().lower() != "identity":
            return self._response.iter_bytes()  # decoded by httpx2, as a client would
        if self._body is not None:
            # The transport's body itself: httpx2's iter_raw() adds layers per chunk, and
            # closes the response when dropped at [DONE], before release() could keep it.
            return iter(self._body)
        return self._response.iter_raw()

    def __iter__(self) -> Iterator[list[Item]]:
        finished = False
        try:
            # The events of one read go on together: one round of the relay, one append.
            for batch in iter_sse_batches(self._chunks()):
                items: list[Item] = []
                try:
                    for data in batch:
                        if data == b"[DONE]":
                            self._done = True
                            break
                        items += parse_chunk(data)
                except UpstreamError:
                    if items:
                        yield items  # what came before the fault is relayed first
                    raise
                if items:
                    if any(kind == FINISH for kind, _ in items):
                        finished = True
                    yield items
                if self._done:
                    return
        except httpx2.TimeoutException:
            raise UpstreamTimeoutError("the upstream stopped sending") from None
        except httpx2.HTTPError:
            if self._closed:
                return
            raise UpstreamCutError("the upstream stream was cut off") from None
        # The body ended without [DONE]: a cut stream, unless the answer was already complete.
        if not finished and not self._closed:
            raise UpstreamCutError("the upstream stream ended before it finished")
