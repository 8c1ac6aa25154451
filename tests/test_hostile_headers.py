"""Hostile credentials in headers (issue 10, item 2), on SQLite and PostgreSQL.

``Authorization: Basic \\xff\\xff==`` made ``POST /oauth/token`` (and introspection and
revocation) answer 500 with a traceback: ``base64.b64decode`` raises ``ValueError`` for a
non-ASCII string and only ``binascii.Error`` was caught. RFC 6749 §5.2: a client that fails to
authenticate gets ``invalid_client``, 401 with the Basic challenge when it used Basic.

Beyond the one header the review found, every operation of the OpenAPI document is sent
every malformed ``Authorization`` and ``DPoP`` value below: none may answer 5xx.
"""

from __future__ import annotations

from typing import Any

import pytest
from starlette.testclient import TestClient

from tests.conftest import Api

FORM = {"content-type": "application/x-www-form-urlencoded"}
MALFORMED_BASIC = [
    b"Basic \xff\xff==",  # the review's: non-ASCII, so not base64 at all
    b"Basic QQ==\xff",  # base64, then a non-ASCII byte
    b"Basic //79",  # base64 of bytes that are not UTF-8
    b"Basic YWdlbnQ",  # base64 without its padding
    b"Basic YWdlbnQ=",  # "agent": no ':' between client_id and secret
    b"Basic ",
]
HOSTILE_AUTHORIZATION = [
    *MALFORMED_BASIC,
    b"Bearer \xff\xff",
    b"Bearer \xff.\xff.\xff",
    b"Bearer a.b.c",
    b"DPoP \xff\xfe",
    b"DPoP a.b.c",
    b"\xff\xff \xff",
    b"Basic " + b"A" * 100_000,
]
HOSTILE_DPOP = [b"\xff.\xff.\xff", b"eyJ\xff.e30.e30", b""]


@pytest.mark.parametrize("endpoint", ["/oauth/token", "/oauth/introspect", "/oauth/revoke"])
@pytest.mark.parametrize("header", MALFORMED_BASIC, ids=repr)
def test_a_malformed_basic_header_is_invalid_client_401_with_the_challenge(
    client: TestClient, endpoint: str, header: bytes
) -> None:
    body = b"grant_type=client_credentials&token=anything"
    response = client.post(endpoint, content=body,
                           headers=[*FORM.items(), ("authorization", header)])  # fmt: skip
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "invalid_client"
    assert response.headers["www-authenticate"].startswith("Basic")


def test_the_failed_basic_authentication_is_audited(api: Api) -> None:
    before = api.events()
    response = api.client.post(
        "/oauth/token",
        content=b"grant_type=client_credentials",
        headers=[*FORM.items(), ("authorization", b"Basic \xff\xff==")],
    )
    assert response.status_code == 401
    [event] = api.new_events(before)
    assert event["type"] == "client.auth_failed"
    assert event["details"]["reason"] == "malformed Basic authorization header"
    assert event["details"]["method"] == "client_secret_basic"


def _operations(client: TestClient) -> list[tuple[str, str]]:
    """Every operation of the document, with ``x`` for each path parameter."""
    document: dict[str, Any] = client.get("/openapi.json").json()
    out = []
    for path, operations in document["paths"].items():
        concrete = path
        while "{" in concrete:
            start, end = concrete.index("{"), concrete.index("}")
            concrete = concrete[:start] + "x" + concrete[end + 1 :]
        out += [(method.upper(), concrete) for method in operations]
    return out


def test_no_operation_answers_5xx_to_hostile_credentials(client: TestClient) -> None:
    operations = _operations(client)
    assert len(operations) > 30
    failures = []
    for method, path in operations:
        for authorization in HOSTILE_AUTHORIZATION:
            dpops: list[bytes | None] = [None]
            if authorization.startswith(b"DPoP") or path == "/oauth/token":
                dpops += HOSTILE_DPOP
            for dpop in dpops:
                headers = [*FORM.items(), ("authorization", authorization)]
                if dpop is not None:
                    headers.append(("dpop", dpop))
                response = client.request(
                    method, path, headers=headers,
                    content=b"grant_type=client_credentials&token=x",
                )  # fmt: skip
                if response.status_code >= 500:
                    failures.append((method, path, authorization[:20], dpop, response.text))
    assert failures == []
