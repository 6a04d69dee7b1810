"""Traces (OpenTelemetry), sent over OTLP/HTTP to the ``trace_endpoint`` (Jaeger, a collector).

Off unless ``trace_endpoint`` is set: then no exporter exists and every span is OpenTelemetry's
no-op span. Spans are made on control paths only, never per media packet: HTTP requests (one
server span each, named after the route, never the raw path, which may hold a token), a
participant's way into a meeting (:class:`JoinTrace`), each final caption (VAD, then ASR), each
recording upload and object, and backups. ``trace_sample_ratio`` keeps that share of the traces
(decided at the root; children follow their parent).

Each process that makes spans calls :func:`configure` once (the appliance, each SFU worker, the
``confmeet backup`` command) and :func:`shutdown` as it stops, which sends what is still queued.
The provider is this module's, not OpenTelemetry's global one, so that configuring it again (a
test, a second app in one process) replaces it cleanly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from . import __version__
from .settings import Settings

TRACES_PATH = "/v1/traces"
UNTRACED_ROUTES = ("healthz", "readyz", "metrics")  # polled every few seconds by monitoring

_tracer: trace.Tracer = trace.NoOpTracer()
_provider: Any = None  # opentelemetry.sdk.trace.TracerProvider while tracing is on


def exporter_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL of ``trace_endpoint`` (a base URL such as http://jaeger:4318)."""
    base = endpoint.rstrip("/")
    return base if base.endswith(TRACES_PATH) else base + TRACES_PATH


def configure(settings: Settings, service_name: str) -> bool:
    """Start sending this process's spans, as ``service_name``, if ``trace_endpoint`` is set.
    Returns whether tracing is on."""
    global _tracer, _provider
    shutdown()
    if not settings.trace_endpoint:
        return False
    # Imported here: with tracing off the SDK and the exporter are never loaded.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    provider = TracerProvider(
        resource=Resource.create({"service.name": service_name, "service.version": __version__}),
        sampler=ParentBased(TraceIdRatioBased(settings.trace_sample_ratio)))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=exporter_url(settings.trace_endpoint),
                                                                    timeout=10)))
    _provider, _tracer = provider, provider.get_tracer("confmeet", __version__)
    return True


def shutdown() -> None:
    """Send the spans still queued and stop tracing (a no-op when it is off)."""
    global _tracer, _provider
    provider, _provider, _tracer = _provider, None, trace.NoOpTracer()
    if provider is not None:
        provider.shutdown()


def tracer() -> trace.Tracer:
    return _tracer


@contextlib.contextmanager
def span(name: str, new_trace: bool = False, **attributes: Any) -> Iterator[Span]:
    """A span around the block, a child of the current one (or the root of a trace of its own:
    work done in the background); an exception marks it failed."""
    with _tracer.start_as_current_span(name, context=otel_context.Context() if new_trace else None,
                                       attributes=_attributes(attributes)) as current:
        yield current


def record(name: str, start: float, end: float, parent: Span | None = None, **attributes: Any) -> Span:
    """A span of something already over, from wall-clock ``start`` to ``end`` (epoch seconds)."""
    context = trace.set_span_in_context(parent) if parent is not None else None
    done = _tracer.start_span(name, context=context, attributes=_attributes(attributes), start_time=_ns(start))
    done.end(end_time=_ns(end))
    return done


def root(name: str, start: float | None = None, **attributes: Any) -> Span:
    """A span that starts a trace of its own, whatever the current context (ended by the caller)."""
    return _tracer.start_span(name, context=otel_context.Context(), attributes=_attributes(attributes),
                              start_time=_ns(start) if start is not None else None)


def failed(span: Span, description: str) -> None:
    span.set_status(Status(StatusCode.ERROR, description))


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


def _attributes(attributes: dict[str, Any]) -> dict[str, Any]:
    """``meeting_id=…`` → ``confmeet.meeting_id``; None values left out."""
    return {name if "." in name else f"confmeet.{name}": value for name, value in attributes.items()
            if value is not None}


class JoinTrace:
    """A participant's way into a meeting as one trace: the root ``signaling.join`` runs from the
    WebSocket's opening to the SFU's answer to the participant's first offer (or to a resumed
    seat, or to the connection's end), with a child span for each step: ``signaling.token_check``,
    ``signaling.entry`` (the meeting and its password), ``signaling.lobby`` (until let in, when
    the meeting makes them wait), ``sfu.join`` and ``sfu.answer``.

    The steps run in different tasks (an admission is the moderator's message), so they are
    parented through this object, which the connection holds, not through the task's context.
    The SFU steps are timed here, around the request to the SFU worker process.
    """

    def __init__(self) -> None:
        self.root = root("signaling.join")
        self._parent = trace.set_span_in_context(self.root)
        self._waiting: Span | None = None
        self.open = True

    @contextlib.contextmanager
    def step(self, name: str, **attributes: Any) -> Iterator[Span]:
        """A child span around the block; it stays open past the block if :meth:`wait` is called
        on it there (the lobby)."""
        span = _tracer.start_span(name, context=self._parent, attributes=_attributes(attributes))
        try:
            with trace.use_span(span, end_on_exit=False):
                yield span
        finally:
            if span is not self._waiting:
                span.end()

    def wait(self, span: Span) -> None:
        """The step goes on after its block: the participant waits in the lobby."""
        span.set_attribute("confmeet.waited", True)
        self._waiting = span

    def admitted(self) -> None:
        self._end_wait("admitted")

    def seated(self, meeting_id: str, participant_id: str, role: str) -> None:
        self.root.set_attributes({"confmeet.meeting_id": meeting_id, "confmeet.participant_id": participant_id,
                                  "confmeet.role": role})

    def finish(self, outcome: str) -> None:
        """The way in is over: answered, resumed, or the connection closed first."""
        if not self.open:
            return
        self.open = False
        self._end_wait(outcome)
        self.root.set_attribute("confmeet.outcome", outcome)
        if outcome not in ("answered", "resumed"):
            failed(self.root, f"no media negotiated: {outcome}")
        self.root.end()

    def _end_wait(self, outcome: str) -> None:
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.set_attribute("confmeet.outcome", outcome)
            waiting.end()


def install_request_spans(app: Any) -> None:
    """A server span per HTTP request, named ``METHOD /route/<pattern>`` with the status code; the
    handler's spans are its children. Not traced: WebSocket upgrades (signaling traces its joins)
    and the monitoring probes (UNTRACED_ROUTES)."""

    @app.on_request(priority=1000)
    async def _start(request: Any) -> None:
        route = request.route
        if route is not None and (route.extra.websocket or route.path in UNTRACED_ROUTES):
            return
        pattern = "/" + route.path.lstrip("/") if route is not None else "unmatched"
        span = _tracer.start_span(f"{request.method} {pattern}", context=otel_context.Context(),
                                  kind=SpanKind.SERVER,
                                  attributes={"http.request.method": request.method, "http.route": pattern,
                                              "url.scheme": request.scheme})
        request.ctx.trace_span = span
        request.ctx.trace_token = otel_context.attach(trace.set_span_in_context(span))

    @app.on_response(priority=-1000)
    async def _end(request: Any, response: Any) -> None:
        span = getattr(request.ctx, "trace_span", None)
        if span is None:
            return
        request.ctx.trace_span = None
        span.set_attribute("http.response.status_code", response.status)
        if response.status >= 500:
            failed(span, f"HTTP {response.status}")
        span.end()
        with contextlib.suppress(ValueError):
            otel_context.detach(request.ctx.trace_token)
