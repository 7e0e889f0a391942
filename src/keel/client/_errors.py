"""Typed client errors: a Kubernetes `Status` response becomes one exception class.

Pure mapping from (HTTP code, body, Retry-After) to an exception; no I/O. Connection failures
are `ApiUnavailable`, whose `ambiguous` flag says a write may or may not have been applied.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import msgspec

from keel.api.resources import Status, StatusCause, StatusDetails


class KeelClientError(Exception):
    """Base of every error the client raises."""


class ApiError(KeelClientError):
    """The server answered with an error `Status`."""

    def __init__(
        self, status: int, reason: str, message: str, details: StatusDetails | None = None
    ) -> None:
        super().__init__(f"{status} {reason}: {message}" if message else f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.message = message
        self.details = details


class BadRequest(ApiError):
    """400: the request itself is malformed (for example a bad selector or header)."""


class Unauthorized(ApiError):
    """401: no token, or a token the server does not know."""


class Forbidden(ApiError):
    """403: the token's role may not do this."""


class NotFound(ApiError):
    """404: no such object (or no such kind)."""


class AlreadyExists(ApiError):
    """409 AlreadyExists: create of a name that exists (or of a Lease that is held)."""


class Conflict(ApiError):
    """409 Conflict: the object changed since the `resourceVersion` the write was based on."""


class FencingTokenRejected(ApiError):
    """409 FencingTokenRejected: the fencing lease has a new holder; this writer must stop.

    Deliberately not a `Conflict`: retrying with a fresh resourceVersion would be wrong.
    """


class Expired(ApiError):
    """410: the requested resourceVersion is older than the retained history."""


class TooLarge(ApiError):
    """413: the object exceeds the server's size limit; nothing was stored."""


class Invalid(ApiError):
    """422: validation failed; `causes` name the offending field paths."""

    @property
    def causes(self) -> list[StatusCause]:
        return list(self.details.causes) if self.details else []

    @property
    def fields(self) -> list[str]:
        return [cause.field for cause in self.causes if cause.field]


class TooManyRequests(ApiError):
    """429: admission refused the request; `retry_after` seconds until a retry may succeed."""

    def __init__(
        self,
        status: int,
        reason: str,
        message: str,
        details: StatusDetails | None = None,
        retry_after: float = 1.0,
    ) -> None:
        super().__init__(status, reason, message, details)
        self.retry_after = retry_after


DISRUPTION_BUDGET = "DisruptionBudget"


def is_budget_refusal(error: ApiError) -> bool:
    """A 429 refusing an eviction because of a disruption budget: not throttling, so a retry
    succeeds only once the budget allows, which no fixed Retry-After can promise."""
    return (
        isinstance(error, TooManyRequests)
        and error.details is not None
        and any(cause.reason == DISRUPTION_BUDGET for cause in error.details.causes)
    )


class ServerError(ApiError):
    """5xx: the server failed; a write's outcome is unknown unless the Status says otherwise."""


class ApiUnavailable(KeelClientError):
    """No answer from the server (connection refused, reset, timed out).

    `ambiguous` is True when a write may have been applied: the request was (possibly) sent
    before the failure. Such writes are never retried automatically.
    """

    def __init__(self, message: str, *, ambiguous: bool) -> None:
        super().__init__(message)
        self.message = message
        self.ambiguous = ambiguous


# Reason wins over code: 409 alone does not say whether it is AlreadyExists, Conflict or a
# rejected fencing token.
_BY_REASON: dict[str, type[ApiError]] = {
    "BadRequest": BadRequest,
    "Unauthorized": Unauthorized,
    "Forbidden": Forbidden,
    "NotFound": NotFound,
    "AlreadyExists": AlreadyExists,
    "Conflict": Conflict,
    "FencingTokenRejected": FencingTokenRejected,
    "Expired": Expired,
    "Gone": Expired,
    "RequestEntityTooLarge": TooLarge,
    "Invalid": Invalid,
    "TooManyRequests": TooManyRequests,
    "InternalError": ServerError,
    "ServiceUnavailable": ServerError,
    "Timeout": ServerError,
}

_BY_CODE: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    410: Expired,
    413: TooLarge,
    422: Invalid,
    429: TooManyRequests,
}

_REASON_OF_CODE: dict[int, str] = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    410: "Expired",
    413: "RequestEntityTooLarge",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
}

_status_decoder = msgspec.json.Decoder(Status)


def error_class(code: int, reason: str) -> type[ApiError]:
    """The exception class for a Status with this code and reason."""
    by_reason = _BY_REASON.get(reason)
    if by_reason is not None:
        return by_reason
    by_code = _BY_CODE.get(code)
    if by_code is not None:
        return by_code
    return ServerError if code >= 500 else ApiError


def parse_retry_after(value: str | None, details: StatusDetails | None) -> float:
    """Seconds to wait from a Retry-After header (delta-seconds) or the Status details."""
    if value:
        try:
            seconds = float(value)
        except ValueError:
            seconds = math.nan
        if math.isfinite(seconds) and seconds >= 0:
            return seconds
    if details is not None and details.retry_after_seconds > 0:
        return float(details.retry_after_seconds)
    return 1.0


def status_error(status: Status, retry_after: str | None = None) -> ApiError:
    """The exception for a decoded Status (from a response or a watch ERROR event)."""
    cls = error_class(status.code, status.reason)
    reason = status.reason or _REASON_OF_CODE.get(status.code, "Unknown")
    if cls is TooManyRequests:
        return TooManyRequests(
            status.code,
            reason,
            status.message,
            status.details,
            retry_after=parse_retry_after(retry_after, status.details),
        )
    return cls(status.code, reason, status.message, status.details)


def error_from_response(code: int, body: bytes, headers: Mapping[str, str]) -> ApiError:
    """The exception for an error response (`headers` keyed in lower case); bodies that are
    not a Status still map by code."""
    try:
        status = _status_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        text = body.decode("utf-8", "replace").strip()[:500]
        status = Status(code=code, reason=_REASON_OF_CODE.get(code, ""), message=text)
    else:
        if status.code != code:
            status = msgspec.structs.replace(status, code=code)
    return status_error(status, headers.get("retry-after"))
