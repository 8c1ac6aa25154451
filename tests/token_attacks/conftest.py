"""The attack suite's deployments: ``env``, shared by every module per backend, and ``fresh``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from joserfc.jwk import ECKey

from tests.conftest import BACKENDS, Backend, backend_for
from tests.token_attacks.kit import (
    RS,
    Env,
    deployment,
    new_client,
    token_proof,
)


@pytest.fixture
def fresh(backend: Backend, tmp_path: Path) -> Iterator[Env]:
    """A deployment of its own, for the tests that advance the clock."""
    with deployment(backend, tmp_path / "data") as e:
        yield e


@pytest.fixture(scope="package", params=BACKENDS)
def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """One deployment per backend, shared by every module of the package: each test creates
    the agents it attacks. ``extra`` holds a client, a Bearer token for the resource server,
    and a DPoP-bound one whose key is ``holder``. Its clock never moves."""
    tmp = tmp_path_factory.mktemp(f"env-{request.param}")
    with backend_for(request.param, tmp) as backend, deployment(backend, tmp / "data") as e:
        client = new_client(e, scopes=["read", "write"])
        bearer_token = e.services.oauth.token({**client.form, "resource": RS}, None)
        holder = ECKey.generate_key("P-256")
        bound = e.services.oauth.token(
            {**client.form, "resource": RS}, None, dpop=[token_proof(e, holder)]
        )
        assert bearer_token["token_type"] == "Bearer"
        assert bound["token_type"] == "DPoP"
        e.extra.update(
            client=client,
            token=bearer_token["access_token"],
            holder=holder,
            bound=bound["access_token"],
        )
        yield e
