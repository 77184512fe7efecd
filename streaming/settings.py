"""Typed configuration, read once from the environment (PROTOCOL.md, "Configuration")."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """Every knob of the service; names match the environment variables."""

    model_config = SettingsConfigDict(case_sensitive=True, extra="ignore", frozen=True)

    OPENAI_API_KEY: SecretStr | None = None
    OPENAI_BASE_URL: str | None = None
    LLM_PROVIDER: Literal["openai", "simulated"] | None = None
    LLM_MODEL: str = "gpt-4o-mini"
    ALLOWED_MODELS: Annotated[list[str], NoDecode] = Field(default_factory=list)

    HEARTBEAT_INTERVAL: float = Field(15.0, gt=0)
    FIRST_TOKEN_TIMEOUT: float = Field(60.0, gt=0)
    IDLE_TIMEOUT: float = Field(60.0, gt=0)
    STREAM_TIMEOUT: float = Field(600.0, gt=0)
    UPSTREAM_RETRIES: int = Field(2, ge=0)

    BUFFER_MAX_TOKENS: int = Field(8, ge=1)
    BUFFER_MAX_DELAY_MS: float = Field(25.0, ge=0)

    RESUME_GRACE: float = Field(30.0, ge=0)
    STREAM_TTL: float = Field(600.0, ge=0)

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
    BODY_TIMEOUT: float = Field(10.0, gt=0)
    SEND_TIMEOUT: float = Field(30.0, gt=0)

    WORKER_CONNECTIONS: int = Field(10000, ge=1)

    # Not in the contract: the simulated provider's pace, in tokens per second.
    SIMULATED_TOKENS_PER_SECOND: float = Field(40.0, gt=0)

    @field_validator("ALLOWED_MODELS", "API_KEYS", "CORS_ORIGINS", "IMAGE_URL_SCHEMES",
                     mode="before")
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)

    @model_validator(mode="after")
    def _provider(self) -> Settings:
        if self.LLM_PROVIDER == "openai" and self.OPENAI_API_KEY is None:
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
