"""Listing: every filter combination and page size gives exactly the expected agents, in order,
for an admin and for a supervisor (who sees what they own merged with what they supervise)."""

from __future__ import annotations

import itertools
import random
from typing import Any

from tether.agents.schemas import AgentCreate
from tether.container import Services
from tether.principals import SYSTEM, Role


def _all_pages(svc: Services, actor: Any, limit: int, **filters: Any) -> list[str]:
    ids: list[str] = []
    cursor = None
    while True:
        page = svc.agents.list(actor, cursor=cursor, limit=limit, **filters)
        assert len(page.items) <= limit
        ids += [a.id for a in page.items]
        cursor = page.next_cursor
        if cursor is None:
            return ids


def test_filters_and_pagination_match_a_plain_scan(services: Services) -> None:
    rnd = random.Random(7)
    sup = services.users.create(SYSTEM, username="sup", role=Role.SUPERVISOR)
    other = services.users.create(SYSTEM, username="other", role=Role.SUPERVISOR)
    me = sup.principal()
    for i in range(36):
        owner = rnd.choice([sup.id, other.id, "admin"])
        sups = [sup.id] if owner != sup.id and rnd.random() < 0.4 else []
        agent = services.agents.create(
            SYSTEM,
            AgentCreate(
                name=f"a{i}",
                owner=owner,
                purpose="p",
                risk_tier=rnd.choice(["minimal", "limited", "high"]),
                roles=rnd.sample(["r1", "r2", "r3"], rnd.randint(0, 2)),
                supervisors=sups,
            ),
        )
        if rnd.random() < 0.3:
            services.agents.suspend(SYSTEM, agent.id, reason="x")
    everything = services.agents.list(SYSTEM, limit=500).items
    assert [a.id for a in everything] == sorted(a.id for a in everything)
    visible = {a.id for a in everything if a.owner == sup.id or sup.id in a.supervisors}
    assert 0 < len(visible) < len(everything)

    combos = itertools.product(
        [None, "active", "suspended"], [None, "r1", "r3"], [None, "high"], [None, "sup", "other"]
    )
    for status, role, tier, owner in combos:
        owner_id = {"sup": sup.id, "other": other.id}.get(owner or "")
        expected = [
            a.id
            for a in everything
            if (status is None or a.status == status)
            and (role is None or role in a.roles)
            and (tier is None or a.risk_tier == tier)
            and (owner_id is None or a.owner == owner_id)
        ]
        filters = {"status": status, "role": role, "risk_tier": tier, "owner": owner}
        for limit in (1, 4, 500):
            assert _all_pages(services, SYSTEM, limit, **filters) == expected, (filters, limit)
            mine = [a for a in expected if a in visible]
            assert _all_pages(services, me, limit, **filters) == mine, (filters, limit)
