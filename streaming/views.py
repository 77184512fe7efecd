"""The native format's HTTP endpoints and the service's own, as a blueprint. Thin: check,
parse, hand off to the manager, return the stream."""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from . import edge
from .errors import ApiError, StoreUnavailableError
from .manager import StreamManager
from .metrics import CONTENT_TYPE
from .stores import StreamMeta
from .validation import parse_chat_request

log = logging.getLogger(__name__)

EXTENSION = edge.EXTENSION

bp = Blueprint("llm_stream", __name__)


@bp.errorhandler(ApiError)
def api_error(exc: ApiError) -> Response:
    edge.manager().metrics.requests_refused.labels(status=str(exc.status)).inc()
    response = jsonify(error={"type": exc.type, "message": exc.message})
    response.status_code = exc.status
    response.headers.update(exc.headers)
    if exc.close:
        close_after(response)
    return response


def close_after(response: Response) -> None:
    """Close the connection once `response` is sent (the server would otherwise wait for the
    rest of a body that is not coming before reading the next request)."""
    sock = request.environ.get("gunicorn.socket")
    if sock is not None:
        response.call_on_close(lambda: _shutdown(sock))


def _shutdown(sock: Any) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def store_unavailable_error() -> ApiError:
    return ApiError(503, "store_unavailable", "the stream store is unreachable; retry shortly",
                    headers={"Retry-After": "1"})


@bp.errorhandler(StoreUnavailableError)
def store_unavailable(exc: StoreUnavailableError) -> Response:
    return api_error(store_unavailable_error())


@bp.errorhandler(HTTPException)
def http_error(exc: HTTPException) -> Response:
    """404/405 and the like, in the contract's JSON shape rather than Werkzeug's HTML."""
    response = jsonify(error={"type": (exc.name or "error").lower().replace(" ", "_"),
                              "message": exc.description or exc.name})
    response.status_code = exc.code or 500
    if exc.code == 405:
        response.headers.update({k: v for k, v in exc.get_headers() if k == "Allow"})
    return response


@bp.errorhandler(Exception)
def unexpected(exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.path)
    response = jsonify(error={"type": "internal", "message": "the service failed"})
    response.status_code = 500
    return response


# Stream paths answer no automatic OPTIONS (405 unless CORS answers the preflight).
@bp.post("/api/chat/stream", provide_automatic_options=False)
def start_stream() -> Response:
    m = edge.manager()
    edge.check_serving(m)
    owner = edge.authenticate(m)
    params = parse_chat_request(edge.read_json(m), m.settings)
    return edge.start(m, params, owner, fmt="native")


@bp.get("/api/chat/stream/<stream_id>", provide_automatic_options=False)
def attach_stream(stream_id: str) -> Response:
    def find(m: StreamManager) -> StreamMeta:
        meta = edge.find(m, stream_id, edge.caller(m), request.args.get("token"))
        if meta.format != "native":
            # Its events are in another format: resume it on that format's own path.
            raise ApiError(404, "not_found", "no such stream (unknown, expired or not yours)")
        return meta

    return edge.resume(find)


@bp.post("/api/chat/stream/<stream_id>/cancel", provide_automatic_options=False)
def cancel_stream(stream_id: str) -> tuple[Response, int]:
    m = edge.manager()
    edge.check_serving(m)
    edge.find(m, stream_id, edge.authenticate(m))
    m.cancel(stream_id)
    return jsonify(status="cancelling"), 202


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    m = edge.manager()
    checks = {
        "store": _safely(m.store.ping),
        "provider": m.provider_ready(),
        "draining": m.draining,
    }
    ok = checks["store"] and checks["provider"] and not m.draining
    return jsonify(status="ok" if ok else "unavailable", checks=checks,
                   provider=m.provider.name), 200 if ok else 503


@bp.get("/metrics")
def metrics() -> Response:
    return Response(edge.manager().metrics.exposition(), content_type=CONTENT_TYPE)


def _safely(check: Callable[[], Any]) -> bool:
    try:
        return bool(check())
    except Exception:
        log.warning("readiness check failed", exc_info=True)
        return False
