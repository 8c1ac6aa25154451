"""The verified content of an RFC 9068 access token, typed.

Claims per RFC 9068 §2.2: ``iss``, ``exp``, ``aud``, ``sub``, ``client_id``, ``iat``, ``jti``,
and ``scope`` (RFC 8693 §4.2 syntax: space-separated). Tether adds ``nbf``, the delegation
chain ``act`` (RFC 8693 §4.1) and the DPoP binding ``cnf.jkt`` (RFC 9449 §6.1).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tether.sdk.errors import InvalidToken

# Tether caps delegation depth when it issues tokens; a deeper chain here is not one of ours.
_MAX_ACT_DEPTH = 32


@dataclass(frozen=True, slots=True)
class AccessTokenClaims:
    """An access token that passed every check of :func:`tether.sdk.verify_access_token`.

    ``aud`` is always a tuple, whether the token carried a string or a list. Times are
    NumericDate seconds. ``act`` is the RFC 8693 ``act`` claim as issued; per RFC 8693 §4.1
    only the top-level claims and the outermost actor may drive access decisions, nested
    actors are informational (see :attr:`chain`). ``raw`` is the whole payload, for claims
    this class does not model; treat it as read-only.
    """

    sub: str
    client_id: str
    scopes: frozenset[str]
    aud: tuple[str, ...]
    iss: str
    exp: int
    iat: int
    jti: str
    nbf: int | None = None
    act: dict[str, Any] | None = None
    cnf_jkt: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def chain(self) -> tuple[str, ...]:
        """Every actor's ``sub``, from the outermost ``act`` (the current actor) inward.

        Empty when the token carries no delegation. For ``{"sub": "B", "act": {"sub": "A"}}``
        this is ``("B", "A")``: B acts now, A acted earlier in the chain.
        """
        subs: list[str] = []
        node = self.act
        while node is not None:
            subs.append(node["sub"])
            node = node.get("act")
        return tuple(subs)

    @property
    def actor(self) -> str | None:
        """The current actor (the outermost ``act.sub``), or None without delegation."""
        return self.act["sub"] if self.act is not None else None

    @property
    def dpop_bound(self) -> bool:
        """True when the token is sender-constrained to a DPoP key (RFC 9449 §6)."""
        return self.cnf_jkt is not None

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> AccessTokenClaims:
        """Type the claims of a payload whose signature and times were already checked.

        Raises :class:`InvalidToken` when a claim this class models is missing or has the
        wrong type; it checks neither signature, issuer, audience nor times.
        """
        raw = dict(payload)
        return cls(
            sub=_required_str(raw, "sub"),
            client_id=_required_str(raw, "client_id"),
            scopes=_scopes(raw.get("scope")),
            aud=_audience(raw.get("aud")),
            iss=_required_str(raw, "iss"),
            exp=_numeric_date(raw, "exp"),
            iat=_numeric_date(raw, "iat"),
            jti=_required_str(raw, "jti"),
            nbf=_numeric_date(raw, "nbf") if raw.get("nbf") is not None else None,
            act=_act(raw.get("act")),
            cnf_jkt=_cnf_jkt(raw.get("cnf")),
            raw=raw,
        )


def _required_str(raw: Mapping[str, Any], name: str) -> str:
    value = raw.get(name)
    if not isinstance(value, str) or not value:
        raise InvalidToken(f"the access token has no valid '{name}' claim")
    return value


def _numeric_date(raw: Mapping[str, Any], name: str) -> int:
    value = raw.get(name)
    # bool is an int subclass; NaN and infinities were refused by the claims registry.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidToken(f"the access token has no valid '{name}' claim")
    return int(value)


def _scopes(value: object) -> frozenset[str]:
    if value is None:
        return frozenset()
    if not isinstance(value, str):
        raise InvalidToken("the 'scope' claim must be a space-separated string")
    # RFC 6749 §3.3: scope tokens are separated by a single space (%x20) and contain none.
    return frozenset(token for token in value.split(" ") if token)


def _audience(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise InvalidToken("the 'aud' claim must be a string or a list of strings")


def _act(value: object) -> dict[str, Any] | None:
    """Check the shape of an RFC 8693 §4.1 chain: objects with a string ``sub``, nested."""
    if value is None:
        return None
    node = value
    for _ in range(_MAX_ACT_DEPTH):
        if not isinstance(node, dict) or not isinstance(node.get("sub"), str) or not node["sub"]:
            raise InvalidToken("the 'act' claim is malformed: every actor needs a 'sub'")
        node = node.get("act")
        if node is None:
            assert isinstance(value, dict)
            return value
    raise InvalidToken(f"the 'act' chain is deeper than {_MAX_ACT_DEPTH} actors")


def _cnf_jkt(value: object) -> str | None:
    """The RFC 9449 §6.1 thumbprint; any other confirmation method is refused.

    A token bound by a method this SDK cannot check (say mTLS, ``x5t#S256`` of RFC 8705)
    would otherwise be accepted as a plain bearer token, which defeats the binding.
    """
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidToken("the 'cnf' claim must be an object")
    jkt = value.get("jkt")
    if not isinstance(jkt, str) or not jkt:
        raise InvalidToken("the token is bound by a confirmation method other than DPoP 'jkt'")
    return jkt
