"""Typed configuration, read once from the environment (PROTOCOL.md, "Configuration").

A setting that cannot work stops the service at start, never at the first request: building
`Settings` raises `SettingsError`, whose message is one line naming each bad variable.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .errors import StreamingError

# Their values never appear in an error message or a log line (URLs may hold a password).
_SECRETS = frozenset({"OPENAI_API_KEY", "API_KEYS", "REDIS_URL", "OPENAI_BASE_URL"})
_SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*$")
_DEFAULT_PORTS = {"http": 80, "https": 443}
# What a key can be for a client to send it in `Authorization: Bearer <key>`.
_VISIBLE_ASCII = re.compile(r"^[\x21-\x7e]+$")

# A positive number of seconds: infinity and NaN would reach the timers as they are.
Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]
SecondsOrZero = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class SettingsError(StreamingError, ValueError):
    """A setting that cannot work; the message is one line naming the variables."""


def _split_csv(value: object, *, allow_empty_entries: bool = True) -> object:
    if not isinstance(value, str):
        return value
    if not value.strip():
        return []  # set to nothing: the same as unset
    parts = [part.strip() for part in value.split(",")]
    if "" in parts:
        if not allow_empty_entries:
            raise ValueError("an empty entry (from ',,', a blank or a trailing comma) is "
                             "not allowed; list the values, separated by commas")
        parts = [part for part in parts if part]
    return parts


class Settings(BaseSettings):
    """Every knob of the service; names match the environment variables."""

    model_config = SettingsConfigDict(case_sensitive=True, extra="ignore", frozen=True)

    OPENAI_API_KEY: SecretStr | None = None
    OPENAI_BASE_URL: str | None = None
    LLM_PROVIDER: Literal["openai", "simulated"] | None = None
    LLM_MODEL: str = Field("gpt-4o-mini", min_length=1)
    ALLOWED_MODELS: Annotated[list[str], NoDecode] = Field(default_factory=list)

    HEARTBEAT_INTERVAL: Seconds = 15.0
    FIRST_TOKEN_TIMEOUT: Seconds = 60.0
    IDLE_TIMEOUT: Seconds = 60.0
    STREAM_TIMEOUT: Seconds = 600.0
    UPSTREAM_RETRIES: int = Field(2, ge=0)

    BUFFER_MAX_TOKENS: int = Field(8, ge=1)
    BUFFER_MAX_DELAY_MS: SecondsOrZero = 25.0

    RESUME_GRACE: SecondsOrZero = 30.0
    STREAM_TTL: SecondsOrZero = 600.0

    REDIS_URL: str | None = None
    REDIS_CLUSTER: bool = False
    REDIS_PREFIX: str = Field("llmstream:", min_length=1, max_length=64)
    CORS_ORIGINS: Annotated[list[str], NoDecode] = Field(default_factory=list)
    API_KEYS: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)

    MAX_BODY_BYTES: int = Field(262144, ge=1)
    MAX_STREAMS: int = Field(10000, ge=1)
    MAX_STREAMS_PER_KEY: int = Field(100, ge=1)
    MAX_MESSAGES: int = Field(500, ge=1)
    MAX_OUTPUT_TOKENS: int | None = Field(None, ge=1)
    IMAGE_URL_SCHEMES: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["https", "data"])
    MAX_FOLLOWERS: int = Field(16, ge=1)
    MAX_CONNECTIONS_PER_KEY: int = Field(200, ge=1)
    BODY_TIMEOUT: Seconds = 10.0
    SEND_TIMEOUT: Seconds = 30.0

    WORKER_CONNECTIONS: int = Field(10000, ge=1)

    # Not in the contract: the simulated provider's pace, in tokens per second.
    SIMULATED_TOKENS_PER_SECOND: Seconds = 40.0

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            # pydantic's report is a dozen lines per error and echoes inputs (keys included).
            raise SettingsError(describe(exc)) from None

    @field_validator("ALLOWED_MODELS", "CORS_ORIGINS", mode="before")
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("API_KEYS", "IMAGE_URL_SCHEMES", mode="before")
    @classmethod
    def _strict_csv(cls, value: object) -> object:
        # An empty API key entry is most likely a template gone wrong: refuse, never drop it.
        if isinstance(value, str) and not value.strip():
            raise ValueError("is set but empty; list the values, separated by commas, "
                             "or unset it")
        return _split_csv(value, allow_empty_entries=False)

    @field_validator("API_KEYS")
    @classmethod
    def _keys(cls, keys: list[SecretStr]) -> list[SecretStr]:
        for i, key in enumerate(keys):
            # Never the key itself in the message: its position is enough to find it.
            if not _VISIBLE_ASCII.match(key.get_secret_value()):
                raise ValueError(f"entry {i + 1} holds a character other than visible ASCII; "
                                 "a client could not send it in an Authorization header")
        return keys

    @field_validator("OPENAI_API_KEY")
    @classmethod
    def _openai_key(cls, key: SecretStr | None) -> SecretStr | None:
        if key is not None and not key.get_secret_value().strip():
            raise ValueError("is set but empty; unset it for the simulated provider")
        return key

    @field_validator("IMAGE_URL_SCHEMES")
    @classmethod
    def _schemes(cls, schemes: list[str]) -> list[str]:
        lowered = [scheme.lower() for scheme in schemes]
        for scheme in lowered:
            if not _SCHEME.match(scheme):
                raise ValueError(f"{scheme!r} is not a URL scheme (like https or data)")
        return lowered

    @field_validator("CORS_ORIGINS")
    @classmethod
    def _origins(cls, origins: list[str]) -> list[str]:
        return [_origin(value) for value in origins]

    @field_validator("OPENAI_BASE_URL")
    @classmethod
    def _base_url(cls, url: str | None) -> str | None:
        if url is None:
            return None
        parts = _split_url(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL, like http://127.0.0.1:8080/v1")
        return url

    @field_validator("REDIS_URL")
    @classmethod
    def _redis_url(cls, url: str | None) -> str | None:
        if url is None:
            return None
        parts = _split_url(url)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must start with redis://, rediss:// or unix://; "
                             "unset it for the in-memory store")
        if parts.scheme == "unix" and not parts.path:
            raise ValueError("a unix:// URL needs the socket's path, like unix:///run/redis.sock")
        return url

    @model_validator(mode="after")
    def _provider(self) -> Settings:
        if self.LLM_PROVIDER == "openai" and self.OPENAI_API_KEY is None:
            if self.OPENAI_BASE_URL is None:
                raise ValueError("OPENAI_API_KEY: required when LLM_PROVIDER is openai and "
                                 "OPENAI_BASE_URL is not set (OpenAI refuses requests "
                                 "without a key)")
            # Local servers (vLLM, Ollama, llama.cpp) accept any key; the SDK insists on one.
            object.__setattr__(self, "OPENAI_API_KEY", SecretStr("unused"))
        return self

    @property
    def provider(self) -> Literal["openai", "simulated"]:
        if self.LLM_PROVIDER is not None:
            return self.LLM_PROVIDER
        return "openai" if self.OPENAI_API_KEY is not None else "simulated"

    def api_keys(self) -> list[str]:
        return [key.get_secret_value() for key in self.API_KEYS]


def startup_warnings(settings: Settings) -> list[str]:
    """Settings that work but are probably not what the operator wants: logged at start."""
    warnings = []
    if settings.provider == "openai" and not settings.API_KEYS:
        warnings.append("API_KEYS is not set: anyone who reaches this service can use the "
                        "upstream (and spend its key); set API_KEYS to require a bearer key")
    if settings.ALLOWED_MODELS and settings.LLM_MODEL not in settings.ALLOWED_MODELS:
        warnings.append("LLM_MODEL is not in ALLOWED_MODELS: requests that name no model "
                        "will be refused")
    return warnings


def describe(exc: ValidationError) -> str:
    """One line naming each variable that failed, and why; never a secret's value."""
    problems = []
    for error in exc.errors(include_url=False, include_context=False):
        name = str(error["loc"][0]) if error["loc"] else ""
        message = str(error["msg"]).removeprefix("Value error, ")
        if not name and ": " in message:
            problems.append(message)  # a check across variables names its own
            continue
        if name and name not in _SECRETS and error["type"] != "value_error":
            shown = repr(error["input"])
            message += f" (got {shown[:80]}{'...' if len(shown) > 80 else ''})"
        problems.append(f"{name}: {message}" if name else message)
    return "invalid settings: " + "; ".join(dict.fromkeys(problems))


def _split_url(url: str) -> Any:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number in range
    except ValueError as exc:
        raise ValueError(f"is not a URL: {exc}") from None
    return parts


def _origin(value: str) -> str:
    """The origin as a browser sends it in `Origin` (lower case, no default port)."""
    parts = _split_url(value)
    scheme = parts.scheme.lower()
    if (scheme not in _DEFAULT_PORTS or not parts.hostname or parts.path or parts.query
            or parts.fragment or parts.username is not None or "@" in parts.netloc):
        raise ValueError(f"{value!r} is not an origin; write scheme://host[:port] with no "
                         "path or trailing slash, like https://app.example or "
                         "http://127.0.0.1:8080")
    host = parts.hostname
    if ":" in host:
        host = f"[{host}]"  # IPv6
    port = parts.port
    return f"{scheme}://{host}" if port in (None, _DEFAULT_PORTS[scheme]) else (
        f"{scheme}://{host}:{port}")
