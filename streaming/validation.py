"""Request validation (PROTOCOL.md, "Starting a stream"). Pure: bytes and headers in, a
request for the upstream or an `ApiError` out.

Every wire format shares these checks: `parse_json` for bodies, `check_messages` for chat
messages, `check_max_tokens` and `choose_model` for the options they have in common.
"""

from __future__ import annotations

import re
from itertools import accumulate
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from .errors import ApiError
from .settings import Settings

_WHOLE_NUMBER = re.compile(r"^[0-9]+$")
_PAST_ANY_STREAM = 2**62  # a cursor no stream reaches

# PROTOCOL.md: "JSON nested deeper than 32 levels anywhere in the body is refused (422)".
MAX_JSON_DEPTH = 32
# A JSON string, closed or not (an unclosed one runs to the end of the body). Unrolled so
# that it matches in one pass and never backtracks more than it advanced.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)
# Outside strings only the brackets matter: opening ones count +1, closing ones -1.
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}

# RFC 3986: scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ), then ":".
_URL_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")

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


_Messages = TypeAdapter(list[_Message], config=ConfigDict(strict=True))


class _Options(BaseModel):
    """The native request's fields besides `messages`."""

    model_config = Strict
    model: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None


_FIELDS = frozenset(_Options.model_fields) | {"messages"}


def parse_json(body: bytes) -> Any:
    """The parsed body: 422 when nested deeper than 32 levels (checked first, on the bytes),
    400 when not JSON."""
    check_json_depth(body)
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {exc}") from None


def check_json_depth(body: bytes, limit: int = MAX_JSON_DEPTH) -> None:
    """422 if arrays and objects nest deeper than `limit` anywhere in `body`.

    Runs on the raw bytes, before parsing, in linear time and without recursion, so no body
    can make it slow or overflow a stack; brackets inside strings do not count.
    """
    if body.count(b"[") + body.count(b"{") <= limit:
        return  # the common case: too few brackets to nest that deep
    brackets = _JSON_STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    if max(accumulate(map(_STEP.__getitem__, brackets)), default=0) > limit:
        raise ApiError(422, "invalid_request",
                       f"the body nests arrays and objects deeper than {limit} levels")


def parse_chat_request(raw: Any, settings: Settings) -> dict[str, Any]:
    """Validate a parsed native body; return the upstream parameters (messages exactly as
    sent). Other formats map their requests to these same parameters."""
    if not isinstance(raw, dict):
        raise ApiError(422, "invalid_request", "the body must be a JSON object")
    unknown = sorted(set(raw) - _FIELDS)
    if unknown:
        raise ApiError(422, "invalid_request", f"unknown field: {unknown[0]!r}")
    if "messages" not in raw:
        raise ApiError(422, "invalid_request", "messages: is required")
    check_messages(raw["messages"], settings)
    try:
        options = _Options.model_validate({k: v for k, v in raw.items() if k != "messages"})
    except ValidationError as exc:
        raise ApiError(422, "invalid_request", _describe(exc)) from None
    check_max_tokens(options.max_tokens, settings)
    params: dict[str, Any] = {"model": choose_model(options.model, settings),
                              "messages": raw["messages"]}
    if options.temperature is not None:
        params["temperature"] = options.temperature
    if options.max_tokens is not None:
        params["max_tokens"] = options.max_tokens
    return params


def check_messages(messages: Any, settings: Settings, field: str = "messages") -> None:
    """422 naming the field unless `messages` is a list of 1 to MAX_MESSAGES chat messages
    (PROTOCOL.md's schema) whose `image_url` parts use one of IMAGE_URL_SCHEMES.

    Every format calls this on the chat messages it will send upstream; `field` names the
    list in error messages.
    """
    if not isinstance(messages, list):
        raise ApiError(422, "invalid_request", f"{field}: must be a list of messages")
    if not messages:
        raise ApiError(422, "invalid_request", f"{field}: must hold at least one message")
    # Counted before the schema, so an oversized list costs nothing to refuse.
    if len(messages) > settings.MAX_MESSAGES:
        raise ApiError(422, "invalid_request",
                       f"{field}: at most {settings.MAX_MESSAGES} messages, got {len(messages)}")
    try:
        _Messages.validate_python(messages)
    except ValidationError as exc:
        raise ApiError(422, "invalid_request", _describe(exc, field)) from None
    allowed = [scheme.lower() for scheme in settings.IMAGE_URL_SCHEMES]
    for i, message in enumerate(messages):
        content = message["content"]
        if not isinstance(content, list):
            continue
        for j, part in enumerate(content):
            if part["type"] == "image_url":
                _check_image_url(part["image_url"]["url"], allowed,
                                 f"{field}.{i}.content.{j}.image_url.url")


def check_max_tokens(value: int | None, settings: Settings, field: str = "max_tokens") -> None:
    """422 naming the field if `value` is over MAX_OUTPUT_TOKENS (when that is set)."""
    cap = settings.MAX_OUTPUT_TOKENS
    if value is not None and cap is not None and value > cap:
        raise ApiError(422, "invalid_request", f"{field}: at most {cap}")


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
    # Any whole number is valid; past the last event it means "only what comes after". Leading
    # zeros change nothing; the length check keeps int() off huge digit strings.
    digits = value.lstrip("0") or "0"
    return int(digits) if len(digits) < 19 else _PAST_ANY_STREAM


def _check_image_url(url: str, allowed: list[str], where: str) -> None:
    # A self-hosted upstream fetches image URLs itself: only the allowed schemes, so clients
    # cannot make it read file:// or internal http:// addresses. No scheme: refused too, as
    # an upstream may resolve it against something of its own.
    match = _URL_SCHEME.match(url)
    scheme = match.group(1).lower() if match else None
    if scheme not in allowed:
        shown = f"scheme {scheme!r}" if scheme else "a URL without a scheme"
        raise ApiError(422, "invalid_request",
                       f"{where}: {shown} is not allowed; use one of " + ", ".join(allowed))


def _describe(exc: ValidationError, prefix: str = "") -> str:
    # A union (content: string or list of parts) reports one error per branch; the deepest is
    # the one about what the client meant.
    errors = [(_where(e["loc"], prefix), e) for e in exc.errors(include_url=False)]
    where, error = max(errors, key=lambda pair: pair[0].count("."))
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        message = "unknown field"
    elif error["type"] == "missing":
        message = "is required"
    return f"{where}: {message}" if where else message


def _where(loc: tuple[Any, ...], prefix: str = "") -> str:
    # pydantic names union branches in `loc` ("str", "list[...]", "function-after[...]", and
    # the tag of a tagged union); people want the path of fields.
    parts = [str(p) for p in loc if not (isinstance(p, str) and (p == "str" or "[" in p))]
    # A tagged union repeats the tag before the part's fields: "0.text.text" -> "0.text".
    out: list[str] = [prefix] if prefix else []
    for i, part in enumerate(parts):
        if i and part in ("text", "image_url") and parts[i - 1].isdigit() and i + 1 < len(parts):
            continue
        out.append(part)
    return ".".join(out)
