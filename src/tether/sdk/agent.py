"""The agent side of Tether's OAuth 2: get, cache and present access tokens.

An agent authenticates as its own OAuth client (RFC 6749 §4.4 ``client_credentials``) with an
API key (``client_secret_basic``, RFC 6749 §2.3.1) or a registered key pair
(``private_key_jwt``, RFC 7523 §2.2), optionally binding its tokens to a DPoP key
(RFC 9449)::

    agent = AgentClient("https://tether.example", "agt_…", private_key=pem, dpop_key=True)
    headers = agent.auth_headers("GET", "https://tools.example/mcp")

It also asks Tether whether it may act (OpenID AuthZEN Authorization API 1.0, with its own
token, about itself) and waits for a human's approval::

    decision = agent.authorize("tool.write", resource="crm", properties={"server": "crm"})
    if decision.approval_required:
        agent.wait_for_approval(decision.approval_id, timeout=300)

It reads the secrets policy lets it read, held under their leases (renewed near their end,
read afresh once Tether says a lease is over), and gets database logins::

    api_key = agent.secret("crm.api-key")
    login = agent.database_login("orders-ro")  # login.dsn for a libpq connection

The token endpoint and issuer come from the server's RFC 8414 metadata. Tokens, secrets,
secret values, passwords and assertions are never logged and never appear in error messages.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Self
from urllib.parse import urlsplit

import httpx2 as httpx

from tether.sdk._protocol import (
    ASSERTION_TYPE,
    ApiError,
    KeyInput,
    Signer,
    TokenError,
    api_error,
    basic_auth,
    client_assertion,
    dpop_proof,
    json_object,
    oauth_error,
    parse_metadata,
    scope_param,
)
from tether.sdk._secrets import DatabaseLogin, SecretError, SecretLeases

__all__ = [
    "ACCESS_TOKEN_TYPE",
    "AgentClient",
    "ApiError",
    "DatabaseLogin",
    "Decision",
    "SecretError",
    "TokenError",
]

log = logging.getLogger(__name__)

#: RFC 8693 §3 token type identifier of an OAuth 2 access token.
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105 - a URN
_TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105 - a URN
# Tether serves its metadata under the base URL, so the issuer is the metadata URL minus
# this suffix (STANDARDS.md; RFC 8414 §3.1 would put it before an issuer's path).
_WELL_KNOWN = "/.well-known/oauth-authorization-server"
_EVALUATION = "/access/v1/evaluation"
_MAX_WAIT = 60  # seconds the server long-polls an approval per request
_EFFECTS = ("allow", "deny", "approval_required")


@dataclass(frozen=True, slots=True)
class Decision:
    """Tether's answer to one request, as a value: falsy unless ``allowed``, and always with
    ``reasons`` (the ``@id`` of every policy that decided; empty when none applied and the
    default deny did). ``decision`` is ``"allow"``, ``"deny"`` or ``"approval_required"``; an
    approval checkpoint has ``approval_id`` (and ``approval_status``, ``"pending"`` until a
    human decides). ``event_id`` is the decision's ledger event; ``error`` (``code``,
    ``message``) says why Tether refused before any policy ran (agent not active…)."""

    allowed: bool
    decision: Literal["allow", "deny", "approval_required"]
    reasons: tuple[str, ...] = ()
    policy_version: str | None = None
    event_id: str | None = None
    approval_id: str | None = None
    approval_status: str | None = None
    error: Mapping[str, str] | None = None

    def __bool__(self) -> bool:
        return self.allowed

    @property
    def approval_required(self) -> bool:
        return self.decision == "approval_required"

    @classmethod
    def from_authzen(cls, body: Any) -> Decision:
        """An AuthZEN evaluation response; :class:`ApiError` (``invalid_response``) when it
        is not one, or when its boolean and Tether's ``context.decision`` disagree."""
        ctx = body.get("context") if isinstance(body, dict) else None
        allowed = body.get("decision") if isinstance(body, dict) else None
        if not isinstance(allowed, bool) or not isinstance(ctx, dict):
            raise ApiError("invalid_response", "not an AuthZEN evaluation response")
        kind = ctx.get("decision", "allow" if allowed else "deny")
        if kind not in _EFFECTS or (kind == "allow") != allowed:
            raise ApiError("invalid_response", f"decision {allowed!r} with context {kind!r}")
        reasons = ctx.get("reasons") or []
        error = ctx.get("error")
        return cls(
            allowed, kind, tuple(str(r) for r in reasons), _str(ctx.get("policy_version")),
            _str(ctx.get("event_id")), _str(ctx.get("approval_id")),
            _str(ctx.get("approval_status")),
            {str(k): str(v) for k, v in error.items()} if isinstance(error, dict) else None,
        )  # fmt: skip


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}"


def _asks_for_nonce(response: httpx.Response) -> bool:
    """A resource server's ``WWW-Authenticate: DPoP error="use_dpop_nonce"`` (RFC 9449 §9)."""
    return any(
        'error="use_dpop_nonce"' in value for value in response.headers.get_list("WWW-Authenticate")
    )


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


@dataclass(frozen=True, slots=True)
class _Token:
    value: str
    refresh_at: float  # by the client's clock: fetch a new token from this moment on


@dataclass(frozen=True, slots=True)
class _Metadata:
    issuer: str
    token_endpoint: str
    document: dict[str, Any]


class AgentClient:
    """One agent's OAuth client for a Tether server at ``base_url`` (the issuer).

    Give exactly one of ``client_secret`` (an API key) or ``private_key`` (PEM bytes/str or a
    joserfc key whose public half is registered); raises ValueError otherwise. ``scope`` and
    ``resource`` (RFC 8707) go into every token request. ``dpop_key`` binds tokens to a key
    (True generates an ephemeral P-256 key). ``http`` lets a caller share a client or inject a
    transport; a client created here is closed by :meth:`close`. ``clock`` returns epoch
    seconds. A token is reused until ``refresh_margin`` seconds before it expires (at most
    half its lifetime, so short-lived tokens are still reused).
    """

    def __init__(
        self,
        base_url: str,
        client_id: str,
        *,
        client_secret: str | None = None,
        private_key: KeyInput | None = None,
        scope: str | Sequence[str] | None = None,
        resource: str | None = None,
        dpop_key: KeyInput | bool | None = None,
        http: httpx.Client | None = None,
        clock: Callable[[], float] = time.time,
        refresh_margin: float = 30,
        timeout: float = 10.0,
    ) -> None:
        if (client_secret is None) == (private_key is None):
            raise ValueError("give exactly one of client_secret or private_key")
        if client_secret == "" or not client_id:
            raise ValueError("client_id and client_secret must not be empty")
        if refresh_margin < 0:
            raise ValueError("refresh_margin must be >= 0")
        self.base_url = base_url.rstrip("/")
        self.client_id = client_id
        self._secret = client_secret
        self._signer = None if private_key is None else Signer.load(private_key, what="private_key")
        self._dpop: Signer | None = None
        if dpop_key is True:
            self._dpop = Signer.generate()
        elif dpop_key is not None and dpop_key is not False:
            self._dpop = Signer.load(dpop_key, what="dpop_key")
        self._scope = scope_param(scope)
        self._resource = resource
        self._owns_http = http is None
        self._http = http if http is not None else httpx.Client(timeout=timeout)
        self._clock = clock
        self._margin = refresh_margin
        self._lock = threading.Lock()  # held across a fetch: concurrent callers share it
        self._meta_lock = threading.Lock()
        self._token: _Token | None = None
        self._metadata: _Metadata | None = None
        self._nonce: str | None = None  # the authorization server's latest DPoP-Nonce (§8)
        # Resource servers' latest DPoP-Nonce by origin (§9); Tether's own API is one of them.
        self._resource_nonces: dict[str, str] = {}
        self._secrets = SecretLeases(functools.partial(self._api, error=SecretError), clock)

    @property
    def dpop_jkt(self) -> str | None:
        """The RFC 7638 thumbprint of the DPoP key (a bound token's ``cnf.jkt``), or None."""
        return None if self._dpop is None else self._dpop.thumbprint()

    def metadata(self) -> dict[str, Any]:
        """The server's RFC 8414 metadata, fetched on first use. Raises :class:`TokenError`
        (``invalid_response``) if its ``issuer`` is not ``base_url`` (RFC 8414 §3.3)."""
        return dict(self._meta().document)

    def access_token(self) -> str:
        """A valid access token: the cached one, or a new one when there is none or it
        expires within the refresh margin. Thread-safe: concurrent callers wait for a single
        request. Raises :class:`TokenError` when the server refuses or cannot be reached."""
        with self._lock:
            token = self._token
            if token is None or self._clock() >= token.refresh_at:
                token = self._token = self._fetch()
            return token.value

    def invalidate(self) -> None:
        """Drop the cached token (say, after a resource server answered 401 for it)."""
        with self._lock:
            self._token = None

    def auth_headers(self, method: str, url: str, *, nonce: str | None = None) -> dict[str, str]:
        """Headers that present the access token on a request to a resource server.

        Without DPoP: ``Authorization: Bearer <token>`` (RFC 6750 §2.1). With DPoP:
        ``Authorization: DPoP <token>`` and a fresh proof for ``method`` and ``url`` whose
        ``ath`` hashes the token (RFC 9449 §7.1); ``nonce`` is the resource server's
        ``DPoP-Nonce`` after it answered ``use_dpop_nonce`` (§9), by default the latest one
        Tether's API gave this client for that origin. Raises :class:`TokenError` when no
        token can be had, ValueError when ``url`` is not an absolute http(s) URL.
        """
        token = self.access_token()
        if self._dpop is None:
            return {"Authorization": f"Bearer {token}"}
        if nonce is None:
            nonce = self._resource_nonces.get(_origin(url))
        proof = dpop_proof(self._dpop, method, url, self._clock(), access_token=token, nonce=nonce)
        return {"Authorization": f"DPoP {token}", "DPoP": proof}

    def exchange(
        self,
        subject_token: str,
        *,
        subject_token_type: str = ACCESS_TOKEN_TYPE,
        scope: str | Sequence[str] | None = None,
        resource: str | None = None,
        audience: str | None = None,
    ) -> dict[str, Any]:
        """RFC 8693 token exchange with this agent as the actor: the issued token lets it act
        for the subject, and its ``act`` claim names the agent (§4.1). ``actor_token`` is this
        agent's current access token; the request is authenticated as this client and, with
        DPoP, carries a proof so the issued token is bound to the same key. Returns the
        response (``access_token``, ``issued_token_type``, ``token_type``, ``expires_in``,
        ``scope``; §2.2.1), not cached; raises :class:`TokenError`.
        """
        form = {
            "grant_type": _TOKEN_EXCHANGE,
            "subject_token": subject_token,
            "subject_token_type": subject_token_type,
            "actor_token": self.access_token(),
            "actor_token_type": ACCESS_TOKEN_TYPE,
        }
        for name, value in (
            ("scope", scope_param(scope)),
            ("resource", resource),
            ("audience", audience),
        ):
            if value:
                form[name] = value
        body = self._token_request(form)
        for name in ("access_token", "issued_token_type", "token_type"):
            if not isinstance(body.get(name), str) or not body[name]:
                raise TokenError("invalid_response", f"the exchange response has no {name}")
        if body["issued_token_type"] == ACCESS_TOKEN_TYPE:
            self._check_token_type(body["token_type"])
        return body

    def authorize(
        self,
        action: str,
        *,
        resource: str,
        resource_type: str = "Tool",
        properties: Mapping[str, Any] | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> Decision:
        """May this agent do ``action`` on ``resource_type::resource`` now? One AuthZEN
        evaluation (``POST /access/v1/evaluation``) with this agent as the subject, presented
        with its own access token (so a delegated token's chain counts). ``properties``
        become the resource's attributes and ``context`` the request's context: strings,
        booleans, integers, lists and objects. Every answer is recorded in Tether's ledger.

        Returns the :class:`Decision` (a deny is a value, not an exception). An
        ``approval_required`` decision names its approval: once a human approves it, the
        identical request is allowed exactly once. Raises :class:`ApiError` when Tether
        refuses the question itself (a malformed request, a subject other than this agent)
        or cannot be reached, :class:`TokenError` when no access token can be had."""
        body = {
            "subject": {"type": "agent", "id": self.client_id},
            "action": {"name": action},
            "resource": {"type": resource_type, "id": resource,
                         "properties": dict(properties or {})},
            "context": dict(context or {}),
        }  # fmt: skip
        return Decision.from_authzen(self._api("POST", _EVALUATION, json=body))

    def wait_for_approval(self, approval_id: str, timeout: float = 60) -> dict[str, Any]:
        """Long-poll ``GET /v1/approvals/{id}?wait=N`` until a human decides or ``timeout``
        seconds pass; returns the approval (its ``status``: ``approved``, ``denied``,
        ``expired``, ``cancelled`` — or still ``pending`` when the time ran out). After
        ``approved``, repeat the identical :meth:`authorize` call: it is allowed once.
        Raises :class:`ApiError` (``approval_not_found`` for another agent's approval)."""
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            left = max(0.0, deadline - time.monotonic())
            wait = min(left, _MAX_WAIT)
            approval = self._api(
                "GET", f"/v1/approvals/{approval_id}", params={"wait": f"{wait:.3f}"},
                timeout=wait + self._http.timeout.read if self._http.timeout.read else None,
            )  # fmt: skip
            if approval.get("status") != "pending" or left <= _MAX_WAIT:
                return approval

    def record_call(
        self,
        decision: Decision,
        *,
        tool: str,
        args: Mapping[str, Any],
        result: Any,
        outcome: Literal["ok", "tool_error"],
        duration_ms: float,
        undo: Mapping[str, Any] | None = None,
        irreversible: bool = False,
    ) -> dict[str, Any]:
        """Put a tool call this agent made on Tether's record (``POST /v1/tool-calls``): the
        same ``tool.called`` ledger event a call through the MCP gateway makes, linked to
        ``decision`` (the ``allow`` for ``tool`` it was made under; a decision allows one
        call). Every secret value this client has read is cut out of ``args`` and ``result``
        before they leave; Tether keeps digests and redacted copies. Returns the event's
        ``event_id``, ``seq`` and digests. With ``undo`` (``{"tool": "<server>.<tool>",
        "arguments": {…}}``: a tool the MCP gateway serves) the call goes in the compensation
        journal, ready for a rollback to run as the operator; ``irreversible`` says nothing
        undoes it. Raises :class:`ApiError` (``decision_not_found``, ``call_not_allowed``,
        ``call_already_recorded``…)."""
        if decision.event_id is None:
            raise ValueError("the decision has no event_id: it was not made by Tether")
        hide = [v for v in self._secrets.seen() if len(v) >= 4]
        body = {
            "decision_event": decision.event_id, "tool": tool, "outcome": outcome,
            "args": _hidden(_jsonable(dict(args)), hide),
            "result": _hidden(_jsonable(result), hide), "duration_ms": max(0.0, duration_ms),
        }  # fmt: skip
        if undo is not None:
            body["undo"] = {"tool": str(undo["tool"]),
                            "arguments": _jsonable(dict(undo.get("arguments") or {}))}  # fmt: skip
        elif irreversible:
            body["undo"] = "irreversible"
        return self._api("POST", "/v1/tool-calls", json=body)

    def secret(self, name: str, *, version: int | None = None) -> str:
        """The value of secret ``name`` (its current version, or ``version``), read with this
        agent's token (``GET /v1/secrets/{name}/value``) when policy permits ``secret.read``
        on ``Secret::"<name>"``, and held under the lease Tether hands out with it.

        While the lease has comfortably long to run the held value is returned without
        asking Tether; within its last tenth (at most its last 30 s, by ``clock``) the lease
        is renewed (asked of policy again) and the value kept; a lease Tether says is over
        (``lease_revoked``) or that cannot be extended is never served again: the secret is
        read afresh under a new lease. A renewal that fails for a moment (``unavailable``,
        ``rate_limited``, a 5xx) keeps the value until the lease ends. A held value is the
        version its lease is for: a newer version is read once that lease is over, or after
        :meth:`release_secrets`. Thread-safe: concurrent callers share one request.

        Raises :class:`SecretError` with Tether's code (``access_denied``,
        ``approval_required`` with its ``approval_id``, ``secret_broker_only``,
        ``secret_not_found``, ``secret_version_not_found``, ``rate_limited`` with
        ``retry_after``, ``secret_unreadable``…) and then holds nothing for this secret;
        :class:`TokenError` when no access token can be had; ValueError for an empty name or
        a version that is not a positive integer."""
        return self._secrets.value(name, version)

    def release_secrets(self) -> int:
        """Drop every held secret and give its lease back (``POST
        /v1/secrets/leases/{id}/revoke``), best effort: a lease that cannot be given back is
        logged and ends when it expires. Returns how many leases were given back."""
        return self._secrets.release()

    def revoke_lease(self, lease_id: str) -> None:
        """Give back a lease of this agent's (a :class:`DatabaseLogin`'s when done with it);
        a secret held under it is dropped. Raises :class:`SecretError` (``lease_not_found``
        when it is not this agent's)."""
        self._secrets.revoke(lease_id)

    def database_login(self, role: str) -> DatabaseLogin:
        """New database credentials for ``role`` under a lease of their own (``POST
        /v1/secrets/db/{role}/lease``, decided by policy); each call makes a new login. Raises
        :class:`SecretError` (``access_denied``…), :class:`TokenError`, ValueError for an
        empty role."""
        return self._secrets.database_login(role)

    def close(self) -> None:
        """Close the HTTP client if this object created it."""
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals -------------------------------------------------------------------------
    def _fetch(self) -> _Token:
        """RFC 6749 §4.4 client credentials; the caller holds ``_lock``."""
        form = {"grant_type": "client_credentials"}
        if self._scope:
            form["scope"] = self._scope
        if self._resource:
            form["resource"] = self._resource
        started = self._clock()
        body = self._token_request(form)
        token, expires_in = body.get("access_token"), body.get("expires_in")
        if not isinstance(token, str) or not token or not token.isascii():
            raise TokenError("invalid_response", "the token response has no usable access_token")
        self._check_token_type(body.get("token_type"))
        if isinstance(expires_in, bool) or not isinstance(expires_in, int | float):
            raise TokenError("invalid_response", "the token response has no expires_in")
        if expires_in <= 0:
            raise TokenError("invalid_response", "expires_in must be positive")
        log.debug("access token for %s fetched; expires in %ss", self.client_id, expires_in)
        return _Token(token, started + expires_in - min(self._margin, expires_in / 2))

    def _check_token_type(self, token_type: object) -> None:
        # RFC 9449 §5: with a proof sent, anything but a DPoP token means the binding the
        # caller asked for is missing. Token types are case-insensitive (RFC 6749 §7.1).
        expected = "Bearer" if self._dpop is None else "DPoP"
        if not isinstance(token_type, str) or token_type.lower() != expected.lower():
            raise TokenError(
                "invalid_response", f"expected token_type {expected}, got {token_type!r}"
            )

    def _token_request(self, form: dict[str, str]) -> dict[str, Any]:
        """POST to the token endpoint with client authentication and, with a DPoP key, a
        proof; retried once with the server's nonce on ``use_dpop_nonce`` (RFC 9449 §8)."""
        meta = self._meta()
        for attempt in range(2):
            now = self._clock()
            body, headers = dict(form), {"Accept": "application/json"}
            if self._signer is not None:  # RFC 7523 §2.2; a fresh jti on every request
                body["client_id"] = self.client_id
                body["client_assertion_type"] = ASSERTION_TYPE
                body["client_assertion"] = client_assertion(
                    self._signer, self.client_id, meta.issuer, now
                )
            else:
                headers["Authorization"] = basic_auth(self.client_id, self._secret or "")
            if self._dpop is not None:
                headers["DPoP"] = dpop_proof(
                    self._dpop, "POST", meta.token_endpoint, now, nonce=self._nonce
                )
            response = self._send("POST", meta.token_endpoint, data=body, headers=headers)
            nonce = response.headers.get("DPoP-Nonce")
            if nonce and self._dpop is not None:
                self._nonce = nonce  # §8.2: a server may also rotate it on any response
            if response.is_success:
                return json_object(response, "token response")
            error = oauth_error(response)
            if attempt or error.error != "use_dpop_nonce" or not nonce or self._dpop is None:
                raise error
        raise AssertionError("unreachable")  # pragma: no cover

    def _api(
        self, method: str, path: str, *, timeout: float | None = None,
        error: type[ApiError] = ApiError, **kwargs: Any,
    ) -> dict[str, Any]:  # fmt: skip
        """One call to Tether's API with this agent's token: the JSON object it answers, or
        an ``error`` raised. After a 401 ``use_dpop_nonce`` the call is made once more with
        the nonce the server sent (RFC 9449 §9); after any other 401 the cached token is
        dropped and the call made once more with a fresh one (it was revoked, or its signing
        key retired)."""
        url = self.base_url + path
        if timeout is not None:
            kwargs["timeout"] = timeout
        nonce_retried = token_retried = False
        while True:
            headers = {"Accept": "application/json", **self.auth_headers(method, url)}
            try:
                response = self._http.request(
                    method, url, headers=headers, follow_redirects=False, **kwargs
                )
            except httpx.HTTPError as exc:
                raise error("unavailable", f"{method} {url} failed: {type(exc).__name__}: "
                            f"{exc}") from exc  # fmt: skip
            nonce = response.headers.get("DPoP-Nonce")
            if nonce and self._dpop is not None:
                self._resource_nonces[_origin(url)] = nonce  # used by the next proof
            if response.status_code != 401:
                break
            if nonce and self._dpop is not None and not nonce_retried and _asks_for_nonce(response):
                nonce_retried = True
                continue
            if token_retried:
                break
            self.invalidate()
            token_retried = True
        if response.is_success:
            try:
                body = response.json()
            except ValueError:
                body = None
            if isinstance(body, dict):
                return body
        raise api_error(response, error)

    def _meta(self) -> _Metadata:
        with self._meta_lock:
            if self._metadata is None:
                url = self.base_url + _WELL_KNOWN
                response = self._send("GET", url, headers={"Accept": "application/json"})
                doc, endpoint = parse_metadata(response, self.base_url)
                self._metadata = _Metadata(self.base_url, endpoint, doc)
            return self._metadata

    def _send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            # Never follow a redirect: it would carry the credentials somewhere else.
            return self._http.request(method, url, follow_redirects=False, **kwargs)
        except httpx.HTTPError as exc:
            raise TokenError(
                "temporarily_unavailable", f"{method} {url} failed: {type(exc).__name__}: {exc}"
            ) from exc


def _jsonable(value: Any, depth: int = 0) -> Any:
    """``value`` as JSON can carry it: containers walked (bounded), other objects as their
    ``repr`` (a tool's arguments and results are whatever Python values it takes)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if depth >= 16:
        return "[too deep]"
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v, depth + 1) for v in value]
    if isinstance(value, bytes):
        return f"[{len(value)} bytes]"
    return repr(value)[:1000]


def _hidden(value: Any, secrets: list[str]) -> Any:
    """``value`` with every secret value cut out of its strings."""
    if not secrets:
        return value
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, "[redacted]")
        return value
    if isinstance(value, dict):
        return {_hidden(k, secrets): _hidden(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_hidden(v, secrets) for v in value]
    return value
