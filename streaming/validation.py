"""Request validation (PROTOCOL.md, "Starting a stream"). Pure: bytes and headers in, a
request for the upstream or an `ApiError` out.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import ApiError
from .settings import Settings

_WHOLE_NUMBER = re.compile(r"^[0-9]+$")
_PAST_ANY_STREAM = 2**62  # a cursor no stream reaches

Strict = ConfigDict(extra="forbid", strict=True)


class _ImageURL(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    url: str


class _TextPart(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    type: Literal["text"]
    text: str


class _ImagePart(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    type: Literal["image_url"]
    image_url: _ImageURL


_Part = Annotated[_TextPart | _ImagePart, Field(discriminator="type")]


class _Message(BaseModel):
    model_config = Strict
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | Annotated[list[_Part], Field(min_length=1)] | None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[dict[str, Any]] | None = None

    @model_validator(mode="after")
    def _null_content(self) -> _Message:
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError("content may be null only on an assistant message with tool_calls")
        return self


class ChatRequest(BaseModel):
    model_config = Strict
    messages: Annotated[list[_Message], Field(min_length=1)]
    model: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None


def parse_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {exc}") from None


def parse_chat_request(raw: Any, settings: Settings) -> dict[str, Any]:
    """Validate a parsed native body; return the upstream parameters (messages exactly as
    sent). Other formats map their requests to these same parameters."""
    if not isinstance(raw, dict):
        raise ApiError(422, "invalid_request", "the body must be a JSON object")
    unknown = sorted(set(raw) - set(ChatRequest.model_fields))
    if unknown:
        raise ApiError(422, "invalid_request", f"unknown field: {unknown[0]!r}")
    try:
        request = ChatRequest.model_validate(raw)
    except ValidationError as exc:
        raise ApiError(422, "invalid_request", _describe(exc)) from None
    params: dict[str, Any] = {"model": choose_model(request.model, settings),
                              "messages": raw["messages"]}
    if request.temperature is not None:
        params["temperature"] = request.temperature
    if request.max_tokens is not None:
        params["max_tokens"] = request.max_tokens
    return params


def choose_model(model: str | None, settings: Settings) -> str:
    """The model to ask for: the client's if allowed (422 otherwise), else LLM_MODEL."""
    model = model or settings.LLM_MODEL
    allowed = settings.ALLOWED_MODELS
    if allowed and model not in allowed:
        raise ApiError(422, "invalid_request",
                       f"model: {model!r} is not allowed here; use one of "
                       + ", ".join(repr(m) for m in allowed))
    return model


def parse_last_event_id(header: str | None, query: str | None) -> int | None:
    """The resume cursor: events after this seq. None means from the start."""
    value = header if header is not None else query
    if value is None:
        return None
    value = value.strip()
    if not _WHOLE_NUMBER.match(value):
        raise ApiError(400, "invalid_last_event_id",
                       "Last-Event-ID must be a whole number, 0 or more")
    # Any whole number is valid; past the last event it means "only what comes after".
    return int(value) if len(value) < 19 else _PAST_ANY_STREAM


def _describe(exc: ValidationError) -> str:
    # A union (content: string or list of parts) reports one error per branch; the deepest is
    # the one about what the client meant.
    errors = [(_where(e["loc"]), e) for e in exc.errors(include_url=False)]
    where, error = max(errors, key=lambda pair: pair[0].count("."))
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        message = "unknown field"
    elif error["type"] == "missing":
        message = "is required"
    return f"{where}: {message}" if where else message


def _where(loc: tuple[Any, ...]) -> str:
    # pydantic names union branches in `loc` ("str", "list[...]", "function-after[...]", and
    # the tag of a tagged union); people want the path of fields.
    parts = [str(p) for p in loc if not (isinstance(p, str) and (p == "str" or "[" in p))]
    # A tagged union repeats the tag before the part's fields: "0.text.text" -> "0.text".
    out: list[str] = []
    for i, part in enumerate(parts):
        if i and part in ("text", "image_url") and parts[i - 1].isdigit() and i + 1 < len(parts):
            continue
        out.append(part)
    return ".".join(out)
