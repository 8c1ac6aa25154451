"""Reading a policy document: split it into policies, check each, validate against a schema.

Cedar reports parse errors without a position and validation errors by positional id
(``policy3``), so the document is first split at top-level ``;`` into one chunk per policy,
each with its first line. Every problem is then reported as ``{policy, line, message}`` —
all of them, not just the first — and a document with any problem is refused whole.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import cedarpy
import orjson

from tether.policy import limits

BASE_PREFIX = "tether."
APPROVAL_ANNOTATION = "approval"
_ID_ANNOTATION = re.compile(r'@id\s*\(\s*"((?:[^"\\]|\\.)*)"\s*\)')
_ID_SHAPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/\-]{0,127}$")


@dataclass(frozen=True, slots=True)
class Problem:
    message: str
    policy: str | None = None
    line: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"policy": self.policy, "line": self.line, "message": self.message}


@dataclass(frozen=True, slots=True)
class Policy:
    """One parsed policy: its ``@id``, effect, whether it is an approval checkpoint, its
    Cedar JSON form (scope and conditions) and where it starts in the document."""

    id: str
    effect: Literal["permit", "forbid"]
    approval: bool
    line: int
    est: dict[str, Any]
    text: str


@dataclass(frozen=True, slots=True)
class Chunk:
    text: str
    line: int


class PolicyDocumentError(ValueError):
    def __init__(self, problems: list[Problem], parsed: list[Policy] | None = None) -> None:
        super().__init__("; ".join(p.message for p in problems))
        self.problems = problems
        self.parsed = parsed or []  # the policies that did parse, to validate all the same


def split(document: str) -> list[Chunk]:
    """Policies of ``document`` at top-level ``;``, skipping strings and ``//`` comments."""
    chunks: list[Chunk] = []
    start, line, first_line = 0, 1, 0
    i, n = 0, len(document)
    in_string = False
    while i < n:
        ch = document[i]
        if ch == "\n":
            line += 1
        if in_string:
            if ch == "\\":
                i += 2
                continue
            in_string = ch != '"'
        elif ch == '"':
            in_string = True
            first_line = first_line or line
        elif ch == "/" and document.startswith("//", i):
            end = document.find("\n", i)
            i = n if end < 0 else end
            continue
        elif ch == ";":
            chunks.append(Chunk(document[start : i + 1], first_line or line))
            start, first_line = i + 1, 0
        elif not ch.isspace():
            first_line = first_line or line
        i += 1
    tail = document[start:]
    if first_line:
        chunks.append(Chunk(tail, first_line))
    return chunks


def _chunk_id(chunk: Chunk) -> str | None:
    m = _ID_ANNOTATION.search(_without_comments(chunk.text))
    return m.group(1) if m else None


def _without_comments(text: str) -> str:
    out, i, n, in_string = [], 0, len(text), False
    while i < n:
        ch = text[i]
        if in_string:
            out.append(ch)
            if ch == "\\" and i + 1 < n:
                out.append(text[i + 1])
                i += 2
                continue
            in_string = ch != '"'
        elif ch == '"':
            in_string = True
            out.append(ch)
        elif text.startswith("//", i):
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        else:
            out.append(ch)
        i += 1
    return "".join(out)


def parse(document: str, *, base: bool = False) -> list[Policy]:
    """Every policy of ``document``, or :class:`PolicyDocumentError` listing every problem.

    Operator policies need a unique ``@id`` outside the reserved ``tether.`` prefix (reasons
    and simulations name policies by it); templates are not supported."""
    problems: list[Problem] = []
    policies: list[Policy] = []
    seen: dict[str, int] = {}
    for chunk in split(document):
        label = _chunk_id(chunk)
        if excess := limits.check_policy_text(chunk.text):  # Cedar would crash, not refuse
            problems.append(Problem(excess.message, label, chunk.line))
            continue
        try:
            est = orjson.loads(cedarpy.policies_to_json_str(chunk.text))
        except ValueError as exc:
            problems.append(Problem(f"syntax error: {exc}", label, chunk.line))
            continue
        if est.get("templates"):
            problems.append(Problem("templates (?principal, ?resource) are not supported",
                                    label, chunk.line))  # fmt: skip
            continue
        for body in est.get("staticPolicies", {}).values():
            policy, problem = _policy(body, chunk, base=base)
            if policy and (excess := limits.check_json_depth(body)):  # Cedar could not read it
                problem = Problem(excess.message, policy.id, chunk.line)
            if problem:
                problems.append(problem)
                continue
            assert policy is not None
            if policy.id in seen:
                problems.append(Problem(
                    f"duplicate @id {policy.id!r} (first at line {seen[policy.id]})",
                    policy.id, chunk.line,
                ))  # fmt: skip
                continue
            seen[policy.id] = chunk.line
            policies.append(policy)
    if problems:
        raise PolicyDocumentError(problems, policies)
    return policies


def _policy(
    body: dict[str, Any], chunk: Chunk, *, base: bool
) -> tuple[Policy | None, Problem | None]:
    line = chunk.line
    annotations: dict[str, Any] = body.get("annotations") or {}
    pid = annotations.get("id")
    if not isinstance(pid, str) or not pid:
        return None, Problem('every policy needs an @id("…") annotation', None, line)
    if not _ID_SHAPE.match(pid):
        return None, Problem("an @id is 1-128 letters, digits and _ . : / -", pid, line)
    if pid.startswith(BASE_PREFIX) != base:
        why = "base policies need" if base else "operator policies must not use"
        return None, Problem(f"{why} the reserved prefix {BASE_PREFIX!r}", pid, line)
    approval = annotations.get(APPROVAL_ANNOTATION)
    if APPROVAL_ANNOTATION in annotations and approval != "required":
        return None, Problem('the only approval annotation is @approval("required")', pid, line)
    if read := _entity_read(body.get("conditions")):
        return None, Problem(
            f"reads {read}, which Tether does not load for a decision (only the principal and "
            f"the resource are); compare ids instead (principal == {read})", pid, line,
        )  # fmt: skip
    effect = body.get("effect")
    assert effect in ("permit", "forbid")
    return Policy(pid, effect, approval == "required", line, body, chunk.text.strip()), None


_READS = frozenset({".", "has", "hasTag", "getTag", "in"})
_LOADED_TYPES = ("Action", "Role")  # the decision's entity store holds these (no attributes)


def _entity_read(root: Any) -> str | None:
    """An entity literal whose attributes, tags or ancestors a condition reads, if any (an
    explicit stack, not recursion: how deep a policy is must not reach Python's limit)."""
    stack = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(reversed(node))
            continue
        if not isinstance(node, dict):
            continue
        for op, arg in node.items():
            # anywhere in the operand read: `(if c then Agent::"x" else principal).status`
            # reads Agent::"x" as surely as `Agent::"x".status` does
            if (
                op in _READS and isinstance(arg, dict)
                and (entity := _unloaded_literal(arg.get("left"))) is not None
            ):  # fmt: skip
                return entity
        stack.extend(reversed(list(node.values())))
    return None


def _unloaded_literal(root: Any) -> str | None:
    """The first entity literal in ``root`` of a type the decision's store does not hold."""
    stack = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(reversed(node))
        elif isinstance(node, dict):
            entity = node.get("__entity")
            if isinstance(entity, dict):
                if not str(entity.get("type", "")).endswith(_LOADED_TYPES):
                    return f'{entity.get("type")}::"{entity.get("id")}"'
                continue
            stack.extend(reversed(list(node.values())))
    return None


def to_cedar_json(policies: list[Policy]) -> str:
    """The Cedar JSON policy set with our ids as Cedar's policy ids (so reasons are @ids)."""
    return orjson.dumps({
        "staticPolicies": {p.id: p.est for p in policies},
        "templates": {},
        "templateLinks": [],
    }).decode()  # fmt: skip


# A schema handle is immutable (cedarpy), so one parse serves every check of the same text:
# the one in force is checked again on every policy load, right-sizing report and push
# (~11 ms a parse here). A schema that does not parse raises and is not kept.
@lru_cache(maxsize=16)
def parse_schema(schema: str) -> cedarpy.Schema:
    if excess := limits.check_schema_text(schema):  # Cedar would crash, not refuse
        raise PolicyDocumentError([Problem(f"schema: {excess.message}", None, excess.line)])
    try:
        return cedarpy.Schema.from_str(schema)
    except ValueError as exc:
        raise PolicyDocumentError([Problem(f"schema: {exc}")]) from exc


def validate(policies: list[Policy], schema: cedarpy.Schema) -> list[Problem]:
    """Cedar's validator over the whole set: every error, with the policy id and line."""
    if not policies:
        return []
    text = "\n".join(p.text for p in policies)
    result = cedarpy.validate_policies(text, schema)
    if result.validation_passed:
        return []
    # Cedar names policies by position in the text; map them back to ours.
    by_position = {f"policy{i}": p for i, p in enumerate(policies)}
    out: list[Problem] = []
    for err in result.errors:
        p = by_position.get(err.policy_id)
        message = err.error
        if p is not None:
            message = message.replace(f"`{err.policy_id}`", f"`{p.id}`")
        out.append(Problem(message, p.id if p else None, p.line if p else None))
    return out
