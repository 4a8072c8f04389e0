"""Errors with a meaning: each maps to one protocol error code and HTTP status."""

from __future__ import annotations


class ConfigError(Exception):
    """Configuration that cannot work. Start-up stops with ``str(error)`` as one line, exit status 2.

    The message names where the problem is: ``"KIBITZ_PORT='abc': not an integer"``.
    """


class Rejected(Exception):
    """Raised by a ``wrap_send`` plugin to refuse a message on purpose; ``reason`` reaches the sender."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class CursorExpired(Exception):
    """The cursor points before the oldest event the transport still retains."""


class ApiError(Exception):
    """A request the server refuses: the protocol's error code, HTTP status and a human message."""

    status = 400
    code = "invalid_request"

    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class InvalidRequest(ApiError):
    """Malformed JSON, a missing or out-of-range field, a cursor this server did not issue."""

    status = 400
    code = "invalid_request"


class Unauthorized(ApiError):
    """No token, or a token that is unknown or revoked."""

    status = 401
    code = "unauthorized"


class Forbidden(ApiError):
    """The caller may not do this (or a plugin rejected the message)."""

    status = 403
    code = "forbidden"


class RegistrationClosed(ApiError):
    """Sign-up is not open on this server."""

    status = 403
    code = "registration_closed"


class NotFound(ApiError):
    """No such thing, or not one the caller is a member of."""

    status = 404
    code = "not_found"


class UsernameTaken(ApiError):
    """Another account has this username."""

    status = 409
    code = "username_taken"


class CursorGone(ApiError):
    """The cursor is older than the event retention."""

    status = 410
    code = "cursor_expired"


class PayloadTooLarge(ApiError):
    """The body or message is over the size limit."""

    status = 413
    code = "payload_too_large"


class RateLimited(ApiError):
    """Too many requests; ``retry_after`` says how many seconds to wait."""

    status = 429
    code = "rate_limited"


class Unavailable(ApiError):
    """A backing service does not answer."""

    status = 503
    code = "unavailable"
