"""The HTTP endpoints, as a blueprint. Thin: check, hand off to the manager, return the stream."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException
from werkzeug.wsgi import ClosingIterator

from .errors import ApiError, StoreUnavailableError
from .manager import StreamManager, owner_tag
from .metrics import CONTENT_TYPE
from .response import DisconnectWatcher, iter_events
from .stores import StreamMeta, UnknownStreamError
from .validation import parse_chat_request, parse_json, parse_last_event_id

log = logging.getLogger(__name__)

EXTENSION = "llm_stream"

SSE_HEADERS = {
    "Cache-Control": "no-cache",
    # nginx: pass each event on at once, whatever proxy_buffering says.
    "X-Accel-Buffering": "no",
}

bp = Blueprint("llm_stream", __name__)


def _manager() -> StreamManager:
    return current_app.extensions[EXTENSION]


@bp.errorhandler(ApiError)
def _api_error(exc: ApiError) -> Response:
    _manager().metrics.requests_refused.labels(status=str(exc.status)).inc()
    response = jsonify(error={"type": exc.type, "message": exc.message})
    response.status_code = exc.status
    response.headers.update(exc.headers)
    return response


@bp.errorhandler(StoreUnavailableError)
def _store_unavailable(exc: StoreUnavailableError) -> Response:
    return _api_error(ApiError(503, "store_unavailable",
                               "the stream store is unreachable; retry shortly",
                               headers={"Retry-After": "1"}))


@bp.errorhandler(HTTPException)
def http_error(exc: HTTPException) -> Response:
    """404/405 and the like, in the contract's JSON shape rather than Werkzeug's HTML."""
    response = jsonify(error={"type": (exc.name or "error").lower().replace(" ", "_"),
                              "message": exc.description or exc.name})
    response.status_code = exc.code or 500
    return response


@bp.errorhandler(Exception)
def _unexpected(exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.path)
    response = jsonify(error={"type": "internal", "message": "the service failed"})
    response.status_code = 500
    return response


def _check_serving(manager: StreamManager) -> None:
    if manager.draining:
        raise ApiError(503, "draining", "this worker is shutting down; retry on a new connection",
                       headers={"Retry-After": "1"})


def _authenticate(manager: StreamManager) -> str | None:
    """The caller's owner tag; 401 unless it presents one of API_KEYS (when set)."""
    keys = manager.settings.api_keys()
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


def _find(manager: StreamManager, stream_id: str, owner: str | None,
          token: str | None = None) -> StreamMeta:
    """The stream's metadata if the caller may see it: its key's, or its resume token's."""
    try:
        meta = manager.store.meta(stream_id)
    except UnknownStreamError:
        meta = None
    # Someone else's stream is as unknown to the caller as a missing one.
    if meta is not None and (
        meta.owner == owner
        or (token is not None and hmac.compare_digest(token.encode(), meta.resume_token.encode()))
    ):
        return meta
    raise ApiError(404, "not_found", "no such stream (unknown, expired or not yours)")


def _caller(manager: StreamManager) -> str | None:
    """The caller's owner tag, or None where a resume token may stand in for the key."""
    if request.args.get("token") is not None and "Authorization" not in request.headers:
        return None
    return _authenticate(manager)


def _read_body(limit: int) -> bytes:
    length = request.content_length
    if length is not None and length > limit:
        raise ApiError(413, "payload_too_large", f"the body is over {limit} bytes")
    body = request.stream.read(limit + 1)
    if len(body) > limit:
        raise ApiError(413, "payload_too_large", f"the body is over {limit} bytes")
    return body


def _stream_response(manager: StreamManager, stream_id: str, cursor: int,
                     on_close: Callable[[], None]) -> Response:
    watcher = DisconnectWatcher(request.environ,
                                lambda: manager.store.wake(stream_id))
    body = iter_events(manager.store, stream_id, cursor, manager.settings.HEARTBEAT_INTERVAL,
                       gone=lambda: watcher.gone)
    response = Response(ClosingIterator(body, [watcher.close, on_close]), status=200,
                        content_type="text/event-stream; charset=utf-8")
    response.headers.update(SSE_HEADERS)
    response.headers["X-Stream-Id"] = stream_id
    return response


@bp.post("/api/chat/stream")
def start_stream() -> Response:
    manager = _manager()
    _check_serving(manager)
    owner = _authenticate(manager)
    body = _read_body(manager.settings.MAX_BODY_BYTES)
    if request.mimetype != "application/json":
        raise ApiError(415, "unsupported_media_type", "send the body as application/json")
    params = parse_chat_request(parse_json(body), manager.settings)
    generation, following = manager.start(params, owner)
    return _stream_response(manager, generation.stream_id, 0, following.release)


@bp.get("/api/chat/stream/<stream_id>")
def attach_stream(stream_id: str) -> Response:
    manager = _manager()
    last = parse_last_event_id(request.headers.get("Last-Event-ID"),
                               request.args.get("last_event_id"))
    _check_serving(manager)
    meta = _find(manager, stream_id, _caller(manager), request.args.get("token"))
    cursor = 0 if last is None else last + 1
    length, ended = manager.store.status(stream_id)
    if ended and cursor >= length:
        # The client has everything: 204 stops a browser EventSource from reconnecting.
        return Response(status=204)
    following = manager.follow(stream_id, meta.owner)
    return _stream_response(manager, stream_id, cursor, following.release)


@bp.post("/api/chat/stream/<stream_id>/cancel")
def cancel_stream(stream_id: str) -> tuple[Response, int]:
    manager = _manager()
    _check_serving(manager)
    owner = _authenticate(manager)
    _find(manager, stream_id, owner)
    manager.cancel(stream_id)
    return jsonify(status="cancelling"), 202


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    manager = _manager()
    checks = {
        "store": _safely(manager.store.ping),
        "provider": _safely(manager.provider.ready),
        "draining": manager.draining,
    }
    ok = checks["store"] and checks["provider"] and not manager.draining
    return jsonify(status="ok" if ok else "unavailable", checks=checks,
                   provider=manager.provider.name), 200 if ok else 503


@bp.get("/metrics")
def metrics() -> Response:
    return Response(_manager().metrics.exposition(), content_type=CONTENT_TYPE)


def _safely(check: Any) -> bool:
    try:
        return bool(check())
    except Exception:
        log.warning("readiness check failed", exc_info=True)
        return False
