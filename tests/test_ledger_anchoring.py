"""Signed checkpoints outside the database (issue 10, item 3), end to end on every backend.

Someone who can edit the database can delete the ``audit_checkpoints`` rows, edit an event
and re-hash the chain to its end: the chain alone then verifies. So every signed checkpoint
is also appended to ``checkpoints.jsonl`` in the data dir (and POSTed to a witness URL when
one is configured), and verification holds the database to the newest of them and to the
checkpoint interval: a chain longer or older than the interval allows without a covering
checkpoint is reported.

Services here sign every 5 events; the fixture leaves 12 events, so checkpoints exist at
sizes 5 and 10, in the database and in the file.
"""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from tests.conftest import BOOTSTRAP_EVENTS, Api, admin_client
from tests.ledger_tampering import EVENTS, EVERY, small_ledger
from tests.ledger_tampering import create_agents as _create_agents
from tests.ledger_tampering import rewrite_from as _rewrite_from
from tests.ledger_tampering import tamper as _sql
from tests.ledger_tampering import verify as _verify
from tether.audit.chain import Checkpoint
from tether.audit.checkpoint_file import CheckpointFile
from tether.clock import FrozenClock
from tether.container import Services
from tether.errors import ConfigurationError
from tether.principals import SYSTEM


@pytest.fixture
def ledger(make_services: Callable[..., Services]) -> Services:
    return small_ledger(make_services)


@pytest.fixture
def lapi(ledger: Services) -> Iterator[Api]:
    with admin_client(ledger) as client:
        yield Api(client)


def _file(services: Services) -> Path:
    return services.settings.data_dir / "checkpoints.jsonl"


def _lines(services: Services) -> list[dict[str, Any]]:
    return [json.loads(line) for line in _file(services).read_text().splitlines()]


def _db_checkpoints(services: Services) -> list[dict[str, Any]]:
    with services.db.read() as s:
        return [cp.to_json() for cp in services.ledger.store.checkpoints(s)]


def _assert_problem(result: dict[str, Any], problem: str, first_bad_seq: int | None) -> None:
    assert result["ok"] is False, result
    assert (result["problem"], result.get("first_bad_seq")) == (problem, first_bad_seq), result
    assert result["message"]


# -- the file ----------------------------------------------------------------------------------


def test_every_signed_checkpoint_is_appended_to_the_file(ledger: Services, lapi: Api) -> None:
    path = _file(ledger)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert _lines(ledger) == _db_checkpoints(ledger)
    assert [line["size"] for line in _lines(ledger)] == [5, 10]
    assert set(_lines(ledger)[0]) == {"size", "head_hash", "time", "key_id", "signature"}
    forced = lapi.client.post("/v1/audit/checkpoints").json()  # forced: one more line
    assert _lines(ledger)[-1] == forced
    assert forced["size"] == EVENTS
    _create_agents(ledger, 3)  # crosses 15: the every-N rule signs, the file follows
    assert [line["size"] for line in _lines(ledger)] == [5, 10, EVENTS, 15]
    result = _verify(lapi)
    assert result["ok"] is True, result
    assert (result["external_checkpoints"], result["anchored_size"]) == (4, 15)
    assert (result["unanchored"], result["max_unanchored"]) == (0, EVERY - 1)


def test_timed_checkpoints_reach_the_file(make_services: Callable[..., Services]) -> None:
    clock = FrozenClock()
    services = make_services(clock=clock, checkpoint_every_seconds=30)
    assert _lines(services) == []  # nothing signed yet, nothing written
    cp = services.audit.checkpoint_tick()
    assert cp is not None
    assert _lines(services) == [cp.to_json()]


def test_a_rolled_back_checkpoint_never_reaches_the_file(ledger: Services) -> None:
    """The file is written after the commit: a checkpoint whose transaction failed would
    otherwise name a head the database never had, which verify must call tampering."""
    before = _lines(ledger)

    def sign_then_fail() -> None:
        with ledger.db.write() as s:
            assert ledger.ledger.force_checkpoint(s, now=ledger.clock.now()) is not None
            raise RuntimeError("the transaction fails after signing")

    with pytest.raises(RuntimeError):
        sign_then_fail()
    assert _lines(ledger) == before


def test_an_unwritable_checkpoint_file_stops_the_server_at_start(
    make_services: Callable[..., Services], tmp_path: Path
) -> None:
    (tmp_path / "data" / "checkpoints.jsonl").mkdir(parents=True)  # not a file we can append to
    with pytest.raises(ConfigurationError, match=r"checkpoints\.jsonl"):
        make_services()


def test_concurrent_appends_keep_whole_lines(tmp_path: Path) -> None:
    """Worker processes append with O_APPEND, one write a line: lines never interleave."""
    log = CheckpointFile(tmp_path / "checkpoints.jsonl")

    def writer(k: int) -> None:
        for i in range(50):
            log.append(
                Checkpoint(k * 1000 + i + 1, "ab" * 32, 1_767_225_600_000_000, "k" * 32, "s")
            )

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    read = log.read()
    assert read.bad_lines == []
    assert sorted(c.size for c in read.checkpoints) == sorted(
        k * 1000 + i + 1 for k in range(4) for i in range(50)
    )


# -- tampering the file catches ----------------------------------------------------------------


def test_deleted_checkpoints_and_a_rewritten_chain_are_caught_by_the_file(
    ledger: Services, lapi: Api
) -> None:
    """The attack of issue 10, item 3: no checkpoint rows left, event 7 edited, every hash
    after it recomputed. The database is self-consistent; the file's checkpoint 10 is not."""
    _sql(ledger, "DELETE FROM audit_checkpoints")
    _rewrite_from(ledger, lapi, 7)
    result = _verify(lapi)
    _assert_problem(result, "external_checkpoint_mismatch", 6)
    assert (result["after_seq"], result["through_seq"]) == (5, 10)


def test_deleted_checkpoints_file_and_a_rewritten_chain_are_caught_by_the_interval(
    ledger: Services, lapi: Api
) -> None:
    """With the file gone too, 12 events without a covering checkpoint are more than a
    server signing every 5 would ever leave."""
    _sql(ledger, "DELETE FROM audit_checkpoints")
    _file(ledger).unlink()
    _rewrite_from(ledger, lapi, 7)
    result = _verify(lapi)
    _assert_problem(result, "unanchored_tail", 1)
    assert (result["after_seq"], result["through_seq"]) == (0, EVENTS)
    assert (result["unanchored"], result["max_unanchored"]) == (EVENTS, EVERY - 1)


def test_checkpoints_deleted_from_the_database_alone_are_reported(
    ledger: Services, lapi: Api
) -> None:
    """Nothing rewritten, yet someone removed signed checkpoints: that is tampering too."""
    _sql(ledger, "DELETE FROM audit_checkpoints WHERE size = 5")
    result = _verify(lapi)
    _assert_problem(result, "db_checkpoints_missing", None)
    assert "5" in result["message"]


def test_a_deleted_checkpoint_file_is_reported(ledger: Services, lapi: Api) -> None:
    _file(ledger).unlink()
    _assert_problem(_verify(lapi), "external_checkpoints_missing", None)
    _file(ledger).write_text("")  # emptied is the same as deleted
    _assert_problem(_verify(lapi), "external_checkpoints_missing", None)


def test_a_forced_checkpoint_writes_the_newest_again(ledger: Services, lapi: Api) -> None:
    """After an upgrade (no file yet) an admin anchors the file with ``tether audit
    checkpoint``; an unchanged head is not signed again, its checkpoint is rewritten."""
    lapi.client.post("/v1/audit/checkpoints").raise_for_status()
    _file(ledger).unlink()
    again = lapi.client.post("/v1/audit/checkpoints").json()
    assert _lines(ledger) == [again]
    assert _verify(lapi)["ok"] is True


def test_a_truncated_ledger_is_caught_by_the_file(ledger: Services, lapi: Api) -> None:
    """Events 8..12 deleted with the checkpoint that covered them: the database looks like a
    complete ledger of 7 events; the file says it had 10."""
    _sql(ledger, "DELETE FROM audit_events WHERE seq > 7")
    _sql(ledger, "DELETE FROM audit_checkpoints WHERE size > 7")
    result = _verify(lapi)
    _assert_problem(result, "truncated", 8)
    assert (result["after_seq"], result["through_seq"]) == (7, 10)


def test_a_truncated_unanchored_tail_is_within_the_interval(ledger: Services, lapi: Api) -> None:
    """Events after the newest checkpoint can go unseen: verify says how many may."""
    intact = _verify(lapi)
    assert intact["ok"] is True, intact
    assert (intact["anchored_size"], intact["unanchored"]) == (10, 2)
    assert intact["max_unanchored"] == EVERY - 1
    assert intact["max_unanchored_seconds"] > 0
    _sql(ledger, "DELETE FROM audit_events WHERE seq > 10")
    result = _verify(lapi)
    assert result["ok"] is True, result
    assert (result["checked"], result["unanchored"]) == (10, 0)


@pytest.mark.parametrize("forgery", ["head_hash", "signature", "garbage"])
def test_a_forged_line_in_the_file_is_reported(ledger: Services, lapi: Api, forgery: str) -> None:
    lines = _file(ledger).read_text().splitlines()
    first = json.loads(lines[0])
    if forgery == "garbage":
        lines[0] = "{not json"
    else:
        first[forgery] = "A" * len(first[forgery])
        lines[0] = json.dumps(first)
    _file(ledger).write_text("\n".join(lines) + "\n")
    result = _verify(lapi)
    assert (result["ok"], result["problem"]) == (False, "external_checkpoint_invalid"), result


def test_a_torn_last_line_is_not_a_checkpoint(ledger: Services, lapi: Api) -> None:
    """A crash mid-append leaves a line without its newline: ignored, not tampering."""
    with _file(ledger).open("a") as f:
        f.write('{"size": 11, "head_')
    assert _verify(lapi)["ok"] is True


# -- the time rule -----------------------------------------------------------------------------


def test_events_older_than_the_interval_need_a_checkpoint(
    make_services: Callable[..., Services],
) -> None:
    clock = FrozenClock()
    services = make_services(clock=clock, checkpoint_every_seconds=60)
    within = services.audit.verify(SYSTEM)
    assert within.ok, within.to_json()
    limit = within.to_json()["max_unanchored_seconds"]
    assert limit >= 60
    clock.advance(limit)
    assert services.audit.verify(SYSTEM).ok  # at the limit: still allowed
    clock.advance(1)
    late = services.audit.verify(SYSTEM).to_json()
    _assert_problem(late, "unanchored_tail", 1)
    assert (late["after_seq"], late["through_seq"]) == (0, BOOTSTRAP_EVENTS)
    assert services.audit.checkpoint_tick() is not None  # what the maintenance loop does
    assert services.audit.verify(SYSTEM).ok


def test_a_restarted_server_gets_one_interval_to_sign(
    make_services: Callable[..., Services],
) -> None:
    """Events written before a long stop are judged from the time this process started."""
    clock = FrozenClock()
    make_services(clock=clock, checkpoint_every_seconds=60)
    clock.advance(3600)  # the server was down for an hour
    restarted = make_services(clock=clock, checkpoint_every_seconds=60)
    assert restarted.audit.verify(SYSTEM).ok
    clock.advance(restarted.audit.verify(SYSTEM).to_json()["max_unanchored_seconds"] + 1)
    assert restarted.audit.verify(SYSTEM).problem == "unanchored_tail"


# -- the witness -------------------------------------------------------------------------------


class _Witness(BaseHTTPRequestHandler):
    received: list[dict[str, Any]]
    statuses: list[int]  # answers to give, in order; 204 once they run out
    arrived: threading.Event

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        status = self.statuses.pop(0) if self.statuses else 204
        if status < 300:
            assert self.headers["Content-Type"] == "application/json"
            self.received.append(json.loads(body))
            self.arrived.set()
        self.send_response(status)
        self.end_headers()

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.fixture
def witness() -> Iterator[tuple[str, type[_Witness]]]:
    handler = type(
        "Handler", (_Witness,), {"received": [], "statuses": [], "arrived": threading.Event()}
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/witness/tether", handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _metric(result: str) -> float:
    value = REGISTRY.get_sample_value("tether_ledger_witness_deliveries_total", {"result": result})
    return value or 0.0


def _wait_for(predicate: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_every_checkpoint_is_posted_to_the_witness(
    make_services: Callable[..., Services], witness: tuple[str, type[_Witness]]
) -> None:
    url, handler = witness
    delivered = _metric("delivered")
    services = make_services(checkpoint_every_events=EVERY, checkpoint_witness_url=url)
    _create_agents(services, EVENTS - BOOTSTRAP_EVENTS)
    _wait_for(lambda: len(handler.received) == 2)
    assert handler.received == _db_checkpoints(services)
    # The witness holds the body before the sender has read the response and counted it.
    _wait_for(lambda: _metric("delivered") == delivered + 2)


def test_a_failed_witness_delivery_is_counted_and_retried_on_the_next_tick(
    make_services: Callable[..., Services], witness: tuple[str, type[_Witness]]
) -> None:
    url, handler = witness
    handler.statuses += [503]
    failed = _metric("failed")
    clock = FrozenClock()
    services = make_services(clock=clock, checkpoint_witness_url=url)
    cp = services.audit.checkpoint_tick()
    assert cp is not None  # signed and committed although the witness refused it
    _wait_for(lambda: _metric("failed") == failed + 1)
    assert handler.received == []
    services.audit.checkpoint_tick()  # nothing new to sign; the pending one goes again
    _wait_for(lambda: handler.received == [cp.to_json()])


def test_an_unreachable_witness_never_blocks_the_ledger(
    make_services: Callable[..., Services],
) -> None:
    failed = _metric("failed")
    services = make_services(
        checkpoint_every_events=EVERY, checkpoint_witness_url="http://127.0.0.1:9/witness"
    )
    _create_agents(services, EVENTS - BOOTSTRAP_EVENTS)
    assert [c["size"] for c in _lines(services)] == [5, 10]
    _wait_for(lambda: _metric("failed") > failed)


def test_the_witness_url_must_be_http(make_services: Callable[..., Services]) -> None:
    with pytest.raises(ValueError, match="checkpoint_witness_url"):
        make_services(checkpoint_witness_url="ftp://example.com/x")


def test_the_checkpoint_file_is_not_world_readable_even_with_a_loose_umask(
    make_services: Callable[..., Services],
) -> None:
    old = os.umask(0)
    try:
        services = make_services(checkpoint_every_events=1)
    finally:
        os.umask(old)
    assert stat.S_IMODE(_file(services).stat().st_mode) == 0o600
