"""API errors: every failure reaches the client as ``{"error": {"code", "message", "field"?}}``."""

from __future__ import annotations

import logging

from sanic import Request, Sanic
from sanic.exceptions import SanicException
from sanic.response import HTTPResponse, json

from ..throttle import Throttled

log = logging.getLogger("confmeet.api")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field


def error_body(code: str, message: str, field: str | None = None) -> dict:
    error = {"code": code, "message": message}
    if field:
        error["field"] = field
    return {"error": error}


def bad_request(message: str, field: str | None = None) -> ApiError:
    return ApiError(400, "bad_request", message, field)


def unauthorized(message: str = "sign in first: send 'Authorization: Bearer <access token>'") -> ApiError:
    return ApiError(401, "unauthorized", message)


def forbidden(message: str = "you are not allowed to do this") -> ApiError:
    return ApiError(403, "forbidden", message)


def not_found(what: str) -> ApiError:
    return ApiError(404, "not_found", f"{what} not found")


def conflict(message: str, field: str | None = None) -> ApiError:
    return ApiError(409, "conflict", message, field)


# Sanic's own exceptions (unknown route, wrong method, oversized body ...) keep their status.
# Throttling (appliance/throttle.py) is 429 with Retry-After.
_SANIC_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed",
                408: "request_timeout", 413: "payload_too_large", 416: "range_not_satisfiable"}


def install_error_handlers(app: Sanic) -> None:
    @app.exception(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> HTTPResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return json(error_body(exc.code, exc.message, exc.field), status=exc.status, headers=headers)

    @app.exception(Throttled)
    async def _throttled(request: Request, exc: Throttled) -> HTTPResponse:
        return json(error_body(exc.code, exc.message), status=429, headers={"Retry-After": str(exc.retry_after)})

    @app.exception(SanicException)
    async def _sanic_error(request: Request, exc: SanicException) -> HTTPResponse:
        status = getattr(exc, "status_code", 500) or 500
        if status >= 500:
            log.exception("internal error on %s %s", request.method, request.path, exc_info=exc)
            return json(error_body("internal", "internal error; see the appliance log"), status=500)
        code = _SANIC_CODES.get(status, "error")
        message = str(exc) or code.replace("_", " ")
        if status == 404:
            message = f"no such resource: {request.path}"
        return json(error_body(code, message), status=status, headers=getattr(exc, "headers", None))

    @app.exception(Exception)
    async def _unexpected(request: Request, exc: Exception) -> HTTPResponse:
        log.exception("internal error on %s %s", request.method, request.path, exc_info=exc)
        return json(error_body("internal", "internal error; see the appliance log"), status=500)
