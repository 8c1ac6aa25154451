"""The authority and liveness rules (``tether.agents.authority``), as tables of cases.

Every domain asks these two functions — the registry, approvals, decisions, the token grants
— so their whole truth table is pinned here, without a database.
"""

from __future__ import annotations

import pytest

from tether.agents.authority import (
    Act,
    Liveness,
    Stewards,
    allows,
    chain_problem,
    is_live,
    reads_stewards,
)
from tether.agents.authority import require as require_authority
from tether.errors import Forbidden
from tether.principals import SYSTEM, Principal, Role

ADMIN = Principal("user", "usr_admin", "admin", Role.ADMIN)
OWNER = Principal("user", "usr_owner", "olga", Role.SUPERVISOR)
SUPERVISOR = Principal("user", "usr_sup", "sam", Role.SUPERVISOR)
STRANGER = Principal("user", "usr_other", "xena", Role.SUPERVISOR)
AUDITOR = Principal("user", "usr_aud", "eve", Role.AUDITOR)
AGENT = Principal("agent", "agt_self", "bot")
OWNER_AS_AGENT = Principal("agent", "usr_owner", "impostor")  # same id, not a human
STEWARDS = Stewards(owner="usr_owner", supervisors=frozenset({"usr_sup"}))

# (who, read, operate, manage)
TABLE = [
    (SYSTEM, True, True, True),
    (ADMIN, True, True, True),
    (OWNER, True, True, True),
    (SUPERVISOR, True, True, False),
    (STRANGER, False, False, False),
    (AUDITOR, True, False, False),
    (AGENT, False, False, False),
    (OWNER_AS_AGENT, False, False, False),
]


@pytest.mark.parametrize(("who", "read", "operate", "manage"), TABLE,
                         ids=[t[0].name for t in TABLE])  # fmt: skip
def test_authority_table(who: Principal, read: bool, operate: bool, manage: bool) -> None:
    assert allows(who, Act.READ, STEWARDS) is read
    assert allows(who, Act.OPERATE, STEWARDS) is operate
    assert allows(who, Act.MANAGE, STEWARDS) is manage


@pytest.mark.parametrize("who", [t[0] for t in TABLE], ids=[t[0].name for t in TABLE])
def test_stewards_are_read_only_for_whom_they_can_change_the_answer(who: Principal) -> None:
    """A caller may skip reading an agent's supervisors when :func:`reads_stewards` says so:
    then no stewards whatever change what :func:`allows` answers."""
    others = [Stewards(owner="usr_nobody"), Stewards(owner=who.id), STEWARDS,
              Stewards(owner="usr_nobody", supervisors=frozenset({who.id}))]  # fmt: skip
    answers = {tuple(allows(who, act, st) for act in Act) for st in others}
    assert reads_stewards(who) is (len(answers) > 1)


@pytest.mark.parametrize(
    ("who", "act", "message"),
    [
        (AUDITOR, Act.OPERATE, "auditors have read-only access"),
        (SUPERVISOR, Act.MANAGE, "you do not own agent agt_x"),
        (STRANGER, Act.OPERATE, "you do not supervise agent agt_x"),
        (AGENT, Act.READ, "not allowed"),
    ],
)
def test_refusals_say_why(who: Principal, act: Act, message: str) -> None:
    with pytest.raises(Forbidden) as refused:
        require_authority(who, act, "agt_x", STEWARDS)
    assert refused.value.message == message


def test_an_unknown_agent_is_refused_like_someone_elses_except_to_an_admin() -> None:
    with pytest.raises(Forbidden):
        require_authority(SUPERVISOR, Act.OPERATE, "agt_x", None)
    require_authority(ADMIN, Act.OPERATE, "agt_x", None)  # the caller reports "not found"


NOW = 1_000_000_000
# (status, expires_at, live)
LIVENESS = [
    ("active", None, True),
    ("active", NOW + 1, True),
    ("active", NOW, False),  # expires_at is the first instant it is no longer live
    ("active", NOW - 1, False),
    ("suspended", None, False),
    ("suspended", NOW + 1, False),
    ("revoked", None, False),
    ("retired", None, False),
    ("expired", None, False),
]


@pytest.mark.parametrize(("status", "expires_at", "live"), LIVENESS)
def test_liveness_table(status: str, expires_at: int | None, live: bool) -> None:
    assert is_live(Liveness(status, expires_at), NOW) is live


def test_a_missing_agent_is_not_live() -> None:
    assert is_live(None, NOW) is False


@pytest.mark.parametrize(
    ("chain", "problem"),
    [
        (["agt_a", "agt_b"], None),
        (["usr_h", "agt_a"], None),
        (["agt_a", "agt_gone"], "agent agt_gone in the delegation chain is not active"),
        (["agt_a", "agt_sus"], "agent agt_sus in the delegation chain is not active"),
        (["agt_old", "agt_a"], "agent agt_old in the delegation chain has expired"),
        (["usr_gone", "agt_a"], "the human in the delegation chain no longer exists"),
        # an agent's problem is named before a human's, whatever the order
        (["usr_gone", "agt_sus"], "agent agt_sus in the delegation chain is not active"),
    ],
)
def test_chain_table(chain: list[str], problem: str | None) -> None:
    agents = {
        "agt_a": Liveness("active"),
        "agt_b": Liveness("active", NOW + 60_000_000),
        "agt_sus": Liveness("suspended"),
        "agt_old": Liveness("active", NOW - 1),
    }
    assert chain_problem(chain, agents, {"usr_h"}, NOW) == problem
