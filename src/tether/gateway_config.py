"""The MCP gateway's upstream servers, as configuration declares them (``tether.toml``'s
``[[gateway_upstreams]]`` tables, or ``TETHER_GATEWAY_UPSTREAMS`` as a JSON list).

Each upstream has a ``name`` (its tools and prompts appear as ``<name>.<tool>``), either a
streamable-HTTP ``url`` or a stdio ``command``, how the gateway authenticates to it (``auth``:
none, a static header whose value is a broker-only secret, or an OAuth client credential whose
secret is one), and a ``timeout_seconds`` per call. The inbound token never goes upstream: a
request to an upstream carries only what ``auth`` says.

``tools`` says, per tool, what undoes it — ``[gateway_upstreams.tools.refund]`` with ``undo =
"cancel_refund"`` and ``args = { refund_id = "{result.refund_id}" }`` — or that nothing does
(``irreversible = true``); checked here for form, and against the upstream's tool schemas
when it connects (:mod:`tether.compensation`). It also says what a tool touches, for
sequence-aware policies: ``labels = ["pii"]``, the data labels of what it returns, and
``egress = true``, that it sends data outside the organisation. A call is decided with them
(``resource.labels``, ``resource.egress``), and an allowed one adds its labels to its
session's (``context.session.labels``), so a policy can refuse egress after PII was read.
``resource_labels`` gives the data labels of every resource the upstream serves
(``resources/read``: ``resource.labels`` on ``Resource::"<uri>"``, and the session's).

``prefix = false`` shows one upstream's tools and prompts under their own names (``search``,
not ``<name>.search``): for a client, or a test suite, that calls fixed names. At most one
upstream may drop its prefix (two would collide); a prefixed upstream's ``<name>.`` takes
precedence over an unprefixed tool named alike. Policy and the ledger still name every tool
``<name>.<tool>`` (``Tool::"<name>.<tool>"``), prefix or not.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictStr,
    StringConstraints,
    model_validator,
)

from tether.compensation import Compensation, CompensationError, parse_value

NAME_PATTERN = r"^[a-z][a-z0-9_-]{0,31}$"
SecretReader = Callable[[str], str]  # a broker-only secret's value, by name
_SECRET = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.\-]{1,128}$")]
_HEADER = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9-]{1,64}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NoAuth(_Strict):
    kind: Literal["none"] = "none"


class HeaderAuth(_Strict):
    """A static header (``X-Api-Key: <value>``; ``prefix`` e.g. ``"Bearer "``), its value a
    secret Tether keeps (best broker-only: never returned to an agent)."""

    kind: Literal["header"]
    header: _HEADER
    secret: _SECRET
    prefix: Annotated[str, StringConstraints(max_length=32, pattern=r"^[\x20-\x7e]*$")] = ""

    @model_validator(mode="after")
    def _not_hop_by_hop(self) -> HeaderAuth:
        if self.header.lower() in {"host", "content-length", "connection", "transfer-encoding"}:
            raise ValueError(f"header {self.header!r} cannot carry a credential")
        return self


class ClientCredentialsAuth(_Strict):
    """An OAuth 2 client credential (RFC 6749 §4.4): the gateway gets an access token from
    ``token_url`` with ``client_id`` and the secret named ``client_secret`` and sends it as a
    Bearer token; refreshed before it expires."""

    kind: Literal["client_credentials"]
    token_url: str
    client_id: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    client_secret: _SECRET
    scope: Annotated[str, StringConstraints(max_length=500)] | None = None

    @model_validator(mode="after")
    def _https_or_local(self) -> ClientCredentialsAuth:
        _check_url(self.token_url, "token_url")
        return self


Auth = Annotated[NoAuth | HeaderAuth | ClientCredentialsAuth, Field(discriminator="kind")]


_TOOL = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.\-]{1,128}$")]
LABEL_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
MAX_LABELS = 32
_LABEL = Annotated[StrictStr, StringConstraints(pattern=LABEL_PATTERN)]


def _unique(labels: list[str]) -> list[str]:
    twice = sorted({x for x in labels if labels.count(x) > 1})
    if twice:
        raise ValueError(f"{', '.join(twice)} given more than once")
    return labels


# A tool's or an upstream's data labels: at most 32, none twice (kept in order).
Labels = Annotated[list[_LABEL], Field(max_length=MAX_LABELS), AfterValidator(_unique)]


class ToolRule(_Strict):
    """What undoes one of an upstream's tools: ``undo`` (a tool of the same upstream) called
    with ``args`` (literals, ``"{args.<name>}"``, ``"{result.<field>}"``:
    :mod:`tether.compensation`); or ``irreversible = true``: nothing undoes it. And what it
    touches: ``labels``, the data labels of what it returns (``["pii"]``), and ``egress``,
    whether it sends data outside the organisation."""

    undo: _TOOL | None = None
    args: dict[str, Any] = Field(default_factory=dict)
    irreversible: bool = False
    labels: Labels = Field(default_factory=list)
    egress: StrictBool = False

    @model_validator(mode="after")
    def _undo_or_irreversible(self) -> ToolRule:
        if self.undo is not None and self.irreversible:
            raise ValueError("a tool with an undo is not irreversible: give one or the other")
        if self.undo is None and self.args:
            raise ValueError("args without undo: name the tool that undoes this one")
        for name, value in self.args.items():
            try:
                parse_value(value, f"args.{name}")
            except CompensationError as exc:
                raise ValueError(str(exc)) from None
        return self

    def compensation(self, tool: str) -> Compensation | None:
        if self.undo is None:
            return None
        parsed = {n: parse_value(v, f"args.{n}") for n, v in self.args.items()}
        return Compensation(tool, self.undo, parsed)


class Upstream(_Strict):
    name: Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
    url: str | None = None
    command: Annotated[list[str], Field(min_length=1, max_length=64)] | None = None
    env: dict[str, str] = Field(default_factory=dict)  # for a stdio command
    auth: Auth = Field(default_factory=NoAuth)
    timeout_seconds: Annotated[float, Field(gt=0, le=600)] = 30.0
    prefix: bool = True  # False: tools and prompts under their own names (at most one upstream)
    tools: dict[_TOOL, ToolRule] = Field(default_factory=dict)  # compensations, labels, by tool
    resource_labels: Labels = Field(default_factory=list)  # of every resource it serves

    @model_validator(mode="after")
    def _one_transport(self) -> Upstream:
        if (self.url is None) == (self.command is None):
            raise ValueError(f"upstream {self.name!r}: give either url or command, not both")
        if self.url is not None:
            _check_url(self.url, "url")
        if self.command is not None and self.auth.kind != "none":
            raise ValueError(f"upstream {self.name!r}: a stdio command takes no auth (use env)")
        return self


def _check_url(url: str, field: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.netloc or parts.fragment:
        raise ValueError(f"{field} must be an absolute http(s) URL without a fragment")


def check_unique(upstreams: list[Upstream]) -> list[Upstream]:
    """Unique names, and at most one upstream without a prefix (two would share one namespace)."""
    names = [u.name for u in upstreams]
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"gateway upstream names must be unique: {', '.join(dupes)}")
    bare = [u.name for u in upstreams if not u.prefix]
    if len(bare) > 1:
        raise ValueError(f"at most one gateway upstream may have prefix = false: {', '.join(bare)}")
    return upstreams
