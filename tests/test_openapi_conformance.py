"""Acceptance: "schemathesis over the whole OpenAPI with all checks: 0 server errors, responses
conform".

Schemathesis runs in-process against the ASGI app (no server, no network), authenticated as the
bootstrap admin through the ``HTTPBearer`` security scheme the OpenAPI document declares, with:

* every check schemathesis registers (``ALL_CHECKS``; ``test_every_check_is_enabled`` fails if
  a schemathesis upgrade adds one this file does not know about);
* positive and negative data, in the examples, coverage and fuzzing phases
  (``test_api_conforms``: one pytest sub-test per operation);
* stateful sequences over the links schemathesis infers from the document (create an agent,
  then suspend / resume / kill / clone it, read it back, ...) (``test_api_stateful``).

Everything is derandomized and bounded (``MAX_EXAMPLES``, ``STATEFUL_*``): the same code gives the
same requests on every run, and the file runs in well under a minute per backend.

The only exclusion is narrow and per response (``_state_dependent_rejection``): see its docstring.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import CHECKS, CheckFunction, load_all_checks
from schemathesis.generation.stateful import run_state_machine_as_test
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tether.api.app import create_app
from tether.container import Services

load_all_checks()
ALL_CHECKS: list[CheckFunction] = [c for c in CHECKS.get_all() if not isinstance(c, type)]
KNOWN_CHECKS = {
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
    "negative_data_rejection",
    "positive_data_acceptance",
    "missing_required_header",
    "unsupported_method",
    "allow_header_conformance",
    "use_after_free",
    "ensure_resource_availability",
    "ignored_auth",
    # Needs two identities that own objects; it runs, but is inert with the single admin used
    # here. Object-level rules (supervisors see only their agents) are tested in the registry
    # tests, not here.
    "object_level_authorization",
}

SEED = 20_261_129
MAX_EXAMPLES = 25  # fuzzing examples per operation and generation mode
STATEFUL_EXAMPLES = 15  # scenarios
STATEFUL_STEPS = 12  # requests per scenario

HYPOTHESIS = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=MAX_EXAMPLES,
    print_blob=False,
    # Each example is an HTTP round trip through the whole app and a database write; and the
    # strategies for agent bodies (patterns, nested unions) legitimately filter a lot.
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                           HealthCheck.data_too_large],
)


def _error(response: Any) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else {}


def _state_dependent_rejection(response: Any) -> bool:
    """A schema-valid request the API refuses for a reason no JSON Schema can state.

    ``positive_data_acceptance`` expects every request that matches the schema to be accepted
    (2xx, or 401/403/404/409). These refusals are correct and documented, but depend on server
    state or on the clock, so schemathesis cannot generate data that avoids them:

    * 400 for a ``cursor`` this server did not issue: cursors are opaque; a string that merely
      fits the parameter's type and length is not a cursor (API.md "Lists").
    * 422 for an ``owner`` / ``supervisors`` entry naming no user (or a user who is an auditor),
      for a ``parent`` agent that does not exist, or an ``expires_at`` that is not in the
      future (API.md: "Validation errors are 400 or 422 with the offending field named").

    Only ``positive_data_acceptance`` is skipped, and only for that one response; every other
    check still runs on it (the status is documented, the body is the error shape). A 422 from
    the request model itself (``details.errors`` present) is never excused: that would mean the
    OpenAPI document accepts what the model rejects, which is a real defect.
    """
    error = _error(response)
    details = error.get("details")
    if not isinstance(details, dict) or "errors" in details:
        return False
    field, code, message = details.get("field"), error.get("code"), str(error.get("message"))
    if response.status_code == 400:
        return field == "cursor" and code in {"invalid_cursor", "bad_request"}
    if response.status_code == 422 and code == "validation_error":
        if field in {"owner", "supervisors"}:
            return message.startswith("no user ") or "must be admins or supervisors" in message
        if field == "parent":
            return message.endswith("does not exist")
        if field == "expires_at":
            return message.endswith("must be in the future")
    return False


def _excluded(response: Any) -> list[CheckFunction]:
    return [positive_data_acceptance] if _state_dependent_rejection(response) else []


@pytest.fixture
def api_schema(services: Services, admin_token: str) -> Any:
    # The backend matrix: ``services`` comes from the ``backend`` fixture, so this runs on SQLite
    # and on PostgreSQL (when TETHER_TEST_POSTGRES_URL is set), like every storage test.
    config = schemathesis.Config.from_dict({
        "seed": SEED,
        "auth": {"openapi": {"HTTPBearer": {"bearer": admin_token}}},
        "generation": {"mode": "all", "deterministic": True, "max-examples": MAX_EXAMPLES},
        "phases": {
            "examples": {"enabled": True},
            "coverage": {"enabled": True},
            "fuzzing": {"enabled": True},
            "stateful": {"enabled": True, "max-steps": STATEFUL_STEPS},
        },
        "checks": {"enabled": True},
    })
    return schemathesis.openapi.from_asgi("/openapi.json", create_app(services), config=config)


schema = schemathesis.pytest.from_fixture("api_schema")


def test_every_check_is_enabled() -> None:
    names = {c.__name__ for c in ALL_CHECKS}
    assert names == KNOWN_CHECKS, (
        f"schemathesis checks changed: new {sorted(names - KNOWN_CHECKS)}, "
        f"gone {sorted(KNOWN_CHECKS - names)}; review them and update KNOWN_CHECKS"
    )


@schema.parametrize()
@HYPOTHESIS
def test_api_conforms(case: Any) -> None:
    response = case.call()
    case.validate_response(response, checks=ALL_CHECKS, excluded_checks=_excluded(response))


def test_api_stateful(api_schema: Any) -> None:
    base = api_schema.as_state_machine()

    class Workflow(base):  # type: ignore[misc, valid-type]
        def validate_response(
            self, response: Any, case: Any, additional_checks: Any = None, **kwargs: Any
        ) -> None:
            case.validate_response(
                response,
                checks=ALL_CHECKS,
                excluded_checks=_excluded(response),
                transport_kwargs=kwargs or None,
                recorder=self.recorder,
            )

    run_state_machine_as_test(
        Workflow,
        settings=settings(
            HYPOTHESIS, max_examples=STATEFUL_EXAMPLES, stateful_step_count=STATEFUL_STEPS
        ),
    )
