"""OpenAI Chat Completions at `/v1` (PROTOCOL.md, "Other wire formats"), as a blueprint: any
OpenAI client works with `base_url` set to the service's `/v1`. Thin, like the native views;
the request's fields are checked here, the chunks are `formats/openai.py`'s.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Annotated, Any, Literal, cast

from flask import Blueprint, Response, jsonify, request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from werkzeug.exceptions import HTTPException

from . import edge
from .errors import ApiError, StoreUnavailableError
from .formats.openai import assemble, error_type
from .manager import StreamManager
from .stores import StreamMeta
from .validation import check_max_tokens, check_messages, choose_model

log = logging.getLogger(__name__)

FORMAT = "openai"

bp = Blueprint("llm_stream_v1", __name__)

_Strict = ConfigDict(extra="forbid", strict=True)
_Penalty = Annotated[float, Field(ge=-2, le=2)]


class _StreamOptions(BaseModel):
    model_config = _Strict
    include_usage: bool | None = None
    # Asks OpenAI to pad chunks against length side channels; these chunks carry none.
    include_obfuscation: bool | None = None


class _Request(BaseModel):
    """OpenAI's Chat Completions fields that the contract takes (besides `messages`); the
    shapes of tools, tool_choice, response_format and metadata are the upstream's to judge."""

    model_config = _Strict
    model: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    stream: bool | None = None
    stream_options: _StreamOptions | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    stop: str | Annotated[list[str], Field(max_length=4)] | None = None
    seed: int | None = None
    presence_penalty: _Penalty | None = None
    frequency_penalty: _Penalty | None = None
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    user: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    reasoning_effort: str | None = None
    metadata: dict[str, str] | None = None
    n: Literal[1] | None = None


# Read by the service, not passed on: the upstream is always asked to stream, with usage.
_OWN_FIELDS = frozenset({"messages", "model", "stream", "stream_options", "n"})
# Ends that a retry of the same request cannot change: a cancel was meant, and the upstream
# refusing the service's key will refuse it again.
_FINAL = frozenset({"cancelled", "upstream_auth"})
# A body field as the shared checks name it ("max_tokens", "messages.0.content"), not a header.
_FIELD_PATH = re.compile(r"^[a-z_]+(\.[A-Za-z0-9_]+)*$")


class V1Error(ApiError):
    """A refusal naming the request field it is about (OpenAI's `param`)."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(status, "invalid_request", message)
        self.param = param


# -- errors: OpenAI's body, the contract's statuses ------------------------------------------


@bp.errorhandler(ApiError)
def api_error(exc: ApiError) -> Response:
    edge.manager().metrics.requests_refused.labels(status=str(exc.status)).inc()
    param = getattr(exc, "param", None)
    if param is None and exc.status == 422:
        # The shared checks name the field first: "messages.0.content: ..."
        head, sep, _ = exc.message.partition(": ")
        param = head if sep and _FIELD_PATH.match(head) else None
    # OpenAI's own code for a missing or wrong key, which clients may look for.
    code = "invalid_api_key" if exc.status == 401 else exc.type
    return _error(exc.status, exc.message, code, param, exc.headers)


@bp.errorhandler(StoreUnavailableError)
def _store_unavailable(exc: StoreUnavailableError) -> Response:
    return api_error(ApiError(503, "store_unavailable",
                              "the stream store is unreachable; retry shortly",
                              headers={"Retry-After": "1"}))


@bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> Response:
    headers = {k: v for k, v in exc.get_headers() if k == "Allow"} if exc.code == 405 else {}
    code = (exc.name or "error").lower().replace(" ", "_")
    return _error(exc.code or 500, exc.description or exc.name, code, None, headers)


@bp.errorhandler(Exception)
def _unexpected(exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.path)
    return _error(500, "the service failed", "internal", None, {})


def _error(status: int, message: str, code: str, param: str | None,
           headers: dict[str, str]) -> Response:
    response = jsonify(error={"message": message, "type": error_type(status), "param": param,
                              "code": code})
    response.status_code = status
    response.headers.update(headers)
    return response


# -- the endpoints -----------------------------------------------------------------------


@bp.post("/v1/chat/completions", provide_automatic_options=False)
def chat_completions() -> Response:
    m = edge.manager()
    edge.check_serving(m)
    owner = edge.authenticate(m)
    raw = edge.read_json(m)
    params, fields = parse_request(raw, m)
    if fields.stream:
        include_usage = bool(fields.stream_options and fields.stream_options.include_usage)
        return edge.start(m, params, owner, fmt=FORMAT, options={"include_usage": include_usage})
    return _whole(m, params, owner)


def _whole(m: StreamManager, params: dict[str, Any], owner: str | None) -> Response:
    """Relay the answer as a stream, read it here to its end, and answer it in one piece."""
    # "whole" keeps an Idempotency-Key from matching a streamed request with the same fields.
    stream = edge.start(m, params, owner, fmt=FORMAT,
                        options={"include_usage": True, "whole": True})
    stream_id = stream.headers.get("X-Stream-Id")
    if stream_id is None:  # 204: an idempotent repeat whose Last-Event-ID is past the end
        return stream
    body: list[bytes] = []
    ended = False
    try:
        # The SSE body of a client like any other: it ends early only when the client's
        # socket closed (the response watches it), so the wait notices a departure at once.
        for data in cast(Iterable[bytes], stream.response):
            body.append(data)
            ended = ended or data.endswith(b"data: [DONE]\n\n")
    finally:
        stream.close()
    if not ended:
        # The client went away: nobody can read this answer (it cannot be resumed).
        m.cancel(stream_id)
    completion = assemble(body)
    response = jsonify(completion.body())
    response.status_code = completion.status()
    response.headers["X-Stream-Id"] = stream_id
    if completion.error is not None and completion.error.get("code") in _FINAL:
        # OpenAI's SDKs retry 409 and 5xx unless told not to.
        response.headers["x-should-retry"] = "false"
    return response


@bp.get("/v1/chat/completions/<stream_id>/stream", provide_automatic_options=False)
def resume(stream_id: str) -> Response:
    return edge.resume(lambda m: _find(m, stream_id))


@bp.post("/v1/chat/completions/<stream_id>/cancel", provide_automatic_options=False)
def cancel(stream_id: str) -> tuple[Response, int]:
    m = edge.manager()
    edge.check_serving(m)
    _find(m, stream_id)
    m.cancel(stream_id)
    return jsonify(status="cancelling"), 202


@bp.get("/v1/models")
def models() -> Response:
    m = edge.manager()
    edge.authenticate(m)
    names = m.settings.ALLOWED_MODELS or [m.settings.LLM_MODEL]
    return jsonify(object="list", data=[
        {"id": name, "object": "model", "created": 0, "owned_by": "flask-llm-stream"}
        for name in names])


def _find(m: StreamManager, stream_id: str) -> StreamMeta:
    meta = edge.find(m, stream_id, edge.authenticate(m))
    if meta.format != FORMAT:
        # Its events are in another format: this path could not serve them.
        raise ApiError(404, "not_found", "no such completion stream (unknown, expired, "
                       "not yours, or started in another format)")
    return meta


# -- the request -------------------------------------------------------------------------


def parse_request(raw: Any, m: StreamManager) -> tuple[dict[str, Any], _Request]:
    """The upstream parameters for an OpenAI request, and its fields; 422 naming the field."""
    settings = m.settings
    if not isinstance(raw, dict):
        raise V1Error(422, "the body must be a JSON object")
    unknown = sorted(set(raw) - set(_Request.model_fields) - {"messages"})
    if unknown:
        raise V1Error(422, f"{unknown[0]}: not supported by this service", unknown[0])
    if "messages" not in raw:
        raise V1Error(422, "messages: is required", "messages")
    check_messages(raw["messages"], settings)
    try:
        fields = _Request.model_validate({k: v for k, v in raw.items() if k != "messages"})
    except ValidationError as exc:
        errors = [(".".join(str(p) for p in e["loc"] if not _is_branch(p)), e["msg"])
                  for e in exc.errors(include_url=False)]
        param = errors[0][0]
        # A union (stop: a string or a list) fails once per branch: say what each wanted.
        wanted = " or ".join(dict.fromkeys(msg for where, msg in errors if where == param))
        raise V1Error(422, f"{param}: {wanted}", param or None) from None
    if fields.stream_options is not None and not fields.stream:
        raise V1Error(422, "stream_options: only allowed when stream is true", "stream_options")
    check_max_tokens(fields.max_tokens, settings)
    check_max_tokens(fields.max_completion_tokens, settings, "max_completion_tokens")
    params: dict[str, Any] = {"model": choose_model(fields.model, settings),
                              "messages": raw["messages"]}
    for name, value in raw.items():
        if name not in _OWN_FIELDS and value is not None:
            params[name] = value  # as sent: the upstream reads them, not us
    return params, fields


def _is_branch(part: Any) -> bool:
    # pydantic names union branches in `loc` ("str", "list[str]", "literal['none',...]").
    return isinstance(part, str) and (part in ("str", "int", "float", "bool")
                                      or "[" in part or "-" in part)
