"""Declaring API endpoints once: the route, its authorisation, its request and response models.

Each endpoint is registered on Sanic and recorded for the OpenAPI document, so the document can
never drift from what the server accepts. Request bodies are parsed as JSON and validated with
pydantic in strict mode (no silent type coercion); query strings are validated leniently (they
are always text).
"""

from __future__ import annotations

import json as jsonlib
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError
from sanic import Request, Sanic
from sanic.exceptions import NotFound as NoSuchRoute
from sanic.response import HTTPResponse, empty, json

from ..accounts import Principal
from ..errors import BadRequest, Forbidden, Invalid, Unauthorized
from ..services import Services

Handler = Callable[..., Awaitable[Any]]
MAX_PATH_PARAM = 64  # ids and codes are shorter; the OpenAPI document says so too
ANONYMOUS_MAX_BODY = 16 * 1024  # nobody needs more to sign in, refresh, register or ask for a guest pass


@dataclass
class Call:
    """What a handler gets besides the path parameters."""

    request: Request
    principal: Any = None
    body: Any = None
    query: Any = None

    @property
    def services(self) -> Services:
        """The appliance's parts (appliance/services.py)."""
        return self.request.app.ctx.services


@dataclass
class Endpoint:
    method: str
    path: str  # OpenAPI style: /api/v1/meetings/{meeting_id}
    handler: Handler
    summary: str
    tag: str
    auth: str | None  # None (public), "guest" (guests too), "user" (account holders), "admin"
    body: type[BaseModel] | None
    query: type[BaseModel] | None
    response: type[BaseModel] | None
    status: int
    errors: tuple[int, ...]
    description: str = ""
    path_params: list[str] = field(default_factory=list)
    upload: bool = False  # the body is raw bytes, streamed to the handler (request.stream)
    produces: tuple[str, ...] = ()  # media types besides JSON the handler may answer with (an HTTPResponse)

    @property
    def sanic_path(self) -> str:
        return re.sub(r"\{(\w+)\}", r"<\1:str>", self.path)


def _field_of(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc) if loc else ""


def validation_error(exc: ValidationError) -> Invalid:
    first = exc.errors(include_url=False)[0]
    where = _field_of(first.get("loc", ()))
    message = first.get("msg", "invalid value")
    return Invalid(f"{where}: {message}" if where else message, where or None)


def parse_body(request: Request, model: type[BaseModel]) -> BaseModel:
    raw = request.body or b""
    if not raw.strip():
        raise BadRequest("the request needs a JSON object body", code="malformed_json")
    try:
        data = jsonlib.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}", code="malformed_json") from None
    if not isinstance(data, dict):
        raise Invalid("the body must be a JSON object")
    try:  # JSON may escape lone UTF-16 surrogates ("\\ud800"), which no text column can store
        jsonlib.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest("the body contains invalid Unicode (a lone surrogate)", code="malformed_json") from None
    try:
        return model.model_validate_json(raw, strict=True)
    except ValidationError as exc:
        raise validation_error(exc) from None


def parse_query(request: Request, model: type[BaseModel]) -> BaseModel:
    args = request.get_args(keep_blank_values=True)  # "?limit=" is a wrong limit, not an absent one
    data = {key: values[-1] for key, values in args.items()}
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None


def bearer_token(request: Request) -> str:
    """The token of an ``Authorization: Bearer <token>`` header; "" when there is none."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


async def authenticate(request: Request, admin: bool = False) -> Principal:
    """Who sends the request, from its bearer token: Unauthorized without a valid one, Forbidden
    when ``admin`` and they are not an administrator."""
    token = bearer_token(request)
    if not token:
        raise Unauthorized("sign in first: send 'Authorization: Bearer <access token>'")
    principal = await request.app.ctx.services.accounts.principal_for_token(token)
    if admin and not principal.is_admin:
        raise Forbidden("this needs an administrator")
    return principal


class Api:
    """A collection of endpoints; ``mount(app)`` registers them all."""

    def __init__(self) -> None:
        self.endpoints: list[Endpoint] = []

    def route(
        self,
        method: str,
        path: str,
        *,
        summary: str,
        tag: str,
        auth: str | None = "user",
        body: type[BaseModel] | None = None,
        query: type[BaseModel] | None = None,
        response: type[BaseModel] | None = None,
        status: int = 200,
        errors: tuple[int, ...] = (),
        upload: bool = False,
        produces: tuple[str, ...] = (),
    ) -> Callable[[Handler], Handler]:
        def decorate(fn: Handler) -> Handler:
            params = re.findall(r"\{(\w+)\}", path)
            implied: set[int] = set(errors)
            if body is not None or upload:
                implied |= {400, 413, 422}
            if query is not None:
                implied.add(422)
            if auth:
                implied.add(401)
            if auth in ("admin", "user"):
                implied.add(403)
            if params:
                implied.add(404)
            self.endpoints.append(Endpoint(
                method=method.upper(), path=path, handler=fn, summary=summary, tag=tag, auth=auth,
                body=body, query=query, response=response, status=status,
                errors=tuple(sorted(implied)), description=(fn.__doc__ or "").strip(), path_params=params,
                upload=upload, produces=produces,
            ))
            return fn

        return decorate

    def mount(self, app: Sanic) -> None:
        for ep in self.endpoints:
            app.add_route(_make_view(ep), ep.sanic_path, methods=[ep.method], stream=ep.upload,
                          name=f"{ep.handler.__module__.rsplit('.', 1)[-1]}_{ep.handler.__name__}")

        @app.signal("http.routing.after")
        async def limit_body(request: Request, route: Any, kwargs: dict[str, Any], handler: Any) -> None:
            """Hold each route to its own body limit before Sanic reads the body: a body announced
            larger is refused (413) from its headers, and one sent larger is cut off there. The app's
            own limit is the largest (uploads); an upload's handler counts what it streams."""
            if request.stream is not None:
                request.stream.request_max_size = getattr(handler, "max_body", None) or request.app.ctx.settings.max_request_bytes


def _make_view(ep: Endpoint) -> Callable[..., Awaitable[HTTPResponse]]:
    async def view(request: Request, **params: str) -> HTTPResponse:
        if any(len(value) > MAX_PATH_PARAM for value in params.values()):
            raise NoSuchRoute()
        call = Call(request)
        if ep.auth:
            call.principal = await authenticate(request, admin=ep.auth == "admin")
            if ep.auth != "guest" and call.principal.kind != "user":
                raise Forbidden("guests can only join their meeting; sign in with an account")
        if ep.body is not None:
            call.body = parse_body(request, ep.body)
        if ep.query is not None:
            call.query = parse_query(request, ep.query)
        result = await ep.handler(call, **params)
        if isinstance(result, HTTPResponse):
            return result
        if result is None:
            return empty(status=204)
        if ep.response is not None and not isinstance(result, BaseModel):
            result = ep.response.model_validate(result)
        if isinstance(result, BaseModel):
            result = result.model_dump(mode="json")
        return json(result, status=ep.status)

    view.__name__ = ep.handler.__name__
    if not ep.upload:
        view.max_body = ANONYMOUS_MAX_BODY if ep.auth is None else None  # type: ignore[attr-defined]
    return view
