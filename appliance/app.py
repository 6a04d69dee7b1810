"""The appliance: one Sanic app holding the API, the operations endpoints and the web client."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

from sanic import Request, Sanic
from sanic.response import HTTPResponse, file, html, json
from swagger_ui_bundle import swagger_ui_path

from .api import api, files, recordings
from .api.errors import install_error_handlers
from .api.openapi import build_openapi
from .captions.audio import DECODE_SLOTS
from .cors import install_cors
from .security_headers import install_security_headers
from .ops import install_ops, install_sfu_metrics
from .sfu.peer import quiet_closed_peer_races
from .instance import AlreadyServing, InstanceLock
from .reconcile import reconcile
from .services import Services, open_services
from .settings import Settings, ensure_secrets
from . import tracing

log = logging.getLogger("confmeet")
WEB = Path(__file__).parent / "web"

DOCS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>confmeet API</title>
<link rel="stylesheet" href="/api/docs/static/swagger-ui.css"></head>
<body><div id="docs"></div>
<script src="/api/docs/static/swagger-ui-bundle.js"></script>
<script src="/api/docs/init.js"></script></body></html>"""
DOCS_INIT = "SwaggerUIBundle({url: '/api/v1/openapi.json', dom_id: '#docs'});"


def create_app(settings: Settings, name: str = "confmeet") -> Sanic:
    ensure_secrets(settings)
    instance = InstanceLock(settings.data_dir)  # held until the process ends
    try:
        instance.acquire()
    except AlreadyServing as exc:
        log.error("%s", exc)
        raise SystemExit(2) from None
    app = Sanic(name, configure_logging=False)
    # Uploads stream up to max_upload_bytes; JSON bodies are held to max_request_bytes (endpoint.py).
    app.config.REQUEST_MAX_SIZE = max(settings.max_request_bytes, settings.max_upload_bytes)
    app.config.FALLBACK_ERROR_FORMAT = "json"
    app.config.KEEP_ALIVE_TIMEOUT = 75
    app.config.WEBSOCKET_MAX_SIZE = 1 << 20
    app.config.WEBSOCKET_PING_INTERVAL = 20
    app.config.WEBSOCKET_PING_TIMEOUT = 20
    app.config.PROXIES_COUNT = settings.forwarded_proxies  # whose X-Forwarded-For names the client
    app.ctx.settings = settings  # before the services exist: the ops endpoints and security headers read it
    DECODE_SLOTS.limit = settings.ai_concurrent_decodes

    install_error_handlers(app)
    install_ops(app)
    tracing.install_request_spans(app)
    install_cors(app, settings.cors_origins)
    install_security_headers(app, settings)
    api.mount(app)
    openapi = build_openapi(api)

    @app.get("/api/v1/openapi.json", name="openapi")
    async def openapi_doc(request: Request) -> HTTPResponse:
        return json(openapi)

    @app.get("/api/docs", name="api_docs")
    async def api_docs(request: Request) -> HTTPResponse:
        return html(DOCS_PAGE)

    @app.get("/api/docs/init.js", name="api_docs_init")
    async def api_docs_init(request: Request) -> HTTPResponse:
        return HTTPResponse(DOCS_INIT, content_type="text/javascript")

    app.static("/api/docs/static", str(swagger_ui_path), name="api_docs_static")
    app.static("/static", str(WEB), name="web_static")

    @app.get("/", name="home")
    async def home(request: Request) -> HTTPResponse:
        return await file(WEB / "index.html")

    @app.get("/m/<code:str>", name="meeting_page")
    async def meeting_page(request: Request, code: str) -> HTTPResponse:
        return await file(WEB / "meeting.html")

    @app.get("/admin", name="admin_page")
    async def admin_page(request: Request) -> HTTPResponse:
        return await file(WEB / "admin.html")

    app.add_route(files.download, "/files/<token:str>", methods=["GET"], name="file_download")
    app.add_route(recordings.download, "/recordings/<token:str>", methods=["GET"], name="recording_download")

    @app.websocket("/ws/signaling", name="signaling")
    async def signaling(request: Request, ws: Any) -> None:
        await request.app.ctx.services.signaling.serve(request, ws)

    @app.before_server_start
    async def open_everything(app: Sanic) -> None:
        quiet_closed_peer_races(asyncio.get_running_loop())
        tracing.configure(settings, "confmeet")
        services = app.ctx.services = await open_services(settings, instance)
        install_sfu_metrics(services.sfu)
        await reconcile(settings, services.stores, instance, services.recordings, services.file_jobs)
        instance.start_heartbeat()
        await services.recordings.start()
        await services.signaling.start()
        if services.cluster is not None:
            await services.cluster.start()  # after signaling: joins may come from now
        services.monitor.start()
        if await services.accounts.user_count() == 0:
            link = services.accounts.begin_setup(settings.data_dir / "setup-link", settings.base_url,
                                                 settings.setup_link_seconds)
            print(link.announce(terminal=sys.stdout.isatty()), flush=True)

    async def drain(services: Services) -> None:
        services.recordings.stopping = True
        await services.monitor.close()
        await services.file_jobs.close()  # each job marked interrupted, to resume at the next start
        await services.signaling.close()
        if services.cluster is not None:
            await services.cluster.close()  # its meetings are placed anew at their next join
        await services.sfu.close()  # recordings' files finished
        await services.recordings.close()
        await services.inference.close()
        if services.oidc is not None:
            await services.oidc.close()

    @app.before_server_stop
    async def close_meetings(app: Sanic) -> None:
        try:
            await asyncio.wait_for(drain(app.ctx.services), settings.stop_timeout_seconds)
        except TimeoutError:
            log.error("stopping took longer than %d s (stop_timeout_seconds); what did not finish is "
                      "repaired at the next start", settings.stop_timeout_seconds)

    @app.after_server_stop
    async def close_everything(app: Sanic) -> None:
        await app.ctx.services.stores.close()
        app.ctx.services.accounts.end_setup()
        instance.release()
        tracing.shutdown()  # the spans still queued are sent

    return app
