"""The domain's errors: what went wrong, in words a person can act on, with no transport in them.

The REST layer (``api/errors.py``) maps each kind to one HTTP status, and signaling
(``signaling/protocol.py``) to one ``error`` message (and, for some, one close code); nothing else
translates them. ``code`` is stable for programs, ``message`` is for people, ``field`` names the
input at fault when there is one.
"""

from __future__ import annotations


class DomainError(Exception):
    code = "error"

    def __init__(self, message: str, field: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        if code is not None:
            self.code = code


class BadRequest(DomainError):
    """The request cannot even be read (not JSON, not one message)."""

    code = "bad_request"


class Invalid(DomainError):
    """The input is well-formed but says something the appliance refuses."""

    code = "invalid"


class Unauthorized(DomainError):
    """No valid sign-in: sign in (again)."""

    code = "unauthorized"


class Forbidden(DomainError):
    """Signed in, but not allowed to do this."""

    code = "forbidden"


class NotFound(DomainError):
    """No such thing (or none the caller may know of)."""

    code = "not_found"

    def __init__(self, what: str, field: str | None = None) -> None:
        super().__init__(f"{what} not found", field)


class Conflict(DomainError):
    """It clashes with what exists (an e-mail in use, a meeting that has ended)."""

    code = "conflict"


class TooLarge(DomainError):
    """The input is larger than the appliance takes."""

    code = "payload_too_large"


class TooMany(DomainError):
    """A limit was reached; try again after ``retry_after`` seconds (None: when something ends)."""

    code = "too_many_requests"

    def __init__(self, message: str, retry_after: int | None = None, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class Unavailable(DomainError):
    """Something the work needs (inference, a store) does not answer now; try again later."""

    code = "unavailable"
