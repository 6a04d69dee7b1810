"""The OpenAPI 3.1 document, built from the registered endpoints and their pydantic models."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from .. import __version__
from .endpoint import MAX_PATH_PARAM, Api, Endpoint
from .models import Error

REF = "#/components/schemas/{model}"
STATUS_TEXT = {
    200: "OK", 201: "Created", 204: "No content", 400: "Malformed request (e.g. body is not JSON)",
    401: "Not signed in, or the token is expired, forged or revoked", 403: "Not allowed",
    404: "Not found", 409: "Conflict with the current state", 413: "Request body too large",
    422: "A field is missing, of the wrong type, or out of range",
}


def build_openapi(api: Api) -> dict[str, Any]:
    models: set[type[BaseModel]] = {Error}
    for ep in api.endpoints:
        models.update(m for m in (ep.body, ep.response) if m is not None)
    ordered = sorted(models, key=lambda m: m.__name__)
    keys, defs = models_json_schema(
        [(m, "validation") for m in ordered if m in {e.body for e in api.endpoints}]
        + [(m, "serialization") for m in ordered if m not in {e.body for e in api.endpoints}],
        ref_template=REF,
    )
    ref_of = {model: schema for (model, _mode), schema in keys.items()}

    paths: dict[str, dict[str, Any]] = {}
    for ep in api.endpoints:
        paths.setdefault(ep.path, {})[ep.method.lower()] = _operation(ep, ref_of)

    return {
        "openapi": "3.1.0",
        "info": {
            "title": "confmeet API",
            "version": __version__,
            "description": "Self-hosted meetings. Errors always have the body "
                           "`{\"error\": {\"code\", \"message\", \"field\"?}}`.",
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
    }


def _operation(ep: Endpoint, ref_of: dict[type[BaseModel], dict]) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": ep.handler.__name__,
        "summary": ep.summary,
        "tags": [ep.tag],
        "responses": {},
    }
    if ep.description:
        op["description"] = ep.description
    params = [{"name": name, "in": "path", "required": True,
               "schema": {"type": "string", "minLength": 1, "maxLength": MAX_PATH_PARAM}}
              for name in ep.path_params]
    if ep.query is not None:
        schema = ep.query.model_json_schema(ref_template=REF)
        for name, prop in schema.get("properties", {}).items():
            # An absent query parameter is how a query string says "none": drop the null branch.
            variants = [v for v in prop.get("anyOf", []) if v.get("type") != "null"]
            if len(variants) == 1:
                prop = {**{k: v for k, v in prop.items() if k != "anyOf"}, **variants[0]}
                prop.pop("default", None)
            params.append({"name": name, "in": "query", "required": name in schema.get("required", []),
                           "schema": prop})
    if params:
        op["parameters"] = params
    if ep.body is not None:
        op["requestBody"] = {"required": True,
                             "content": {"application/json": {"schema": ref_of[ep.body]}}}
    if ep.upload:
        op["requestBody"] = {"required": True, "content": {
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}
    if ep.auth:
        op["security"] = [{"bearer": []}]
    ok: dict[str, Any] = {"description": STATUS_TEXT.get(ep.status, "OK")}
    if ep.response is not None and ep.status != 204:
        ok["content"] = {"application/json": {"schema": ref_of[ep.response]}}
        ok["content"].update({media: {"schema": {"type": "string"}} for media in ep.produces})
    op["responses"][str(ep.status)] = ok
    for status in ep.errors:
        op["responses"][str(status)] = {
            "description": STATUS_TEXT.get(status, "Error"),
            "content": {"application/json": {"schema": ref_of[Error]}},
        }
    return op
