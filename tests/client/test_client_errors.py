"""A Status answer becomes the exception a caller would catch for it."""

from __future__ import annotations

import pytest
from client_fakes import status_body

from keel.client import (
    AlreadyExists,
    ApiError,
    BadRequest,
    Conflict,
    Expired,
    FencingTokenRejected,
    Forbidden,
    Invalid,
    NotFound,
    ServerError,
    TooLarge,
    TooManyRequests,
    Unauthorized,
)
from keel.client._errors import error_from_response


@pytest.mark.parametrize(
    ("code", "reason", "expected"),
    [
        (400, "BadRequest", BadRequest),
        (401, "Unauthorized", Unauthorized),
        (403, "Forbidden", Forbidden),
        (404, "NotFound", NotFound),
        (409, "AlreadyExists", AlreadyExists),
        (409, "Conflict", Conflict),
        (409, "FencingTokenRejected", FencingTokenRejected),
        (410, "Expired", Expired),
        (410, "Gone", Expired),
        (413, "RequestEntityTooLarge", TooLarge),
        (422, "Invalid", Invalid),
        (429, "TooManyRequests", TooManyRequests),
        (500, "InternalError", ServerError),
        (503, "ServiceUnavailable", ServerError),
        # Unknown reasons fall back to the code.
        (409, "SomethingNew", Conflict),
        (404, "", NotFound),
        (502, "", ServerError),
        (418, "Teapot", ApiError),
    ],
)
def test_status_maps_to_its_exception_class(
    code: int, reason: str, expected: type[ApiError]
) -> None:
    error = error_from_response(code, status_body(code, reason, "why"), {})
    assert type(error) is expected
    assert error.status == code
    assert error.message == "why"


def test_fencing_rejection_is_not_a_conflict_to_retry() -> None:
    error = error_from_response(409, status_body(409, "FencingTokenRejected"), {})
    assert not isinstance(error, Conflict)
    assert isinstance(error, ApiError)


def test_invalid_names_the_field_paths() -> None:
    body = status_body(
        422,
        "Invalid",
        "Deployment is invalid",
        name="web",
        kind="Deployment",
        causes=[
            {"field": "spec.replicas", "message": "expected >= 0", "reason": "FieldValueInvalid"},
            {"field": "spec.bogus", "message": "unknown field", "reason": "FieldValueNotSupported"},
        ],
    )
    error = error_from_response(422, body, {})
    assert isinstance(error, Invalid)
    assert error.fields == ["spec.replicas", "spec.bogus"]
    assert error.causes[0].message == "expected >= 0"
    assert error.details is not None and error.details.name == "web"


def test_too_many_requests_waits_for_the_retry_after_header_first() -> None:
    body = status_body(429, "TooManyRequests", retryAfterSeconds=7)
    with_header = error_from_response(429, body, {"retry-after": "3"})
    without_header = error_from_response(429, body, {})
    bare = error_from_response(429, status_body(429, "TooManyRequests"), {})
    assert isinstance(with_header, TooManyRequests) and with_header.retry_after == 3.0
    assert isinstance(without_header, TooManyRequests) and without_header.retry_after == 7.0
    assert isinstance(bare, TooManyRequests) and bare.retry_after == 1.0


def test_a_body_that_is_not_a_status_still_maps_by_code() -> None:
    error = error_from_response(404, b"Not Found", {})
    assert isinstance(error, NotFound)
    assert error.reason == "NotFound"
    assert error.message == "Not Found"
    proxy = error_from_response(502, b"<html>bad gateway</html>", {})
    assert isinstance(proxy, ServerError)


def test_the_http_code_wins_over_a_code_in_the_body() -> None:
    error = error_from_response(404, status_body(500, "NotFound"), {})
    assert isinstance(error, NotFound)
    assert error.status == 404
