"""The project's own errors: what the upstream boundary raises and the API refuses with."""

from __future__ import annotations


class StreamingError(Exception):
    """Base of every error this package raises on purpose."""


class UpstreamError(StreamingError):
    """The upstream failed; `code` is the contract's error code for the `error` event.

    `message` is ours, written for a person: never the upstream's body, which may echo keys.
    """

    code = "upstream_error"
    retryable = False

    def __init__(self, message: str, *, status: int | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retry_after = retry_after


class UpstreamTimeoutError(UpstreamError):
    code = "timeout"
    retryable = True


class UpstreamUnavailableError(UpstreamError):
    code = "upstream_unavailable"
    retryable = True


class UpstreamRateLimitedError(UpstreamError):
    code = "rate_limited"
    retryable = True


class UpstreamAuthError(UpstreamError):
    code = "upstream_auth"


class UpstreamRefusedError(UpstreamError):
    """A refusal worth retrying (408, 409): the request itself was fine."""

    code = "upstream_error"
    retryable = True


class ApiError(StreamingError):
    """A refused request: status, the contract's error `type`, a message for a person."""

    def __init__(self, status: int, type: str, message: str,
                 headers: dict[str, str] | None = None, *, close: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.type = type
        self.message = message
        self.headers = headers or {}
        self.close = close  # close the connection after the answer (its input is unusable)


class StoreUnavailableError(StreamingError):
    """The shared store cannot be reached (after retrying): the contract's 503 and
    `store_unavailable`."""
