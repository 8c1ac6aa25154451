"""/v1/users — humans and their tokens (API.md "Humans and the management API")."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from fastapi import APIRouter
from pydantic import AfterValidator, BeforeValidator, Field, StringConstraints, WithJsonSchema
from pydantic_core import PydanticCustomError

from tether.api.deps import Cursor, Limit, PrincipalDep, ServicesDep
from tether.api.errors import responses
from tether.api.params import TokenId, UserRef
from tether.api.schemas import TokenCreated, TokenList, TokenOut, UserOut, UserPage
from tether.errors import Forbidden
from tether.fields import NO_NUL, SPACES, ScopeToken, StrictModel, integral
from tether.ids import IdPrefix, id_pattern
from tether.principals import Principal, Role
from tether.users.service import ME, USERNAME

router = APIRouter(tags=["users"])


# Something@something, without white space (every regex engine's idea of it, see SPACES) or
# NUL (which PostgreSQL text cannot hold).
_EMAIL_PART = rf"[^@{SPACES}\x00]+"
_EMAIL = rf"^{_EMAIL_PART}@{_EMAIL_PART}$"


_EMAIL_RE = re.compile(_EMAIL)


def _email(value: str) -> str:
    # The pattern is checked here rather than by StringConstraints, whose error quotes it.
    if not _EMAIL_RE.fullmatch(value):
        raise PydanticCustomError(
            "email_invalid", "not a valid email address (expected name@domain)"
        )
    return value


Email = Annotated[
    str,
    StringConstraints(max_length=254),
    AfterValidator(_email),
    WithJsonSchema({"type": "string", "maxLength": 254, "pattern": _EMAIL}),
]


class UserCreate(StrictModel):
    # The service's own rule, stated here too so the OpenAPI document says which are valid.
    username: Annotated[str, StringConstraints(pattern=USERNAME.pattern)]
    role: Literal["admin", "supervisor", "auditor"]
    email: Email | None = None


def _ref(user: str, who: Principal) -> str:
    """``me`` in a path names the caller."""
    return who.id if user == ME else user


class TokenCreate(StrictModel):
    name: Annotated[str, StringConstraints(max_length=100, pattern=NO_NUL)] | None = None
    expires_in: Annotated[int, Field(ge=60, le=366 * 86_400), BeforeValidator(integral)] | None = (
        None
    )


@router.get("/v1/whoami", response_model=UserOut, responses=responses(401))
def whoami(svc: ServicesDep, who: PrincipalDep) -> dict[str, Any]:
    return svc.users.get(who, who.id).to_json()


@router.post(
    "/v1/users",
    status_code=201,
    response_model=UserOut,
    responses=responses(400, 401, 403, 409, 413, 422),
)
def create_user(body: UserCreate, svc: ServicesDep, who: PrincipalDep) -> dict[str, Any]:
    return svc.users.create(
        who, username=body.username, role=Role(body.role), email=body.email
    ).to_json()


@router.get("/v1/users", response_model=UserPage, responses=responses(400, 401, 403, 422))
def list_users(
    svc: ServicesDep,
    who: PrincipalDep,
    cursor: Cursor = None,
    limit: Limit = 50,
) -> dict[str, Any]:
    page = svc.users.list(who, cursor=cursor, limit=limit)
    return {"items": [u.to_json() for u in page.items], "next_cursor": page.next_cursor}


@router.get("/v1/users/{user}", response_model=UserOut, responses=responses(401, 403, 404, 422))
def get_user(user: UserRef, svc: ServicesDep, who: PrincipalDep) -> dict[str, Any]:
    return svc.users.get(who, _ref(user, who)).to_json()


@router.post(
    "/v1/users/{user}/tokens",
    status_code=201,
    response_model=TokenCreated,
    responses=responses(400, 401, 403, 404, 413, 422),
)
def create_token(
    user: UserRef, svc: ServicesDep, who: PrincipalDep, body: TokenCreate | None = None
) -> dict[str, Any]:
    body = body or TokenCreate()
    token, secret = svc.users.create_token(
        who, _ref(user, who), name=body.name, expires_in=body.expires_in
    )
    return {**token.to_json(), "token": secret}


@router.get(
    "/v1/users/{user}/tokens",
    response_model=TokenList,
    responses=responses(400, 401, 403, 404, 422),
)
def list_tokens(
    user: UserRef, svc: ServicesDep, who: PrincipalDep, cursor: Cursor = None, limit: Limit = 50
) -> dict[str, Any]:
    page = svc.users.list_tokens(who, _ref(user, who), cursor=cursor, limit=limit)
    return {"items": [t.to_json() for t in page.items], "next_cursor": page.next_cursor}


@router.delete(
    "/v1/users/{user}/tokens/{token_id}",
    response_model=TokenOut,
    responses=responses(401, 403, 404, 422),
)
def revoke_token(
    user: UserRef,
    token_id: TokenId,
    svc: ServicesDep,
    who: PrincipalDep,
) -> dict[str, Any]:
    return svc.users.revoke_token(who, _ref(user, who), token_id).to_json()


class PasswordSet(StrictModel):
    password: Annotated[str, StringConstraints(min_length=12, max_length=1024, pattern=NO_NUL)]


@router.put("/v1/users/{user}/password", status_code=204,
            responses=responses(400, 401, 403, 404, 413, 422))  # fmt: skip
def set_password(user: UserRef, body: PasswordSet, svc: ServicesDep, who: PrincipalDep) -> None:
    """Set the user's web console password (their own, or anyone's for an admin): stored as
    an argon2id hash; the user's console sessions end."""
    svc.signin.set_password(who, _ref(user, who), body.password)


class SubjectTokenCreate(StrictModel):
    agent: Annotated[str, StringConstraints(pattern=id_pattern(IdPrefix.AGENT))]
    scopes: Annotated[list[ScopeToken], Field(max_length=100)] = Field(default_factory=list)
    expires_in: Annotated[int, Field(ge=30, le=3600), BeforeValidator(integral)] = 300


@router.post("/v1/users/{user}/subject-tokens", status_code=201,
             responses=responses(400, 401, 403, 404, 413, 422))  # fmt: skip
def create_subject_token(
    user: UserRef, body: SubjectTokenCreate, svc: ServicesDep, who: PrincipalDep
) -> dict[str, Any]:
    """A short-lived token a human gives one agent so it can act on their behalf: the agent
    exchanges it (RFC 8693, ``subject_token_type`` ``urn:ietf:params:oauth:token-type:jwt``)
    together with its own access token as ``actor_token``. ``user`` is the caller: ``me``,
    or their own id or username."""
    if _ref(user, who) not in (who.id, who.name):
        raise Forbidden(
            "a human mints subject tokens only for themselves: use /v1/users/me/subject-tokens"
        )
    return svc.oauth.subject_token(who, actor=body.agent, scopes=body.scopes,
                                   expires_in=body.expires_in)  # fmt: skip
