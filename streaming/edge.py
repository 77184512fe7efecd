"""What every HTTP edge (one per wire format) shares: serving checks, authentication, bodies,
finding a stream, idempotent starts, and the SSE response. Each format's views stay thin:
check, parse its request, call `start` or `attach`, return.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Callable, Generator, Iterator, Mapping
from typing import Any

import orjson
from flask import Response, current_app, request

from .errors import ApiError
from .green import gevent_active
from .manager import Following, StreamManager, owner_tag
from .response import ClientSocket, Delivery, iter_events
from .stores import StreamMeta, UnknownStreamError
from .validation import parse_json, parse_last_event_id

EXTENSION = "llm_stream"

SSE_HEADERS = {
    "Cache-Control": "no-cache",
    # nginx: pass each event on at once, whatever proxy_buffering says.
    "X-Accel-Buffering": "no",
}

_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,128}$")
# A start that claimed an idempotency key creates its stream within moments; a retry that
# finds the claim but not yet the stream waits this long before taking the claim over.
_CLAIM_PATIENCE = 2.0


def manager() -> StreamManager:
    return current_app.extensions[EXTENSION]  # type: ignore[no-any-return]


def check_serving(m: StreamManager) -> None:
    if m.draining:
        raise ApiError(503, "draining", "this worker is shutting down; retry on a new connection",
                       headers={"Retry-After": "1"})


def refuse_head() -> None:
    """A HEAD on a stream path would open a stream (Flask answers HEAD with the GET view)."""
    if request.method == "HEAD":
        raise ApiError(405, "method_not_allowed", "HEAD is not allowed on a stream path",
                       headers={"Allow": "GET"})


def authenticate(m: StreamManager) -> str | None:
    """The caller's owner tag; 401 unless it presents one of API_KEYS (when set)."""
    keys = m.settings.api_keys()
    if not keys:
        return None
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() == "bearer" and token:
        # Compare against every key, so the time taken tells nothing about which one is close.
        matched = [key for key in keys if hmac.compare_digest(key.encode(), token.encode())]
        if matched:
            return owner_tag(matched[0])
    raise ApiError(401, "unauthorized", "a valid API key is required (Authorization: Bearer)",
                   headers={"WWW-Authenticate": "Bearer"})


def caller(m: StreamManager) -> str | None:
    """The caller's owner tag, or None where a resume token (`?token=`) stands in for the key:
    a browser EventSource cannot send an Authorization header."""
    if request.args.get("token") is not None and "Authorization" not in request.headers:
        return None
    return authenticate(m)


def read_json(m: StreamManager) -> Any:
    """The request's JSON body: 413 over MAX_BODY_BYTES, 415 if not JSON, 400 if not parsable,
    408 if it does not arrive within BODY_TIMEOUT."""
    limit = m.settings.MAX_BODY_BYTES
    length = request.content_length
    if length is not None and length > limit:
        raise ApiError(413, "payload_too_large", f"the body is over {limit} bytes")
    body = _read_within(limit + 1, m.settings.BODY_TIMEOUT)
    if len(body) > limit:
        raise ApiError(413, "payload_too_large", f"the body is over {limit} bytes")
    if request.mimetype != "application/json":
        raise ApiError(415, "unsupported_media_type", "send the body as application/json")
    return parse_json(body)


class _BodyTimeout(Exception):
    pass


def _read_within(size: int, timeout: float) -> bytes:
    """Read up to `size` bytes of the body, all within `timeout` seconds (a slow sender holds
    a connection, never a whole worker: under gevent only its greenlet waits)."""
    sock = request.environ.get("gunicorn.socket")
    try:
        if gevent_active():
            import gevent

            with gevent.Timeout(timeout, _BodyTimeout):
                return request.stream.read(size)
        if sock is not None:
            # Threads: a bound on each read, the closest a blocking socket offers.
            sock.settimeout(timeout)
        try:
            return request.stream.read(size)
        finally:
            if sock is not None:
                sock.settimeout(None)
    except (_BodyTimeout, TimeoutError):
        raise ApiError(408, "request_timeout",
                       f"the body did not arrive within {timeout:g} s", close=True) from None


def last_event_id() -> int | None:
    return parse_last_event_id(request.headers.get("Last-Event-ID"),
                               request.args.get("last_event_id"))


def find(m: StreamManager, stream_id: str, owner: str | None,
         token: str | None = None) -> StreamMeta:
    """The stream's metadata if the caller may see it: its key's, or its resume token's."""
    try:
        meta = m.store.meta(stream_id)
    except UnknownStreamError:
        meta = None
    # Someone else's stream is as unknown to the caller as a missing one.
    if meta is not None and (
        meta.owner == owner
        or (token is not None and hmac.compare_digest(token.encode(), meta.resume_token.encode()))
    ):
        return meta
    raise ApiError(404, "not_found", "no such stream (unknown, expired or not yours)")


def start(m: StreamManager, params: dict[str, Any], owner: str | None, *, fmt: str,
          options: Mapping[str, Any] | None = None,
          headers: Mapping[str, str] | None = None) -> Response:
    """Start a stream and answer it as SSE; with an Idempotency-Key that was seen before,
    attach to the stream it started instead (a client that re-sends a dropped POST)."""
    key = request.headers.get("Idempotency-Key")
    if key is None:
        generation, following = m.start(params, owner, fmt=fmt, options=options)
        return stream_response(m, generation.stream_id, 0, following, headers)
    if not _IDEMPOTENCY_KEY.match(key):
        raise ApiError(422, "invalid_request",
                       "Idempotency-Key: 1 to 128 visible ASCII characters")
    cursor = last_event_id()  # checked before anything starts
    fingerprint = hashlib.sha256(orjson.dumps(
        [fmt, params, dict(options or {})], option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]
    index = ("idempotency", owner, key)
    stream_id = m.new_stream_id()
    claim = f"{stream_id} {fingerprint}"
    deadline = time.monotonic() + _CLAIM_PATIENCE
    while True:
        held = m.store.index_add(index, claim)
        if held is None:
            break
        held_id, _, held_fingerprint = held.partition(" ")
        if held_fingerprint != fingerprint:
            raise ApiError(422, "idempotency_key_reused",
                           "Idempotency-Key: already used with a different request")
        try:
            meta = m.store.meta(held_id)
        except UnknownStreamError:
            if time.monotonic() < deadline:
                time.sleep(0.05)  # its start is under way on some worker: no event to wait on
                continue
            # Its start failed or its worker died before creating it: take the claim over.
            if m.store.index_swap(index, claim) == held:
                break
            continue
        return attach_response(m, meta, None if cursor is None else cursor + 1, headers)
    try:
        generation, following = m.start(params, owner, fmt=fmt, options=options,
                                         stream_id=stream_id)
    except BaseException:
        m.store.index_remove(index, claim)
        raise
    return stream_response(m, generation.stream_id, 0, following, headers)


def resume(find: Callable[[StreamManager], StreamMeta | None],
           headers: Mapping[str, str] | None = None) -> Response:
    """A resume request on any format's path: HEAD refused and Last-Event-ID checked first,
    then the stream `find` gives (it raises for one the caller may not see; None answers 204,
    nothing to resume), from after Last-Event-ID or from its start."""
    refuse_head()
    m = manager()
    last = last_event_id()
    check_serving(m)
    meta = find(m)
    if meta is None:
        return Response(status=204)
    return attach_response(m, meta, None if last is None else last + 1, headers)


def attach_response(m: StreamManager, meta: StreamMeta, cursor: int | None,
                    headers: Mapping[str, str] | None = None) -> Response:
    """Follow a stream from `cursor` (0 when None); 204 when the client has everything."""
    cursor = cursor or 0
    length, ended = m.store.status(meta.stream_id)
    if ended and cursor >= length:
        # The client has everything: 204 stops a browser EventSource from reconnecting.
        return Response(status=204)
    following = m.follow(meta.stream_id, meta.owner)
    m.metrics.resumes.inc()
    return stream_response(m, meta.stream_id, cursor, following, headers)


def stream_response(m: StreamManager, stream_id: str, cursor: int, following: Following,
                    headers: Mapping[str, str] | None = None) -> Response:
    """The SSE response of one client: events from `cursor`, heartbeats, `[DONE]`."""
    try:
        client = ClientSocket(request.environ, lambda: m.store.wake(stream_id),
                              m.settings.SEND_TIMEOUT)
        send_timeout = m.settings.SEND_TIMEOUT
        metrics = m.metrics

        def ended(delivery: Delivery) -> None:
            metrics.clients_attached.dec()
            metrics.bytes_sent.inc(delivery.bytes)
            if delivery.heartbeats:
                metrics.heartbeats.inc(delivery.heartbeats)
            if not delivery.complete:
                metrics.disconnects.labels(cause=_departure(delivery, client.gone,
                                                            send_timeout)).inc()

        body = iter_events(m.store, stream_id, cursor, m.settings.HEARTBEAT_INTERVAL,
                           gone=lambda: client.gone, on_start=metrics.clients_attached.inc,
                           on_end=ended)
        # Passed through as it is: the server iterates the generator itself (no wrapper's
        # frame per write), then calls close().
        response = Response(_Body(body, (client.close, following.release)), status=200,
                            content_type="text/event-stream; charset=utf-8",
                            direct_passthrough=True)
    except BaseException:
        following.release()
        raise
    response.headers.update(SSE_HEADERS)
    response.headers["X-Stream-Id"] = stream_id
    if headers:
        response.headers.update(headers)
    return response


class _Body:
    """A WSGI response body: the SSE generator, then `close` runs `closers` (each once, every
    one even if another fails, as werkzeug's ClosingIterator does)."""

    __slots__ = ("_closers", "_events")

    def __init__(self, events: Generator[bytes, None, None],
                 closers: tuple[Callable[[], None], ...]) -> None:
        self._events = events
        self._closers = closers

    def __iter__(self) -> Iterator[bytes]:
        return self._events

    def close(self) -> None:
        closers, self._closers = (self._events.close, *self._closers), ()
        errors = []
        for close in closers:
            try:
                close()
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]


def _departure(delivery: Delivery, gone: bool, send_timeout: float) -> str:
    """Why a response ended before [DONE]."""
    if gone:
        return "client_closed"
    if delivery.writing_since is None:
        return "expired"  # the log expired under a reader slower than STREAM_TTL
    # A write under way failed: after SEND_TIMEOUT without progress, or at once (a reset).
    if time.monotonic() - delivery.writing_since >= send_timeout * 0.9:
        return "send_timeout"
    return "write_failed"
