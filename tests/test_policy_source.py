"""Reading a policy document (``tether.policy.source`` and ``service.check``): splitting at
top-level ``;`` with the right line numbers, and every problem reported at once as
``{policy, line, message}``. No database."""

from __future__ import annotations

from typing import Any

import pytest

from tether.errors import PolicyInvalid, ValidationFailed
from tether.policy import service, source
from tether.policy.service import BASE_POLICIES, BASE_SCHEMA, check

# -- split -------------------------------------------------------------------------------------

TRICKY = (
    '// header; with a "quote and @id("not-me")\n'  # 1
    "// more comment\n"  # 2
    "\n"  # 3
    '@id("a") // trailing ; comment\n'  # 4
    "permit(principal, action, resource)\n"  # 5
    'when { context has region && context.region == "x;y // not a comment" };\n'  # 6
    '@id("b") forbid(principal, action, resource); @id("c")\n'  # 7
    "permit(principal, action, resource)\n"  # 8
    '  when { context has s && context.s == "esc \\" ; still" };\n'  # 9
    "\n"  # 10
    "   // a comment ; between\n"  # 11
    "\n"  # 12
    '   @id("d")\n'  # 13
    '   permit(principal, action, resource) unless { context.chain.contains(";") };\n'  # 14
    "// tail comment; nothing after it\n"  # 15
)


def test_split_lines_skip_comments_and_strings() -> None:
    chunks = source.split(TRICKY)
    assert [c.line for c in chunks] == [4, 7, 7, 13]
    assert chunks[0].text.rstrip().endswith('"x;y // not a comment" };')
    assert chunks[1].text.strip() == '@id("b") forbid(principal, action, resource);'
    assert chunks[2].text.strip().startswith('@id("c")')
    assert chunks[2].text.rstrip().endswith('"esc \\" ; still" };')
    assert chunks[3].text.rstrip().endswith('context.chain.contains(";") };')
    # the chunks cover the document (the comment-only tail is dropped)
    assert "".join(c.text for c in chunks) == TRICKY[: TRICKY.index("// tail")].rstrip("\n")


def test_parse_tricky_document() -> None:
    parsed = source.parse(TRICKY)
    assert [(p.id, p.effect, p.line) for p in parsed] == [
        ("a", "permit", 4),
        ("b", "forbid", 7),
        ("c", "permit", 7),
        ("d", "permit", 13),
    ]
    assert not any(p.approval for p in parsed)
    check(TRICKY)  # and it validates against the base schema


@pytest.mark.parametrize("document", ["", "   \n\n", "// only a comment; with a semicolon\n"])
def test_split_of_nothing(document: str) -> None:
    assert source.split(document) == []
    assert source.parse(document) == []
    assert check(document).policies == []


def test_multiline_string_counts_its_lines() -> None:
    doc = (
        '@id("a") permit(principal, action, resource)\n'
        '  when { context has s && context.s == "two\nlines" };\n'
        '@id("b") permit(principal, action, resource);\n'
    )
    assert [(p.id, p.line) for p in source.parse(doc)] == [("a", 1), ("b", 4)]


def test_tail_without_semicolon_is_a_policy_chunk() -> None:
    doc = (
        '@id("a") permit(principal, action, resource);\n\n'
        '@id("b") permit(principal, action, resource)'
    )
    chunks = source.split(doc)
    assert [c.line for c in chunks] == [1, 3]
    problems = _problems(doc)
    assert [(p["policy"], p["line"]) for p in problems] == [("b", 3)]
    assert problems[0]["message"].startswith("syntax error")


def test_approval_annotation_and_effects() -> None:
    doc = (
        '@id("gate") @approval("required")\n'
        'permit(principal, action == Action::"tool.write", resource);\n'
        '@id("stop")\n@approval("required")\nforbid(principal, action, resource)'
        " when { context.delegated };\n"
    )
    parsed = source.parse(doc)
    assert [(p.id, p.effect, p.approval, p.line) for p in parsed] == [
        ("gate", "permit", True, 1),
        ("stop", "forbid", True, 3),
    ]


def test_base_policies_use_the_reserved_prefix() -> None:
    assert {p.id for p in BASE_POLICIES} == {
        "tether.active-only",
        "tether.high-risk-mutating-needs-approval",
    }
    with pytest.raises(source.PolicyDocumentError) as exc:
        source.parse('@id("plain") permit(principal, action, resource);', base=True)
    assert exc.value.problems == [
        source.Problem("base policies need the reserved prefix 'tether.'", "plain", 1)
    ]


# -- every problem at once ---------------------------------------------------------------------

MANY_PROBLEMS = (
    '@id("ok") permit(principal, action, resource);\n'  # 1 fine
    '@id("broken") permit(principal, action resource);\n'  # 2 syntax
    "permit(principal, action, resource);\n"  # 3 no @id
    '@id("ok") forbid(principal, action, resource);\n'  # 4 duplicate
    '@id("tether.mine") permit(principal, action, resource);\n'  # 5 reserved
    '@id("appr") @approval("maybe") permit(principal, action, resource);\n'  # 6 bad approval
    "// a comment line\n"  # 7
    '@id("tmpl") permit(principal == ?principal, action, resource);\n'  # 8 template
    '@id("bad id!") permit(principal, action, resource);\n'  # 9 id shape
    '@id("fine-too") permit(principal, action, resource);\n'  # 10 fine
)


def _problems(document: str, schema: str | None = None) -> list[dict[str, Any]]:
    with pytest.raises(PolicyInvalid) as exc:
        check(document, schema)
    err = exc.value
    assert isinstance(err, ValidationFailed)
    assert err.code == "policy_invalid"
    assert err.http_status == 422
    errors = err.details["errors"]
    assert isinstance(errors, list)
    for e in errors:
        assert set(e) == {"policy", "line", "message"}
        assert isinstance(e["message"], str)
        assert e["message"]
    n = len(errors)
    assert err.message.startswith(f"{n} problem{'s' if n != 1 else ''} ")
    assert "nothing was changed" in err.message
    return list(errors)


def test_every_parse_problem_is_reported_at_once() -> None:
    problems = _problems(MANY_PROBLEMS)
    assert [(p["policy"], p["line"]) for p in problems] == [
        ("broken", 2),
        (None, 3),
        ("ok", 4),
        ("tether.mine", 5),
        ("appr", 6),
        ("tmpl", 8),
        ("bad id!", 9),
    ]
    messages = [p["message"] for p in problems]
    assert messages[0].startswith("syntax error")
    assert "@id" in messages[1]
    assert "duplicate @id 'ok'" in messages[2]
    assert "first at line 1" in messages[2]
    assert "reserved prefix 'tether.'" in messages[3]
    assert '@approval("required")' in messages[4]
    assert "templates" in messages[5]
    assert "1-128" in messages[6]
    # the same through the parser itself
    with pytest.raises(source.PolicyDocumentError) as exc:
        source.parse(MANY_PROBLEMS)
    assert [(p.policy, p.line) for p in exc.value.problems] == [
        (p["policy"], p["line"]) for p in problems
    ]


@pytest.mark.parametrize(
    ("annotation", "ok"),
    [
        ('@approval("required")', True),
        ('@approval("Required")', False),
        ('@approval("")', False),
        ('@approval("no")', False),
    ],
)
def test_approval_annotation_values(annotation: str, ok: bool) -> None:
    doc = f'@id("p") {annotation} permit(principal, action, resource);'
    if ok:
        assert check(doc).policies[0].approval
    else:
        assert _problems(doc) == [
            {
                "policy": "p",
                "line": 1,
                "message": 'the only approval annotation is @approval("required")',
            }
        ]


@pytest.mark.parametrize(
    "pid", ["", " ", "has space", "-leading-dash", "x" * 129, "semi;colon", "ünicode"]
)
def test_bad_id_shapes(pid: str) -> None:
    problems = _problems(f'@id("{pid}") permit(principal, action, resource);')
    assert len(problems) == 1
    assert problems[0]["line"] == 1


@pytest.mark.parametrize("pid", ["a", "A9", "team/x:rule_1.v-2", "x" * 128])
def test_good_id_shapes(pid: str) -> None:
    assert [p.id for p in check(f'@id("{pid}") permit(principal, action, resource);').policies] == [
        pid
    ]


def test_duplicate_of_a_base_policy_id_is_the_reserved_prefix() -> None:
    problems = _problems('@id("tether.active-only") permit(principal, action, resource);')
    assert [(p["policy"], p["line"]) for p in problems] == [("tether.active-only", 1)]
    assert "reserved prefix" in problems[0]["message"]


SCHEMA_PROBLEMS = (
    '@id("typo") permit(principal, action, resource)\n'  # 1
    '  when { principal.riks == "high" };\n'  # 2
    "\n"  # 3
    '@id("fine") permit(principal, action == Action::"tool.call", resource);\n'  # 4
    "// a comment\n"  # 5
    '@id("wrong-type") forbid(principal, action, resource)\n'  # 6
    "  when { principal.status == 3 };\n"  # 7
    '@id("no-action") permit(principal, action == Action::"nope", resource);\n'  # 8
    '@id("unguarded") permit(principal, action, resource is Tool)\n'  # 9
    '  when { resource.server == "s1" };\n'  # 10
)


def test_every_schema_validation_error_with_policy_id_and_line() -> None:
    problems = _problems(SCHEMA_PROBLEMS)
    located = {(p["policy"], p["line"]) for p in problems}
    assert located == {("typo", 1), ("wrong-type", 6), ("no-action", 8), ("unguarded", 9)}
    by_policy: dict[str, list[str]] = {}
    for p in problems:
        by_policy.setdefault(p["policy"], []).append(p["message"])
    assert any("riks" in m for m in by_policy["typo"])
    assert any("nope" in m for m in by_policy["no-action"])
    assert any("server" in m for m in by_policy["unguarded"])
    # Cedar's positional ids (policy0, policy3, …) never leak: messages name our @ids
    for p in problems:
        assert "`policy" not in p["message"], p
    assert all(p["policy"] != "fine" for p in problems)


def test_validation_against_a_custom_schema() -> None:
    schema = BASE_SCHEMA.replace(
        "  on_behalf_of?: String,\n", "  on_behalf_of?: String,\n  amount?: Long,\n"
    )
    assert schema != BASE_SCHEMA
    doc = (
        '@id("cap") permit(principal, action, resource)\n'
        "  when { context has amount && context.amount < 100 };\n"
        '@id("uncapped") permit(principal, action, resource) when { context.amount < 100 };\n'
    )
    problems = _problems(doc, schema)
    assert {(p["policy"], p["line"]) for p in problems} == {("uncapped", 3)}
    # and the base schema has no such field at all
    assert {p["policy"] for p in _problems(doc)} == {"uncapped"}


def test_schema_that_does_not_parse() -> None:
    with pytest.raises(PolicyInvalid) as exc:
        check('@id("a") permit(principal, action, resource);', "entity Foo {")
    assert exc.value.message == "the schema does not parse"
    errors = exc.value.details["errors"]
    assert len(errors) == 1
    assert errors[0]["policy"] is None
    assert errors[0]["line"] is None
    assert errors[0]["message"].startswith("schema: ")


def test_schema_without_what_the_base_policies_need() -> None:
    # A replacement schema must keep what the base policies use (risk_tier, "mutating").
    schema = "entity Role;\nentity Agent in [Role] { status: String };\nentity Tool;\n" + (
        'action "tool.call" appliesTo { principal: [Agent], resource: [Tool] };\n'
    )
    problems = _problems("", schema)
    assert problems
    assert {p["policy"] for p in problems} <= {
        "tether.active-only",
        "tether.high-risk-mutating-needs-approval",
    }
    assert any(p["policy"] == "tether.high-risk-mutating-needs-approval" for p in problems)


def test_check_accepts_and_digests() -> None:
    doc = '@id("a") permit(principal, action, resource);'
    one, two = check(doc), check(doc)
    assert one.digest == two.digest
    assert len(one.digest) == 64
    assert check(doc + "\n").digest != one.digest
    assert one.schema_text == BASE_SCHEMA
    assert [p.id for p in one.policies] == ["a"]
    compiled = service.compile_checked("vX", one)
    assert [p.id for p in compiled.policies] == [
        "tether.active-only",
        "tether.high-risk-mutating-needs-approval",
        "a",
    ]


# -- findings (see the report) -----------------------------------------------------------------


def test_parse_and_validation_problems_are_reported_together() -> None:
    doc = (
        '@id("broken") permit(principal, action resource);\n'
        '@id("typo") permit(principal, action, resource) when { principal.risk == "high" };\n'
    )
    located = {(p["policy"], p["line"]) for p in _problems(doc)}
    assert located == {("broken", 1), ("typo", 2)}


def test_syntax_error_label_ignores_comments() -> None:
    doc = '// formerly @id("old-name")\n@id("new-name") permit(principal, action resource);\n'
    assert [(p["policy"], p["line"]) for p in _problems(doc)] == [("new-name", 2)]


def test_bare_approval_annotation_is_refused() -> None:
    doc = '@id("p") @approval permit(principal, action, resource);'
    assert _problems(doc) == [
        {
            "policy": "p",
            "line": 1,
            "message": 'the only approval annotation is @approval("required")',
        }
    ]
