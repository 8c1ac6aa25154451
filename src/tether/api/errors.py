"""One error shape for the API: ``{"error": {"code", "message", "details"}}``."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.routing import Match

from tether.errors import TetherError

log = logging.getLogger("tether.api")


class ErrorBody(BaseModel):
    code: str
    message: str
    details: dict[str, Any] = {}


class ErrorResponse(BaseModel):
    error: ErrorBody


def _error(
    status: int,
    code: str,
    message: str,
    details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "details": details or {}}}
    return JSONResponse(body, status_code=status, headers=headers)


# Pydantic puts the member of a union it tried into ``loc`` ("constrained-str", "list[str]",
# "function-after[...]"); those are not fields, so the field path leaves them out.
_TAG = re.compile(r"[\[\-]|^(str|int|bool|float|list|dict|none)$")


def _field(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc[1:] if isinstance(p, int) or not _TAG.search(str(p))]
    return ".".join(parts) or "body"


def _allowed_methods(req: Request) -> list[str]:
    """Every method some route serves at this request's path (the path of a 405): the routes
    of the first path pattern that matches it, the one Starlette answers with (a literal
    ``/v1/agents/export`` before ``/v1/agents/{agent_id}``: PATCH is not allowed on it)."""
    methods: set[str] = set()
    path: str | None = None
    for route in _leaf_routes(req.app.router.routes):
        match, _ = route.matches(req.scope)
        if match is Match.NONE or path not in (None, getattr(route, "path", None)):
            continue
        path = getattr(route, "path", None)
        methods.update(getattr(route, "methods", None) or ())
    return sorted(methods)


def _leaf_routes(routes: Iterable[Any]) -> Iterator[Any]:
    # FastAPI >= 0.165 wraps each included router; its routes sit on ``original_router``.
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _leaf_routes(inner.routes)
        else:
            yield route


def tether_error(exc: TetherError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.http_status == 401 else {}
    headers.update(exc.response_headers())
    return _error(exc.http_status, exc.code, exc.message, exc.details, headers or None)


# What pydantic says when the body as a whole is not an object ("Input should be a valid
# dictionary or object to extract fields from"): FastAPI parses only a JSON body, so a form or
# text body reaches the model as a string.
_NOT_AN_OBJECT = frozenset({"model_attributes_type", "model_type", "dict_type"})


def _is_json(content_type: str | None) -> bool:
    """Whether FastAPI parses a body of this type as JSON (none given: it tries JSON)."""
    if not content_type:
        return True
    subtype = content_type.split(";", 1)[0].strip().lower().partition("/")[2]
    return subtype == "json" or subtype.endswith("+json")


def _message(err: dict[str, Any], content_type: str | None) -> Any:
    if tuple(err.get("loc", ())) == ("body",) and err.get("type") in _NOT_AN_OBJECT:
        if not _is_json(content_type):
            return "send a JSON body (Content-Type: application/json)"
        return "the body must be a JSON object"
    return err.get("msg")


def validation_error(raw: Iterable[Any], content_type: str | None = None) -> JSONResponse:
    """Pydantic's errors (``loc`` starting with where: "body", "query"…) as the one shape;
    ``content_type`` is the request's, to tell a caller who sent no JSON to send some."""
    errors = []
    malformed = False
    for err in raw:
        malformed = malformed or err.get("type") == "json_invalid"
        field = "body" if malformed else _field(tuple(err.get("loc", ())))
        message = _message(err, content_type)
        errors.append({"field": field, "message": message, "type": err.get("type")})
    if malformed:
        return _error(
            400, "malformed_json", "the request body is not valid JSON", {"errors": errors}
        )
    first = errors[0] if errors else {"field": "body", "message": "invalid"}
    return _error(
        422,
        "validation_error",
        f"{first['field']}: {first['message']}",
        {"field": first["field"], "errors": errors},
    )


def install(app: FastAPI) -> None:
    @app.exception_handler(TetherError)
    async def _tether(_req: Request, exc: TetherError) -> JSONResponse:
        return tether_error(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(req: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error(exc.errors(), req.headers.get("content-type"))

    @app.exception_handler(HTTPException)
    async def _http(req: Request, exc: HTTPException) -> JSONResponse:
        if exc.status_code == 400:
            # FastAPI's body parser: not UTF-8, nested too deep, or otherwise unreadable.
            return _error(
                400,
                "malformed_json",
                f"the body is not valid JSON: {exc.detail}",
                {"field": "body"},
            )
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # Starlette answers with the first route whose path matched, so its Allow header
            # names that route's methods only; RFC 9110 wants every method the resource has.
            allowed = _allowed_methods(req)
            headers["Allow"] = ", ".join(allowed)
            return _error(
                405,
                code,
                f"method {req.method} not allowed; use {headers['Allow']}",
                {"allowed_methods": allowed},
                headers,
            )
        return _error(exc.status_code, code, str(exc.detail), headers=headers or None)

    @app.exception_handler(Exception)
    async def _unexpected(_req: Request, exc: Exception) -> JSONResponse:
        return unexpected(exc)


def unexpected(exc: BaseException) -> JSONResponse:
    """An error nobody handled: logged with its traceback, answered 500 without details."""
    log.exception("unhandled error", exc_info=exc)
    return _error(500, "internal_error", "internal error; see the server log")


# Response headers that come with an error status, documented so that clients (and schemathesis'
# response_headers_conformance) can rely on them.
_ERROR_HEADERS: dict[int, dict[str, Any]] = {
    429: {
        "Retry-After": {
            "description": "Seconds to wait before asking again (RFC 9110 section 10.2.3)",
            "required": True,
            "schema": {"type": "string", "pattern": "^[0-9]+$"},
        },
    },
    401: {
        "WWW-Authenticate": {
            "description": "How to authenticate (RFC 9110 section 11.6.1): Bearer, or DPoP "
            'for a DPoP-bound token whose proof failed (error="invalid_dpop_proof", RFC 9449 '
            'section 7.1) or needs a server nonce (error="use_dpop_nonce", section 9)',
            "required": True,
            "schema": {"type": "string", "pattern": "^(Bearer|DPoP)"},
        },
        "DPoP-Nonce": {
            "description": "The nonce to put in the next DPoP proof (RFC 9449 section 9)",
            "required": False,
            "schema": {"type": "string"},
        },
    },
}


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries documenting each 4xx a route can return, with the error schema."""
    text = {
        400: "Malformed request (bad JSON, cursor or parameter)",
        401: "Missing, unknown, expired or revoked bearer token",
        403: "Authenticated, but this role or user may not do this",
        404: "No such resource",
        409: "The resource's state does not allow this",
        413: "Request body too large",
        422: "Validation failed; details name the field",
        429: "Too many requests; Retry-After says how many seconds to wait",
        500: "A stored value failed its integrity check (the error says which); no value left",
        502: "A system Tether acts on (a database it mints logins on) refused or is down",
    }
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        entry: dict[str, Any] = {"model": ErrorResponse, "description": text[status]}
        if status in _ERROR_HEADERS:
            entry["headers"] = _ERROR_HEADERS[status]
        out[status] = entry
    return out
