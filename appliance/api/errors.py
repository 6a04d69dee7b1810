"""API errors: every failure reaches the client as ``{"error": {"code", "message", "field"?}}``.

The domain raises its own errors (``appliance/errors.py``); here, and only here, each kind gets its
HTTP status.
"""

from __future__ import annotations

import logging

from sanic import Request, Sanic
from sanic.exceptions import SanicException
from sanic.response import HTTPResponse, json

from ..errors import (BadRequest, Conflict, DomainError, Forbidden, Invalid, NotFound, TooLarge, TooMany, Unauthorized,
                      Unavailable)

log = logging.getLogger("confmeet.api")

# appliance/signaling.py still catches the token's and the meeting look-up's errors by this name.
ApiError = DomainError

STATUS = {BadRequest: 400, Unauthorized: 401, Forbidden: 403, NotFound: 404, Conflict: 409, TooLarge: 413,
          Invalid: 422, TooMany: 429, Unavailable: 503}

# Sanic's own exceptions (unknown route, wrong method, oversized body ...) keep their status.
_SANIC_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed",
                408: "request_timeout", 413: "payload_too_large", 416: "range_not_satisfiable"}


def error_body(code: str, message: str, field: str | None = None) -> dict:
    error = {"code": code, "message": message}
    if field:
        error["field"] = field
    return {"error": error}


def status_of(exc: DomainError) -> int | None:
    """The HTTP status of a domain error's kind; None for a bare DomainError (a bug)."""
    return next((STATUS[kind] for kind in type(exc).__mro__ if kind in STATUS), None)


def _internal(request: Request, exc: Exception) -> HTTPResponse:
    log.exception("internal error on %s %s", request.method, request.path, exc_info=exc)
    return json(error_body("internal", "internal error; see the appliance log"), status=500)


def install_error_handlers(app: Sanic) -> None:
    @app.exception(DomainError)
    async def _domain_error(request: Request, exc: DomainError) -> HTTPResponse:
        status = status_of(exc)
        if status is None:
            return _internal(request, exc)
        headers = None
        if isinstance(exc, Unauthorized):
            headers = {"WWW-Authenticate": "Bearer"}
        elif isinstance(exc, TooMany) and exc.retry_after is not None:
            headers = {"Retry-After": str(exc.retry_after)}
        return json(error_body(exc.code, exc.message, exc.field), status=status, headers=headers)

    @app.exception(SanicException)
    async def _sanic_error(request: Request, exc: SanicException) -> HTTPResponse:
        status = getattr(exc, "status_code", 500) or 500
        if status >= 500:
            return _internal(request, exc)
        code = _SANIC_CODES.get(status, "error")
        message = str(exc) or code.replace("_", " ")
        if status == 404:
            message = f"no such resource: {request.path[:100]}"
        return json(error_body(code, message), status=status, headers=getattr(exc, "headers", None))

    @app.exception(Exception)
    async def _unexpected(request: Request, exc: Exception) -> HTTPResponse:
        return _internal(request, exc)
