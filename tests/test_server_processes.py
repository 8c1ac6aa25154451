"""The real server: several worker processes on one database never fork the chain."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import Backend
from tests.serverproc import http_client, running_server

pytestmark = pytest.mark.slow


def test_two_workers_concurrent_writers_keep_one_chain(backend: Backend, tmp_path: Path) -> None:
    with running_server(backend, tmp_path, workers=2) as (url, _env):
        token = (tmp_path / ".tether" / "admin.token").read_text().strip()
        headers = {"Authorization": f"Bearer {token}"}

        def work(i: int) -> list[int]:
            codes = []
            with http_client(base_url=url, headers=headers, timeout=30) as c:
                for j in range(10):
                    r = c.post(
                        "/v1/agents",
                        json={
                            "name": f"w{i}-{j}",
                            "owner": "admin",
                            "purpose": "load",
                            "risk_tier": "minimal",
                        },
                    )
                    codes.append(r.status_code)
                    if r.status_code == 201 and j % 2 == 0:
                        aid = r.json()["id"]
                        codes.append(
                            c.post(f"/v1/agents/{aid}/suspend", json={"reason": "x"}).status_code
                        )
            return codes

        with ThreadPoolExecutor(8) as pool:
            codes = [c for chunk in pool.map(work, range(8)) for c in chunk]
        assert set(codes) == {200, 201}
        writes = len(codes)
        with http_client(base_url=url, headers=headers, timeout=60) as c:
            result = c.get("/v1/audit/verify").json()
            assert result["ok"] is True, result
            assert result["checked"] == writes + 2  # + system.bootstrapped and key.created
            seqs = []
            cursor = None
            while True:
                page = c.get("/v1/audit/events", params={"limit": 1000, "cursor": cursor}).json()
                seqs += [e["seq"] for e in page["items"]]
                cursor = page["next_cursor"]
                if not cursor:
                    break
            assert seqs == list(range(1, writes + 3))
            metrics = c.get("/metrics").text
            # Counters from both worker processes are merged (prometheus multiprocess mode).
            created = [
                line
                for line in metrics.splitlines()
                if line.startswith('tether_ledger_events_appended_total{type="agent.created"}')
            ]
            assert created == [
                f'tether_ledger_events_appended_total{{type="agent.created"}} {float(8 * 10)}'
            ]
            assert 'route="/v1/agents",status="201"' in metrics
            assert c.get("/readyz").json()["status"] == "ready"
