"""Request dependencies: the process's services and the authenticated principal."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from tether.container import Services
from tether.errors import Unauthenticated
from tether.principals import Principal

_bearer = HTTPBearer(auto_error=False, description="A Tether user token (tth_…)")


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


def principal(
    request: Request,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if creds is None or creds.scheme.lower() != "bearer" or not creds.credentials:
        raise Unauthenticated("send 'Authorization: Bearer <token>' (see tether users token)")
    return services(request).users.authenticate(creds.credentials)


ServicesDep = Annotated[Services, Depends(services)]
PrincipalDep = Annotated[Principal, Depends(principal)]
