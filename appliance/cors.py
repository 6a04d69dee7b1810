"""Cross-origin requests: allowed only from the origins listed in the ``cors_origins`` setting."""

from __future__ import annotations

from sanic import Request, Sanic
from sanic.response import HTTPResponse, empty

ALLOW_HEADERS = "Authorization, Content-Type"
ALLOW_METHODS = "GET, POST, PATCH, PUT, DELETE, OPTIONS"


def install_cors(app: Sanic, origins: list[str]) -> None:
    allowed = {origin.rstrip("/") for origin in origins}

    @app.on_request(priority=200)
    async def _preflight(request: Request) -> HTTPResponse | None:
        origin = request.headers.get("origin")
        if request.method != "OPTIONS" or not origin:
            return None
        if origin not in allowed:
            return empty(status=403)
        return empty(status=204, headers={
            "Access-Control-Allow-Origin": origin, "Access-Control-Allow-Methods": ALLOW_METHODS,
            "Access-Control-Allow-Headers": ALLOW_HEADERS, "Access-Control-Max-Age": "600", "Vary": "Origin"})

    @app.on_response(priority=200)
    async def _allow(request: Request, response: HTTPResponse) -> None:
        origin = request.headers.get("origin")
        if origin and origin in allowed:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"
