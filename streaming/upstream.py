"""The OpenAI-compatible upstream: the one module that imports `openai` and its transport.

The SDK sends the request and turns refusals into typed errors; the stream itself is read as raw
bytes and parsed here with orjson, because the SDK's typed chunk iteration costs ~100 µs of CPU
per chunk (a pydantic object each) and this is the hot path.
"""

from __future__ import annotations

import email.utils
import math
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import httpx2
import openai
import orjson

from .errors import (
    UpstreamAuthError,
    UpstreamError,
    UpstreamRateLimitedError,
    UpstreamRefusedError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from .provider import CONTENT, FINISH, REASONING, TOOL_CALL, USAGE, Item
from .settings import Settings

_DRAIN_CHUNKS = 16  # chunks read past [DONE] to reach the end of the body, at most
_READY_CACHE_SECONDS = 5.0
_READY_PROBE_TIMEOUT = 3.0
_SAFE_CODE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


class UpstreamCutError(UpstreamError):
    """The stream broke off or made no sense: retried only if no delta was relayed yet."""

    code = "upstream_error"
    retryable = True


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
        params = dict(request)
        params["stream"] = True
        params["stream_options"] = {"include_usage": True}
        try:
            with self._get_client().chat.completions.with_streaming_response.create(
                **params
            ) as response:
                stream = _OpenAIStream(response.http_response)
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
    # The default pool holds 1000 connections; one worker may run WORKER_CONNECTIONS streams.
    limits = httpx2.Limits(
        max_connections=settings.WORKER_CONNECTIONS,
        max_keepalive_connections=min(settings.WORKER_CONNECTIONS, 256),
    )
    key = settings.OPENAI_API_KEY
    client = openai.OpenAI(
        api_key=key.get_secret_value() if key is not None else None,
        base_url=settings.OPENAI_BASE_URL,
        max_retries=0,  # retries are ours: only before the first delta, inside FIRST_TOKEN_TIMEOUT
        timeout=timeout,
        # The raw body is read as it comes: a compressed stream would not parse (and gzip
        # batches tokens anyway).
        default_headers={"Accept-Encoding": "identity"},
        http_client=openai.DefaultHttpxClient(timeout=timeout, limits=limits),
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
        self._raw = response.iter_raw()
        self._closed = False
        self._done = False  # [DONE] was read

    def release(self) -> None:
        """After a complete answer, read the body to its end (usually just the chunked
        terminator) and hand the connection back to the pool: the next stream skips the TCP
        and TLS handshakes. Otherwise, or if the body goes on, close it."""
        if self._done and not self._closed:
            try:
                ended = False
                for count, _ in enumerate(self._raw, 1):
                    if count > _DRAIN_CHUNKS:
                        break
                else:
                    ended = True
                if ended:
                    self._closed = True
                    self._response.close()
                    return
            except Exception:
                pass
        self.close()

    def close(self) -> None:
        # Called from the relay to cancel, while another thread may be blocked reading. Closing
        # a socket does not interrupt a recv() in progress (the kernel keeps it open until the
        # call returns); shutting it down does, and sends the FIN to the upstream at once.
        if self._closed:
            return
        self._closed = True
        stream = self._response.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if sock is not None:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        with suppress(Exception):  # a half-closed transport must not mask the cancel
            self._response.close()

    def __iter__(self) -> Iterator[list[Item]]:
        finished = False
        try:
            for data in iter_sse_data(self._raw):
                if data == b"[DONE]":
                    self._done = True
                    return
                items = parse_chunk(data)
                if items:
                    if any(kind == FINISH for kind, _ in items):
                        finished = True
                    yield items
        except httpx2.TimeoutException as exc:
            raise UpstreamTimeoutError("the upstream stopped sending") from exc
        except httpx2.HTTPError as exc:
            if self._closed:
                return
            raise UpstreamCutError("the upstream stream was cut off") from exc
        # The body ended without [DONE]: a cut stream, unless the answer was already complete.
        if not finished and not self._closed:
            raise UpstreamCutError("the upstream stream ended before it finished")


def iter_sse_data(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Yield the data of each SSE event in a byte stream (WHATWG rules, as bytes).

    Lines end at CRLF, LF or a lone CR; several `data` lines join with LF; comments and other
    fields are skipped.
    """
    pending = b""
    data: list[bytes] = []
    skip_lf = False
    for chunk in chunks:
        if skip_lf and chunk:
            # The previous chunk ended with a CR, already taken as a line end: a LF now is
            # the second half of that CRLF, not an empty line.
            skip_lf = False
            if chunk.startswith(b"\n"):
                chunk = chunk[1:]
        if not chunk:
            continue
        buf = pending + chunk if pending else chunk
        if b"\r" in buf:
            skip_lf = buf.endswith(b"\r")
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = buf.split(b"\n")
        pending = lines.pop()
        for line in lines:
            if not line:
                if data:
                    yield b"\n".join(data)
                    data.clear()
            elif line.startswith(b"data:"):
                value = line[5:]
                data.append(value[1:] if value.startswith(b" ") else value)
    if data:
        yield b"\n".join(data)


def parse_chunk(data: bytes) -> list[Item]:
    """Map one chunk of the chat-completions stream to items; raise on an error payload.

    The upstream is not trusted to send the shapes it should: anything else is a malformed
    chunk (`upstream_error`), never an exception of ours.
    """
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise _malformed() from None
    if not isinstance(obj, dict):
        raise _malformed()
    if obj.get("error") is not None or obj.get("object") == "error":
        raise _in_stream_error(obj)
    choices = obj.get("choices") or []
    if not isinstance(choices, list):
        raise _malformed()
    items: list[Item] = []
    for choice in choices:
        if not isinstance(choice, dict):
            raise _malformed()
        if choice.get("index", 0) != 0:
            continue  # n > 1 is not relayed: only the first choice
        delta = choice.get("delta") or {}
        if not isinstance(delta, dict):
            raise _malformed()
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        if reasoning and isinstance(reasoning, str):
            items.append((REASONING, reasoning))
        content = delta.get("content")
        if content and isinstance(content, str):
            items.append((CONTENT, content))
        calls = delta.get("tool_calls") or []
        if not isinstance(calls, list):
            raise _malformed()
        items.extend((TOOL_CALL, _tool_call(call)) for call in calls)
        reason = choice.get("finish_reason")
        if reason:
            if not isinstance(reason, str):
                raise _malformed()
            items.append((FINISH, reason))
    usage = obj.get("usage")
    if usage and isinstance(usage, dict):
        items.append((USAGE, usage))
    return items


def _malformed() -> UpstreamCutError:
    return UpstreamCutError("the upstream sent a malformed chunk")


def _tool_call(call: Any) -> dict[str, Any]:
    if not isinstance(call, dict):
        raise _malformed()
    function = call.get("function") or {}
    index = call.get("index", 0)
    if not isinstance(function, dict) or isinstance(index, bool) or not isinstance(index, int):
        raise _malformed()
    fragment: dict[str, Any] = {"index": index}
    for key, value in (("id", call.get("id")), ("name", function.get("name"))):
        if value:
            if not isinstance(value, str):
                raise _malformed()
            fragment[key] = value
    arguments = function.get("arguments")
    if arguments is not None:
        if not isinstance(arguments, str):
            raise _malformed()
        fragment["arguments"] = arguments
    return fragment


def _in_stream_error(obj: dict[str, Any]) -> UpstreamError:
    error = obj.get("error")
    detail = error if isinstance(error, dict) else obj
    # The upstream's message may quote the request or a key: name only its code or type.
    label = next(
        (str(v) for v in (detail.get("code"), detail.get("type"))
         if v is not None and _SAFE_CODE.match(str(v))),
        None,
    )
    suffix = f" ({label})" if label else ""
    return UpstreamError(f"the upstream reported an error in the stream{suffix}")
