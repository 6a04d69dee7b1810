"""Security headers on every response: what a browser may load into the appliance's pages, and who
may frame them.

The web client loads only its own scripts and styles (no inline code), talks only to its own
origin (HTTP and the signaling WebSocket) and is never framed: a Content-Security-Policy says
exactly that. HSTS is sent only when the appliance itself serves HTTPS (``tls_cert``) or its
``public_url`` is https (TLS ended by a proxy in front).
"""

from __future__ import annotations

import re

from sanic import Request, Sanic
from sanic.response import HTTPResponse

from .settings import Settings

# 'wasm-unsafe-eval' lets the page compile WebAssembly it loaded from 'self' (noise suppression);
# worker-src 'self' is for the frame-encryption worker (end-to-end encryption).
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; worker-src 'self'; "
                           "style-src 'self'; img-src 'self' data: blob:; "
                           "media-src 'self' blob:; font-src 'self' data:; connect-src 'self' {websocket}; "
                           "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
HSTS_SECONDS = 180 * 86400
HOST = re.compile(r"[A-Za-z0-9.\-]+(:\d+)?|\[[0-9A-Fa-f:.]+\](:\d+)?")


def install_security_headers(app: Sanic, settings: Settings) -> None:
    https = bool(settings.tls_cert) or settings.base_url.startswith("https:")
    scheme = "wss" if https else "ws"

    @app.on_response(priority=300)
    async def _headers(request: Request, response: HTTPResponse) -> None:
        headers = response.headers
        # 'self' covers ws(s): in current browsers; the explicit origin is for those that lag
        websocket = f"{scheme}://{request.host}" if HOST.fullmatch(request.host or "") else ""
        headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY.format(websocket=websocket))
        headers.setdefault("X-Content-Type-Options", "nosniff")
        headers.setdefault("Referrer-Policy", "no-referrer")
        headers.setdefault("X-Frame-Options", "DENY")
        if https:
            headers.setdefault("Strict-Transport-Security", f"max-age={HSTS_SECONDS}")
