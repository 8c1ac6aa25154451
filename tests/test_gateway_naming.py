"""How the gateway names upstream tools to agents (tether.gateway.naming): ``<server>.<tool>``,
or the tool's own name for the one upstream with ``prefix = false``; policy and the ledger
say ``<server>.<tool>`` either way."""

from __future__ import annotations

import pytest
from mcp.shared.exceptions import MCPError

from tether.gateway.naming import Names
from tether.gateway.upstreams import UpstreamLink
from tether.gateway_config import Upstream


def _link(name: str, *, prefix: bool = True) -> UpstreamLink:
    config = Upstream(name=name, url=f"http://127.0.0.1:1/{name}", prefix=prefix)
    return UpstreamLink(config, lambda secret: secret)


def test_prefixed_names_win_and_the_rest_belong_to_the_unprefixed_upstream() -> None:
    payments, bare = _link("payments"), _link("suite", prefix=False)
    names = Names({"payments": payments, "suite": bare})
    assert names.split("payments.refund") == (payments, "refund")
    assert names.split("test_simple_text") == (bare, "test_simple_text")
    assert names.split("suite.x") == (bare, "suite.x")  # its own name is no prefix
    assert names.split("other.x") == (bare, "other.x")
    assert (names.wire(payments, "refund"), names.wire(bare, "echo")) == ("payments.refund", "echo")
    assert names.policy_id(bare, "echo") == "suite.echo"
    assert names.shown(bare, "echo")
    assert not names.shown(bare, "payments.refund")  # shadowed by the payments upstream


def test_without_an_unprefixed_upstream_a_bare_name_is_unknown() -> None:
    names = Names({"payments": _link("payments")})
    for name in ("refund", "payments.", "other.refund", ""):
        with pytest.raises(MCPError, match="Unknown tool"):
            names.split(name)
