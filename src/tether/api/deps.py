"""Request dependencies: the process's services and the authenticated principal."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import WithJsonSchema

from tether.api.requestlog import set_caller
from tether.container import Services
from tether.credentials.bearer import Caller
from tether.errors import Unauthenticated
from tether.pagination import (
    CURSOR_MAX_LENGTH,
    CURSOR_PATTERN,
    MAX_LIMIT,
    SEQ_CURSOR_MAX_LENGTH,
    SEQ_CURSOR_PATTERN,
)
from tether.principals import Principal

_bearer = HTTPBearer(auto_error=False, description="A Tether user token (tth_…)")


async def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


def principal(
    request: Request,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if creds is None or creds.scheme.lower() != "bearer" or not creds.credentials:
        raise Unauthenticated("send 'Authorization: Bearer <token>' (see tether users token)")
    svc: Services = request.app.state.services
    # As every transport asks (a token this worker checked since the users last changed is
    # answered from the runtime's users section; a revocation empties it on every worker
    # before its call returns), not a database read per request.
    who = svc.bearers.user(creds.credentials)
    set_caller(request.scope, who.ref)
    return who


ServicesDep = Annotated[Services, Depends(services)]
PrincipalDep = Annotated[Principal, Depends(principal)]


async def caller(
    request: Request,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    """A human (user token) or an agent (access token; ``DPoP`` scheme for bound tokens):
    :meth:`Bearers.authenticate_request`, as every transport asks it."""
    del creds  # declares the security scheme in the document; the header is read whole below
    svc: Services = request.app.state.services
    who = await svc.bearers.authenticate_request(
        request.headers.get("authorization", ""), method=request.method,
        url=f"{svc.settings.base_url}{request.url.path}", proofs=request.headers.getlist("dpop"),
    )  # fmt: skip
    set_caller(request.scope, who.principal.ref)
    return who


CallerDep = Annotated[Caller, Depends(caller)]


_CURSOR_TEXT = "next_cursor of the previous page (opaque); absent or empty: the first page"


def _cursor_schema(pattern: str, max_length: int) -> WithJsonSchema:
    """The document states a cursor's pattern (which bounds its length too); the service applies
    it (:mod:`tether.pagination`), so every string outside it is 400 ``invalid_cursor``."""
    return WithJsonSchema({"type": "string", "pattern": pattern, "maxLength": max_length})


# Every list takes these (API.md): an opaque cursor from the previous page, a page size.
Cursor = Annotated[
    Annotated[str, _cursor_schema(CURSOR_PATTERN, CURSOR_MAX_LENGTH)] | None,
    Query(description=_CURSOR_TEXT),
]
SeqCursor = Annotated[  # the audit ledger's: it pages by sequence number
    Annotated[str, _cursor_schema(SEQ_CURSOR_PATTERN, SEQ_CURSOR_MAX_LENGTH)] | None,
    Query(description=_CURSOR_TEXT),
]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT)]
