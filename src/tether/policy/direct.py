"""Cedar's semantics for the plain policies, in Python: a request decided without Cedar.

Most policies are scopes and a few comparisons of attributes (``principal.risk_tier !=
"high" && context.delegated == false``). For those, handing Cedar the request costs more
than the answer: the principal's entity parsed into a handle (~27 µs, ~7 KB each when
cached), the resource's added (~9 µs), the request encoded and the answer decoded as JSON
(the profile in bench/README.md, "The decision hot path"). A :class:`Direct` is a slice's
policies compiled once into Python closures over the request's own values; it answers when
every policy of the slice is in the subset below and the request is one Cedar would decide
without an error, and otherwise *gives the request back* (``None``) so Cedar decides it —
with its diagnostics, exactly as before.

The subset: scopes (``==``, ``in``, ``is``, ``is … in``, action ``==``/``in``); ``when`` and
``unless`` over literals (string, Long, Boolean, entity, a set of those), the variables,
``&&``, ``||``, ``!``, ``==``, ``!=``, ``<``, ``<=``, ``>``, ``>=``, ``.attr`` and ``has``
on the principal, the resource and records, ``hasTag``/``getTag``, ``in``, ``is``,
``if … then … else`` and ``.contains``. Anything else — ``like``, arithmetic, extension
functions, templates — keeps the slice on Cedar.

Cedar's rules, kept here (and held to plain cedarpy by ``tests/test_policy_direct.py`` and
``tests/test_policy_differential.py``): ``==`` is false between different types (``true ==
1``, ``Role::"a" == "a"``), never an error; ``&&``/``||`` look at the right operand only when
they must; a policy whose evaluation errors is skipped and reported — so on any error this
module gives the request to Cedar rather than reproduce its message. The inputs Cedar would
parse are checked whole first, as Cedar checks them (no float, no null, every Long within
64 bits, no ``__entity``/``__extn`` escape): an input Cedar refuses is refused by Cedar.
An entity's ancestors are its parents: Tether's entity store holds the schema's actions, the
principal and the resource, and no role is in it, so no ancestor is reached through another
entity — the one exception (the principal and the resource parents of one another) goes to
Cedar.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from tether.policy.source import Policy

Uid = tuple[str, str]
_MIN_LONG, _MAX_LONG = -(2**63), 2**63 - 1
_ESCAPE = '"__'


class _Unsupported(Exception):
    """A policy uses something this module does not evaluate: its slices stay on Cedar."""


class _ToCedar(Exception):
    """This request must be decided by Cedar (an evaluation error, or an input to check)."""


class Inputs:
    """One request's values as the closures read them: the context and the resource's entity
    already checked (:func:`checked`), the principal's entity parsed only if read."""

    __slots__ = ("_principal", "action", "actions", "context", "principal", "principal_parents",
                 "principal_text", "resource", "resource_entity", "resource_parents")  # fmt: skip

    def __init__(
        self, *, principal: Uid, principal_parents: frozenset[Uid], principal_text: str,
        action: str, actions: Mapping[str, frozenset[str]], resource: Uid,
        resource_parents: frozenset[Uid], resource_entity: dict[str, Any] | None,
        context: dict[str, Any],
    ) -> None:  # fmt: skip
        self.principal = principal
        self.principal_parents = principal_parents
        self.principal_text = principal_text
        self.action = action
        self.actions = actions
        self.resource = resource
        self.resource_parents = resource_parents
        self.resource_entity = resource_entity  # None: Cedar does not hold it
        self.context = context
        self._principal: dict[str, Any] | None = None

    def entity(self, uid: Uid) -> dict[str, Any]:
        """The stored entity ``uid`` (its JSON object): the principal's or the resource's."""
        if uid == self.principal:
            if self._principal is None:
                self._principal = checked(self.principal_text)
                if self._principal is None:
                    raise _ToCedar
            return self._principal
        if uid == self.resource and self.resource_entity is not None:
            return self.resource_entity
        raise _ToCedar  # an action's, or one Cedar does not hold: its error, its wording


def checked(text: str) -> dict[str, Any] | None:
    """A JSON object (an entity, a context) as Cedar would parse it, or None when Cedar
    might refuse or read it otherwise (an escape, a float, a null, a number past 64 bits)."""
    if _ESCAPE in text:
        return None
    value = orjson.loads(text)
    return value if type(value) is dict and plain(value) else None


def plain(value: Any) -> bool:
    """Whether a JSON value is one Cedar reads as plain data, as Cedar would check it: no
    float, no null, each integer a Long (and no escapes: the caller looks for ``"__``)."""
    stack = [value]
    while stack:
        v = stack.pop()
        t = type(v)
        if t is str or t is bool:
            continue
        if t is int:
            if not _MIN_LONG <= v <= _MAX_LONG:
                return False
        elif t is dict:
            stack.extend(v.values())
        elif t is list:
            stack.extend(v)
        else:
            return False
    return True


Expr = Callable[[Inputs], Any]


@dataclass(frozen=True, slots=True)
class Direct:
    """A slice's policies as Python: each policy's id and its test (scope and conditions)."""

    permits: tuple[tuple[str, Expr], ...]
    forbids: tuple[tuple[str, Expr], ...]

    @classmethod
    def of(cls, policies: Sequence[Policy]) -> Direct | None:
        """The policies compiled, or None when one of them is outside the subset."""
        try:
            compiled = [(p, _policy(p.est)) for p in policies]
        except _Unsupported:
            return None
        return cls(tuple((p.id, f) for p, f in compiled if p.effect == "permit"),
                   tuple((p.id, f) for p, f in compiled if p.effect == "forbid"))  # fmt: skip

    def satisfied(self, inputs: Inputs) -> tuple[list[str], list[str]] | None:
        """The permits and the forbids the request satisfies, or None: Cedar must decide."""
        try:
            return ([pid for pid, test in self.permits if test(inputs)],
                    [pid for pid, test in self.forbids if test(inputs)])  # fmt: skip
        except _ToCedar:
            return None


def _policy(est: Mapping[str, Any]) -> Expr:
    if not isinstance(est, Mapping) or set(est) - {"effect", "principal", "action", "resource",
                                                   "conditions", "annotations"}:  # fmt: skip
        raise _Unsupported
    tests = [_scope(est["principal"], "principal"), _action_scope(est["action"]),
             _scope(est["resource"], "resource")]  # fmt: skip
    for condition in est.get("conditions") or ():
        body = _expr(condition.get("body"))
        if condition.get("kind") == "when":
            tests.append(_truth(body))
        elif condition.get("kind") == "unless":
            tests.append(_falsity(body))
        else:
            raise _Unsupported
    chosen = tuple(t for t in tests if t is not _always)

    def test(i: Inputs) -> bool:
        for t in chosen:  # noqa: SIM110 (a loop: no generator per policy per request)
            if not t(i):  # Cedar: the scope, then each condition; an error anywhere skips
                return False
        return True

    return test


def _always(i: Inputs) -> bool:
    return True


def _truth(body: Expr) -> Expr:
    def when(i: Inputs) -> bool:
        v = body(i)
        if type(v) is not bool:
            raise _ToCedar
        return v

    return when


def _falsity(body: Expr) -> Expr:
    def unless(i: Inputs) -> bool:
        v = body(i)
        if type(v) is not bool:
            raise _ToCedar
        return not v

    return unless


def _uid(value: Any) -> Uid:
    if (
        isinstance(value, Mapping) and set(value) == {"type", "id"}
        and isinstance(value["type"], str) and isinstance(value["id"], str)
    ):  # fmt: skip
        return (value["type"], value["id"])
    raise _Unsupported


def _scope(scope: Mapping[str, Any], var: str) -> Expr:
    op = scope.get("op")
    if op == "All" and set(scope) == {"op"}:
        return _always
    if op == "==" and set(scope) == {"op", "entity"}:
        target = _uid(scope["entity"])
        return lambda i: _var_uid(i, var) == target
    if op == "in" and set(scope) == {"op", "entity"}:
        target = _uid(scope["entity"])
        return lambda i: _in(i, _var_uid(i, var), (target,))
    if op == "is" and set(scope) <= {"op", "entity_type", "in"}:
        kind = scope.get("entity_type")
        if not isinstance(kind, str):
            raise _Unsupported
        if "in" not in scope:
            return lambda i: _var_uid(i, var)[0] == kind
        inner = scope["in"]
        if not isinstance(inner, Mapping) or set(inner) != {"entity"}:
            raise _Unsupported
        target = _uid(inner["entity"])
        return lambda i: _var_uid(i, var)[0] == kind and _in(i, _var_uid(i, var), (target,))
    raise _Unsupported  # slots (templates), and anything newer than this code


def _var_uid(i: Inputs, var: str) -> Uid:
    return i.principal if var == "principal" else i.resource


def _action_scope(scope: Mapping[str, Any]) -> Expr:
    op = scope.get("op")
    if op == "All" and set(scope) == {"op"}:
        return _always
    if op == "==" and set(scope) == {"op", "entity"}:
        kind, name = _uid(scope["entity"])
        return lambda i: kind == "Action" and i.action == name
    if op == "in" and (set(scope) == {"op", "entity"} or set(scope) == {"op", "entities"}):
        listed = [scope["entity"]] if "entity" in scope else scope["entities"]
        if not isinstance(listed, list):
            raise _Unsupported
        groups = frozenset(_uid(e) for e in listed)
        return lambda i: _in(i, ("Action", i.action), groups)
    raise _Unsupported


# -- expressions ---------------------------------------------------------------------------
def _expr(node: Any) -> Expr:  # noqa: PLR0911, PLR0912
    if not isinstance(node, Mapping) or len(node) != 1:
        raise _Unsupported
    ((op, arg),) = node.items()
    if op == "Value":
        value = _literal(arg)
        return lambda i: value
    if op == "Var":
        return _variable(arg)
    if op == "Set":
        if not isinstance(arg, list):
            raise _Unsupported
        items = [_expr(e) for e in arg]
        return lambda i: [e(i) for e in items]
    if op == "!":
        inner = _expr(_field(arg, "arg"))
        return lambda i: not _bool(inner(i))
    if op in ("&&", "||"):
        left, right = _expr(_field(arg, "left")), _expr(_field(arg, "right"))
        if op == "&&":
            return lambda i: _bool(left(i)) and _bool(right(i))
        return lambda i: _bool(left(i)) or _bool(right(i))
    if op in _COMPARE:
        left, right = _expr(_field(arg, "left")), _expr(_field(arg, "right"))
        return _COMPARE[op](left, right)
    if op in (".", "has"):
        left, attr = _expr(_field(arg, "left")), _field(arg, "attr")
        if not isinstance(attr, str) or set(arg) != {"left", "attr"}:
            raise _Unsupported
        if op == ".":
            return lambda i: _get(i, left(i), attr)
        return lambda i: attr in _record(i, left(i))
    if op in ("hasTag", "getTag"):
        left, key = _expr(_field(arg, "left")), _expr(_field(arg, "right"))
        if op == "hasTag":
            return lambda i: _tag_key(key(i)) in _tags(i, left(i))
        return lambda i: _get_tag(i, left(i), key(i))
    if op == "in":
        left, right = _expr(_field(arg, "left")), _expr(_field(arg, "right"))
        return lambda i: _in(i, _entity(left(i)), _targets(right(i)))
    if op == "is":
        if not isinstance(arg, Mapping) or set(arg) - {"left", "entity_type", "in"}:
            raise _Unsupported
        left, kind = _expr(arg["left"]), arg["entity_type"]
        if not isinstance(kind, str):
            raise _Unsupported
        if "in" not in arg:
            return lambda i: _entity(left(i))[0] == kind
        within = _expr(arg["in"])
        return lambda i: _is_in(i, _entity(left(i)), kind, within)
    if op == "if-then-else":
        cond = _expr(_field(arg, "if"))
        then, other = _expr(_field(arg, "then")), _expr(_field(arg, "else"))
        return lambda i: then(i) if _bool(cond(i)) else other(i)
    if op == "contains":
        left, right = _expr(_field(arg, "left")), _expr(_field(arg, "right"))
        return lambda i: _contains(left(i), right(i))
    raise _Unsupported  # like, containsAll/Any, isEmpty, arithmetic, extension calls, records


def _field(arg: Any, name: str) -> Any:
    if not isinstance(arg, Mapping) or name not in arg:
        raise _Unsupported
    return arg[name]


def _literal(value: Any) -> Any:
    t = type(value)
    if t is str or t is bool or (t is int and _MIN_LONG <= value <= _MAX_LONG):
        return value
    if t is dict and set(value) == {"__entity"}:
        return _uid(value["__entity"])
    raise _Unsupported  # extension values, records and sets given as values


def _variable(name: Any) -> Expr:
    if name == "principal":
        return lambda i: i.principal
    if name == "resource":
        return lambda i: i.resource
    if name == "action":
        return lambda i: ("Action", i.action)
    if name == "context":
        return lambda i: i.context
    raise _Unsupported


def _bool(v: Any) -> bool:
    if type(v) is not bool:
        raise _ToCedar  # a type error: Cedar skips the policy and says why
    return v


def _entity(v: Any) -> Uid:
    if type(v) is not tuple:
        raise _ToCedar
    return v


def _long(v: Any) -> int:
    if type(v) is not int:
        raise _ToCedar  # Cedar also orders datetimes, durations and decimals: its to say
    return v


def _eq(a: Any, b: Any) -> bool:
    """Cedar's ``==``: false between values of different types; sets and records compared
    as Cedar compares them are left to Cedar."""
    ta, tb = type(a), type(b)
    if ta is dict or ta is list or tb is dict or tb is list:
        if ta is not tb:
            return False
        raise _ToCedar
    return ta is tb and a == b


def _ne(left: Expr, right: Expr) -> Expr:
    return lambda i: not _eq(left(i), right(i))


_COMPARE: dict[str, Callable[[Expr, Expr], Expr]] = {
    "==": lambda left, right: lambda i: _eq(left(i), right(i)),
    "!=": _ne,
    "<": lambda left, right: lambda i: _long(left(i)) < _long(right(i)),
    "<=": lambda left, right: lambda i: _long(left(i)) <= _long(right(i)),
    ">": lambda left, right: lambda i: _long(left(i)) > _long(right(i)),
    ">=": lambda left, right: lambda i: _long(left(i)) >= _long(right(i)),
}


def _record(i: Inputs, v: Any) -> dict[str, Any]:
    """The attributes of a record or of a stored entity."""
    if type(v) is dict:
        return v
    if type(v) is tuple:
        attrs = i.entity(v).get("attrs", {})
        if type(attrs) is not dict:
            raise _ToCedar
        return attrs
    raise _ToCedar


def _get(i: Inputs, v: Any, attr: str) -> Any:
    found = _record(i, v)
    if attr not in found:
        raise _ToCedar  # no such attribute: an error Cedar words
    return found[attr]


def _tags(i: Inputs, v: Any) -> dict[str, Any]:
    tags = i.entity(_entity(v)).get("tags", {})
    if type(tags) is not dict:
        raise _ToCedar
    return tags


def _tag_key(key: Any) -> str:
    if type(key) is not str:
        raise _ToCedar
    return key


def _get_tag(i: Inputs, v: Any, key: Any) -> Any:
    tags = _tags(i, v)
    k = _tag_key(key)
    if k not in tags:
        raise _ToCedar
    return tags[k]


def _targets(v: Any) -> tuple[Uid, ...] | list[Uid]:
    if type(v) is tuple:
        return (v,)
    if type(v) is list:
        for e in v:
            _entity(e)
        return v
    raise _ToCedar


def _in(i: Inputs, uid: Uid, targets: Any) -> bool:
    """Cedar's ``in``: the entity itself or one of its ancestors is a target."""
    if uid[0] == "Action" and uid == ("Action", i.action):
        names = i.actions.get(uid[1])
        if names is None:
            raise _ToCedar
        return any(t[0] == "Action" and t[1] in names for t in targets)
    for t in targets:
        if t == uid:
            return True
    ancestors = _ancestors(i, uid)
    return any(t in ancestors for t in targets)


def _ancestors(i: Inputs, uid: Uid) -> frozenset[Any]:
    if uid == i.principal:
        parents = i.principal_parents
        other = i.resource
    elif uid == i.resource:
        parents = i.resource_parents
        other = i.principal
    else:
        raise _ToCedar  # an entity Cedar may or may not hold: its answer
    if other in parents or any(p[0].endswith("Action") for p in parents):
        raise _ToCedar  # an ancestor reached through another stored entity
    return parents


def _is_in(i: Inputs, uid: Uid, kind: str, within: Expr) -> bool:
    if uid[0] != kind:
        return False
    return _in(i, uid, _targets(within(i)))


def _contains(collection: Any, value: Any) -> bool:
    if type(collection) is not list:
        raise _ToCedar
    return any(_eq(e, value) for e in collection)
