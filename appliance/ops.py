"""Operations endpoints: /healthz (alive), /readyz (every store checked), /metrics (Prometheus)."""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from sanic import Request, Sanic
from sanic.response import HTTPResponse, json, raw

from . import __version__

REQUESTS = Counter("confmeet_http_requests_total", "HTTP requests answered",
                   ["method", "route", "status"])
LATENCY = Histogram("confmeet_http_request_duration_seconds", "HTTP request latency",
                    ["method", "route"],
                    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))


def install_ops(app: Sanic) -> None:
    @app.on_request(priority=100)
    async def _start_timer(request: Request) -> None:
        request.ctx.started = time.perf_counter()

    @app.on_response(priority=100)
    async def _observe(request: Request, response: HTTPResponse) -> None:
        started = getattr(request.ctx, "started", None)
        if started is None:
            return
        # The route pattern, never the raw path: ids in paths would explode the label space.
        route = request.route.path if request.route else "unmatched"
        route = "/" + route.lstrip("/")
        LATENCY.labels(request.method, route).observe(time.perf_counter() - started)
        REQUESTS.labels(request.method, route, str(response.status)).inc()

    @app.get("/healthz", name="healthz")
    async def healthz(request: Request) -> HTTPResponse:
        return json({"status": "ok", "version": __version__})

    @app.get("/readyz", name="readyz")
    async def readyz(request: Request) -> HTTPResponse:
        stores = await request.app.ctx.stores.check()
        ready = all(item["ok"] for item in stores.values())
        return json({"status": "ready" if ready else "not_ready", "stores": stores},
                    status=200 if ready else 503)

    @app.get("/metrics", name="metrics")
    async def metrics(request: Request) -> HTTPResponse:
        return raw(generate_latest(), content_type=CONTENT_TYPE_LATEST)
