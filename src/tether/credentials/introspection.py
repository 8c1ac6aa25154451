"""Who may introspect a token (RFC 7662 §2.1: the authorization server decides).

Introspection tells the caller who a token speaks for (``sub``, ``client_id``, ``act``), what
it may do (``scope``) and where (``aud``). Any authenticated caller used to get that for any
token it held; now only those with a reason to know do:

* a resource server: a client whose credential carries :data:`INTROSPECT_SCOPE` (within the
  agent's own scopes), or the client a token is addressed to (its agent id or SPIFFE id is in
  ``aud``);
* the token's own client (``client_id``);
* an admin.

Anyone else — another agent, a supervisor, an auditor — gets exactly ``{"active": false}``,
the answer for an unknown token, so the refusal tells them nothing either.
"""

from __future__ import annotations

from typing import Any

from tether.agents.values import spiffe_id
from tether.credentials.clients import AuthenticatedClient
from tether.principals import Principal

INTROSPECT_SCOPE = "tether:introspect"


def may_introspect(
    claims: dict[str, Any], caller: AuthenticatedClient | Principal, *, trust_domain: str
) -> bool:
    """Whether ``caller`` may learn what the token with these (verified) ``claims`` is."""
    if isinstance(caller, Principal):
        return caller.is_admin
    me = caller.agent.id
    if INTROSPECT_SCOPE in caller.scope_ceiling or claims.get("client_id") == me:
        return True
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    return me in audiences or spiffe_id(trust_domain, me) in audiences
