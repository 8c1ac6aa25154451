"""Propagation is pushed and costs what changed (issue 12, "Kill switch everywhere", item 2).

A worker applying a change reads the changed agents in one batch and sets their views in the
map it holds — never a copy of the registry — whether one agent changed or a thousand were
killed at once; and the change reaches every worker of the server at once: on PostgreSQL by
NOTIFY, on SQLite through the wake-up pipes beside the database, the poll only a safety net.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx2 as httpx
import orjson
import pytest
from sqlalchemy import Engine, create_engine, event, insert, text

from tests.conftest import PG_URL, Backend
from tests.serverproc import http_client, running_server
from tether.agents import directory
from tether.agents.models import AgentRoleRow, AgentRow
from tether.agents.schemas import AgentCreate
from tether.agents.values import spiffe_id
from tether.container import Services
from tether.credentials import runtime as credentials_runtime
from tether.credentials.runtime import RevokedTokens
from tether.ids import IdPrefix, new_ids
from tether.policy import runtime as policy_runtime
from tether.policy.entities import AgentView
from tether.policy.runtime import AgentSection
from tether.principals import Principal, Role
from tether.runtime.changes import channel
from tether.runtime.snapshot import Runtime
from tether.runtime.wakeups import FifoWakeups
from tether.users.runtime import UserSection

REGISTRY = 3_000  # agents beside the ones a test changes
BURST = 1_000
# The server's poll is 10 s (the most the settings allow): a worker that learns of a change
# sooner than this was pushed.
PUSH_BOUND = 2.0


# -- helpers -----------------------------------------------------------------------------------
def _admin(services: Services, admin_token: str) -> Principal:
    return services.users.authenticate(admin_token)


def _bulk_agents(services: Services, admin: Principal, count: int, *, parent: str | None = None
                 ) -> list[str]:  # fmt: skip
    """``count`` agents in one insert, each a copy of one the service made (with a role);
    children of ``parent`` if given. The service would write one transaction each."""
    model = services.agents.create(admin, AgentCreate.model_validate(
        {"name": "model", "owner": "admin", "purpose": "bulk", "risk_tier": "minimal",
         "roles": ["bulk.role"]}
    ))  # fmt: skip
    with services.db.read() as s:
        row = s.get(AgentRow, model.id)
        assert row is not None
        template = {c.name: getattr(row, c.name) for c in AgentRow.__table__.columns}
    ids = new_ids(IdPrefix.AGENT, count, now_ms=int(time.time() * 1000))
    domain = services.settings.trust_domain
    rows = [{**template, "id": i, "spiffe_id": spiffe_id(domain, i), "name": f"bulk-{n}"}
            for n, i in enumerate(ids)]  # fmt: skip
    if parent is not None:
        for r in rows:
            r.update(parent_id=parent, lineage=orjson.dumps([parent]).decode(),
                     lineage_kind="spawned")  # fmt: skip
    with services.db.write() as s:
        s.execute(insert(AgentRow), rows)
        s.execute(insert(AgentRoleRow), [{"agent_id": i, "role": "bulk.role"} for i in ids])
    return ids


def _follower(services: Services) -> tuple[Runtime, AgentSection]:
    """A worker of another process: it learns only from the change feed when it syncs."""
    follower = Runtime(services.db, services.clock)
    agents = AgentSection()
    follower.register(agents)
    services.db.after_change.remove(follower.changed)
    follower.load()
    return follower, agents


@contextmanager
def _statements() -> Iterator[list[str]]:
    """The SQL this thread sends to any database while inside (other threads' ignored)."""
    mine = threading.get_ident()
    seen: list[str] = []

    def listen(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if threading.get_ident() == mine:
            seen.append(statement)

    event.listen(Engine, "before_cursor_execute", listen)
    try:
        yield seen
    finally:
        event.remove(Engine, "before_cursor_execute", listen)


@contextmanager
def _reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[int, int]]]:
    """Each ``directory.records`` call with ids: (how many asked, how many read)."""
    calls: list[tuple[int, int]] = []
    real = directory.records

    def spy(s: Any, agent_ids: Any = None) -> list[directory.AgentRecord]:
        out = real(s, agent_ids)
        calls.append((-1 if agent_ids is None else len(agent_ids), len(out)))
        return out

    monkeypatch.setattr(directory, "records", spy)
    yield calls


@contextmanager
def _views_built(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    built: list[str] = []
    real = policy_runtime.view_of

    def counting(record: directory.AgentRecord) -> AgentView:
        built.append(record.id)
        return real(record)

    monkeypatch.setattr(policy_runtime, "view_of", counting)
    yield built


# -- applying costs what changed ---------------------------------------------------------------
def test_one_change_builds_one_view_into_the_map_it_holds(
    services: Services, admin_token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin = _admin(services, admin_token)
    ids = _bulk_agents(services, admin, REGISTRY)
    follower, agents = _follower(services)
    held = agents.views
    assert len(held) > REGISTRY
    services.agents.suspend(admin, ids[7], reason="one change")
    with _reads(monkeypatch) as reads, _views_built(monkeypatch) as built, _statements() as sql:
        follower.sync()
    assert agents.views is held  # the map is changed in place, never copied
    assert held[ids[7]].status == "suspended"
    assert built == [ids[7]]
    assert reads == [(1, 1)]
    assert len(sql) <= 6, sql  # the feed, then the agent, its roles and supervisors
    assert follower.last_seq == services.runtime.last_seq


def test_a_burst_of_a_thousand_kills_is_applied_in_one_pass(
    services: Services, admin_token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    admin = _admin(services, admin_token)
    _bulk_agents(services, admin, REGISTRY)
    root = services.agents.create(admin, AgentCreate.model_validate(
        {"name": "root", "owner": "admin", "purpose": "burst", "risk_tier": "minimal"}
    )).id  # fmt: skip
    children = _bulk_agents(services, admin, BURST, parent=root)
    follower, agents = _follower(services)
    held = agents.views
    killed = services.agents.kill(admin, root, reason="burst")["revoked"]
    assert set(killed) == {root, *children}
    with _reads(monkeypatch) as reads, _views_built(monkeypatch) as built, _statements() as sql:
        follower.sync()
    assert agents.views is held
    assert {held[i].status for i in killed} == {"revoked"}
    assert sorted(built) == sorted(killed)
    assert reads == [(BURST + 1, BURST + 1)]  # one batch for the thousand, not one per agent
    assert len(sql) <= 6, sql  # as many statements as for one change
    assert follower.last_seq == services.runtime.last_seq


def test_revoked_tokens_are_added_to_the_map_they_hold(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = RevokedTokens()
    with services.db.read() as s:
        tokens.load(s, 0)
        held = tokens.jtis
        monkeypatch.setattr(credentials_runtime._store, "revoked_among",
                            lambda _s, jtis: dict.fromkeys(jtis, 2_000_000))  # fmt: skip
        tokens.apply(s, {"token": {"jti_a", "jti_b"}}, 0)
    assert tokens.jtis is held
    assert sorted(tokens.all()) == [("jti_a", 2_000_000), ("jti_b", 2_000_000)]


def test_a_new_user_is_added_to_the_map_held(services: Services, admin_token: str) -> None:
    services.runtime.load()
    known = next(s for s in services.runtime.sections if isinstance(s, UserSection))
    held = known.views
    user = services.users.create(_admin(services, admin_token), username="later",
                                 role=Role.SUPERVISOR)  # fmt: skip
    assert known.views is held
    assert held[user.id].username == "later"


# -- SQLite's wake-up pipes --------------------------------------------------------------------
def test_a_ring_wakes_every_other_listener_and_clears_dead_pipes(tmp_path: Path) -> None:
    where = tmp_path / "tether.db.wake"
    one, two, ringer = FifoWakeups(where), FifoWakeups(where), FifoWakeups(where)
    assert ringer.ring() == 0  # nobody listens yet (no directory even)
    woke = [threading.Event(), threading.Event()]
    assert one.listen(woke[0].set)
    assert two.listen(woke[1].set)
    os.mkfifo(where / "gone-1.fifo")  # a process that died holding it
    (where / "stray.fifo").write_text("")  # not a pipe: left alone, never written
    try:
        assert ringer.ring() == 2
        assert woke[0].wait(5)
        assert woke[1].wait(5)
        assert not (where / "gone-1.fifo").exists()
        assert (where / "stray.fifo").read_text() == ""
        woke[1].clear()
        assert two.ring() == 1  # not itself
        assert woke[0].wait(5)
        one.close()
        assert ringer.ring() == 1
        assert sorted(p.name for p in where.iterdir()) == sorted(
            [two._name, "stray.fifo"]  # type: ignore[list-item]
        )
    finally:
        one.close()
        two.close()


def test_a_sqlite_runtime_listens_beside_its_database_and_rings_after_commit(
    services: Services, admin_token: str
) -> None:
    runtime = services.runtime
    if services.db.dialect != "sqlite":
        assert runtime.wakeups is None  # PostgreSQL: NOTIFY at commit
        return
    assert runtime.wakeups is not None
    database = services.settings.resolved_database_url.removeprefix("sqlite:///")
    assert runtime.wakeups.directory == Path(f"{database}.wake")
    other = FifoWakeups(runtime.wakeups.directory)  # another worker process
    woke = threading.Event()
    assert other.listen(woke.set)
    try:
        services.agents.create(_admin(services, admin_token), AgentCreate.model_validate(
            {"name": "rung", "owner": "admin", "purpose": "ring", "risk_tier": "minimal"}
        ))  # fmt: skip
        assert woke.wait(5)
    finally:
        other.close()


# -- a real server: the other worker is told at once -------------------------------------------
def _decide(url: str, headers: dict[str, str], agent: str) -> bool:
    body = {"subject": {"type": "agent", "id": agent}, "action": {"name": "tool.call"},
            "resource": {"type": "Tool", "id": "search"}}  # fmt: skip
    with http_client(base_url=url, headers=headers, timeout=30) as c:  # a new connection
        r = c.post("/access/v1/evaluation", json=body)
    assert r.status_code == 200, r.text
    return bool(r.json()["decision"])


def _until_every_answer(url: str, headers: dict[str, str], agent: str, wanted: bool) -> float:
    """Rounds of 24 concurrent decisions on fresh connections (spread over the workers) until
    one round answers ``wanted`` throughout; returns the seconds it took. Fails at
    ``PUSH_BOUND``."""
    start = time.monotonic()
    while True:
        late = time.monotonic() - start > PUSH_BOUND
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: _decide(url, headers, agent), range(24)))
        if set(answers) == {wanted}:
            return time.monotonic() - start
        assert not late, f"after {PUSH_BOUND} s some worker still answers {not wanted}"
        time.sleep(0.02)


def _listeners(backend: Backend, tmp_path: Path) -> int:
    """How many worker processes hold their push channel: pipes beside the SQLite file, or
    LISTEN sessions on the schema's PostgreSQL channel."""
    if backend.schema is None:
        return len(list((tmp_path / "tether.db.wake").glob("*.fifo")))
    engine = create_engine(PG_URL, pool_size=1)
    try:
        with engine.connect() as conn:
            q = text("SELECT count(*) FROM pg_stat_activity WHERE query = :q")
            return int(conn.execute(q, {"q": f'LISTEN "{channel(backend.schema)}"'}).scalar_one())
    finally:
        engine.dispose()


def _syncs_with_changes(c: httpx.Client) -> float:
    """Syncs that applied changes, summed over the workers (Prometheus multiprocess)."""
    found = re.search(r'^tether_runtime_syncs_total\{result="changes"\} (\S+)$',
                      c.get("/metrics").text, re.MULTILINE)  # fmt: skip
    return float(found.group(1)) if found else 0.0


def _wait(check: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.mark.slow
def test_every_change_reaches_the_other_worker_before_any_poll(
    backend: Backend, tmp_path: Path
) -> None:
    # The poll every 10 s (the most allowed), and never stale meanwhile: only a push explains
    # a worker that learns of a change within PUSH_BOUND.
    (tmp_path / "tether.toml").write_text(
        "runtime_poll_seconds = 10\nruntime_stale_seconds = 600\n"
    )
    with running_server(backend, tmp_path, workers=2) as (url, _env):
        assert _wait(lambda: _listeners(backend, tmp_path) == 2, 30), "both workers listening"
        token = (tmp_path / ".tether" / "admin.token").read_text().strip()
        headers = {"Authorization": f"Bearer {token}"}
        with http_client(base_url=url, headers=headers, timeout=30) as c:

            def by_both(write: Callable[[], httpx.Response]) -> None:
                """One write through one worker, then one sync that applied it in each worker
                (each applies a commit's rows exactly once): the other worker was pushed."""
                before = _syncs_with_changes(c)
                write().raise_for_status()
                applied = _wait(lambda: _syncs_with_changes(c) >= before + 2, PUSH_BOUND)
                assert applied, (before, _syncs_with_changes(c))

            spec = {"name": "pushed", "owner": "admin", "purpose": "push", "risk_tier": "minimal"}
            made: list[str] = []
            by_both(lambda: _keep_id(c.post("/v1/agents", json=spec), made))
            calls = '@id("calls") permit(principal, action == Action::"tool.call", resource);'
            by_both(lambda: c.put("/v1/policies", json={"policies": calls}))
            _until_every_answer(url, headers, made[0], wanted=True)
            by_both(lambda: c.post(f"/v1/agents/{made[0]}/suspend", json={"reason": "push"}))
        _until_every_answer(url, headers, made[0], wanted=False)


def _keep_id(response: httpx.Response, into: list[str]) -> httpx.Response:
    if response.status_code == 201:
        into.append(response.json()["id"])
    return response
