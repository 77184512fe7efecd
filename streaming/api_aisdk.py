"""The AI SDK UI message stream's HTTP endpoints (PROTOCOL.md, "AI SDK UI message stream:
/api/chat"), at the paths `useChat` and `DefaultChatTransport` use by default. Thin: check,
parse, hand off, respond.

A chat has at most one running stream, recorded in the store's index ("chat", owner, chat id)
-> stream id, so that any worker finds it to resume or stop it.
"""

from __future__ import annotations

import logging

from flask import Blueprint, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from . import edge
from .errors import ApiError, StoreUnavailableError
from .formats import aisdk
from .manager import StreamManager
from .stores import StreamMeta, UnknownStreamError
from .stores.base import IndexKey
from .views import api_error, http_error, store_unavailable, unexpected

log = logging.getLogger(__name__)

bp = Blueprint("llm_stream_aisdk", __name__)
# Refusals in the native error body (PROTOCOL.md): the native edge's handlers.
bp.register_error_handler(ApiError, api_error)
bp.register_error_handler(HTTPException, http_error)
bp.register_error_handler(StoreUnavailableError, store_unavailable)
bp.register_error_handler(Exception, unexpected)


# Stream paths answer no automatic OPTIONS (405 unless CORS answers the preflight).
@bp.post("/api/chat", provide_automatic_options=False)
def send_messages() -> Response:
    m = edge.manager()
    edge.check_serving(m)
    owner = edge.authenticate(m)
    chat_id, params, options = aisdk.parse_request(edge.read_json(m), m.settings)
    response = edge.start(m, params, owner, fmt="aisdk", options=options,
                          headers=aisdk.HEADERS)
    stream_id = response.headers.get("X-Stream-Id")
    if stream_id is None:  # an idempotent retry after the end: 204, nothing runs
        return response
    try:
        previous = m.store.index_swap(_chat(owner, chat_id), stream_id)
        if previous is not None and previous != stream_id:
            m.cancel(previous)  # one running stream per chat: the newest wins
    except BaseException:
        response.close()  # releases the client's hold: the stream then ends by itself
        raise
    return response


@bp.get("/api/chat/<chat_id>/stream", provide_automatic_options=False)
def resume_stream(chat_id: str) -> Response:
    def find(m: StreamManager) -> StreamMeta | None:
        owner = edge.authenticate(m)
        aisdk.check_chat_id(chat_id)
        # None (204) is what the transport takes for "nothing to resume".
        return _running(m, owner, chat_id)

    # Without Last-Event-ID, from the start: the transport expects a full replay and rebuilds
    # the message from it (same messageId, so it replaces rather than appends).
    return edge.resume(find, aisdk.HEADERS)


@bp.post("/api/chat/<chat_id>/stop", provide_automatic_options=False)
def stop_stream(chat_id: str) -> Response:
    m = edge.manager()
    edge.check_serving(m)
    owner = edge.authenticate(m)
    aisdk.check_chat_id(chat_id)
    # The AI SDK's stop recipe posts JSON (`{}` at least); a bare POST is taken as `{}`.
    body = edge.read_json(m) if request.content_length else {}
    active = body.get("activeStreamId") if isinstance(body, dict) else None
    key = _chat(owner, chat_id)
    stream_id = m.store.index_get(key)
    # A stop that names another stream is stale: a newer stream started since.
    if stream_id is not None and (active is None or active == stream_id):
        m.cancel(stream_id)
        # At once, so that a resume right after the stop finds nothing to reconnect to.
        m.store.index_remove(key, stream_id)
    return jsonify(success=True)


def _chat(owner: str | None, chat_id: str) -> IndexKey:
    return ("chat", owner, chat_id)


def _running(m: StreamManager, owner: str | None, chat_id: str) -> StreamMeta | None:
    """The chat's stream if it is still running."""
    key = _chat(owner, chat_id)
    stream_id = m.store.index_get(key)
    if stream_id is None:
        return None
    try:
        meta = m.store.meta(stream_id)
        _, ended = m.store.status(stream_id)
    except UnknownStreamError:
        ended = True
    if ended:
        # Once its last part is written the chat has nothing running.
        m.store.index_remove(key, stream_id)
        return None
    return meta
