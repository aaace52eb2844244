"""One AuthorizationPolicy rule as one Envoy RBAC policy, with Istio's semantics.

Inside a rule, `from`, `to` and `when` are AND-ed. Entries of `from` are OR-ed and so are entries
of `to`; the values of one field are OR-ed; a `not*` field excludes its values. Envoy ORs the
`permissions` of a policy and ORs its `principals`, then ANDs the two lists, so each `to` entry
becomes one permission and each `from` entry one principal, and every `when` condition is
AND-ed into each of them.

On a TCP port Envoy parses no HTTP request, so HTTP-only fields cannot be evaluated. As in Istio,
an ALLOW rule that uses one can never match and is dropped, while a DENY or AUDIT rule ignores
those fields and so matches more connections. Each such case is returned as an `RbacNote`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Literal, Union

from envoy.config.rbac.v3 import rbac_pb2

from controlplane.errors import TranslationError
from controlplane.model.types import AuthorizationPolicy, Condition, MeshConfig, Operation, Rule, Source
from controlplane.translate import rbac_matchers as m

Side = Literal["permission", "principal"]
Matcher = Union[rbac_pb2.Permission, rbac_pb2.Principal]
# Builds the matchers for one value; several matchers are OR-ed (a principal with aliases).
Build = Callable[[str, MeshConfig], list]


@dataclass(frozen=True, slots=True)
class FieldKind:
    """Translation recipe for one policy field: the RBAC side it lands on and its matcher builder."""

    side: Side
    build: Build
    http_only: bool = False


@dataclass(frozen=True, slots=True)
class RbacNote:
    """A rule changed on a TCP port because it uses HTTP-only fields; analysis warns about it."""

    namespace: str
    policy: str
    rule: int
    fields: tuple[str, ...]
    message: str


def _permission(**kwargs) -> list[rbac_pb2.Permission]:
    return [rbac_pb2.Permission(**kwargs)]


def _principal(**kwargs) -> list[rbac_pb2.Principal]:
    return [rbac_pb2.Principal(**kwargs)]


SOURCE_FIELDS: dict[str, FieldKind] = {
    "principals": FieldKind("principal", m.principal_matchers),
    "namespaces": FieldKind("principal", lambda v, _c: [m.namespace_principal(v)]),
    "ipBlocks": FieldKind("principal", lambda v, _c: _principal(direct_remote_ip=m.cidr_range(v))),
    "remoteIpBlocks": FieldKind("principal", lambda v, _c: _principal(remote_ip=m.cidr_range(v))),
}
OPERATION_FIELDS: dict[str, FieldKind] = {
    "hosts": FieldKind(
        "permission",
        # Host names compare case-insensitively (RFC 4343); a port in the authority is matched
        # only when the policy value names it, e.g. "example.com:*".
        lambda v, _c: _permission(header=m.header_matcher(m.AUTHORITY_HEADER, v, ignore_case=True)),
        http_only=True,
    ),
    "ports": FieldKind("permission", lambda v, _c: _permission(destination_port=m.port_number(v))),
    "methods": FieldKind(
        "permission", lambda v, _c: _permission(header=m.header_matcher(m.METHOD_HEADER, v)), http_only=True
    ),
    "paths": FieldKind("permission", lambda v, _c: _permission(url_path=m.path_matcher(v)), http_only=True),
}
CONDITION_FIELDS: dict[str, FieldKind] = {
    "source.ip": SOURCE_FIELDS["ipBlocks"],
    "remote.ip": SOURCE_FIELDS["remoteIpBlocks"],
    "source.namespace": SOURCE_FIELDS["namespaces"],
    "source.principal": SOURCE_FIELDS["principals"],
    "destination.ip": FieldKind("permission", lambda v, _c: _permission(destination_ip=m.cidr_range(v))),
    "destination.port": OPERATION_FIELDS["ports"],
    "connection.sni": FieldKind(
        "permission", lambda v, _c: _permission(requested_server_name=m.string_matcher(v))
    ),
}
HEADER_CONDITION_PREFIX = "request.headers["

# Source and Operation attribute names, in the order they appear in the Istio API.
_SOURCE_ATTRS = (
    ("principals", "not_principals"),
    ("namespaces", "not_namespaces"),
    ("ipBlocks", "not_ip_blocks"),
    ("remoteIpBlocks", "not_remote_ip_blocks"),
)
_OPERATION_ATTRS = (
    ("hosts", "not_hosts"),
    ("ports", "not_ports"),
    ("methods", "not_methods"),
    ("paths", "not_paths"),
)
_NOT_NAMES = {
    "principals": "notPrincipals",
    "namespaces": "notNamespaces",
    "ipBlocks": "notIpBlocks",
    "remoteIpBlocks": "notRemoteIpBlocks",
    "hosts": "notHosts",
    "ports": "notPorts",
    "methods": "notMethods",
    "paths": "notPaths",
}


@dataclass(frozen=True, slots=True)
class Constraint:
    """One field of a rule: its path for messages, how to build it, values and excluded values."""

    path: str
    kind: FieldKind
    values: tuple[str, ...]
    not_values: tuple[str, ...]


def _snake(name: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in name)


def _source_constraints(source: Source, path: str) -> list[Constraint]:
    out = []
    for field, not_attr in _SOURCE_ATTRS:
        values, not_values = getattr(source, _snake(field)), getattr(source, not_attr)
        if values or not_values:
            out.append(Constraint(f"{path}.{field}", SOURCE_FIELDS[field], values, not_values))
    return out


def _operation_constraints(operation: Operation, path: str) -> list[Constraint]:
    out = []
    for field, not_attr in _OPERATION_ATTRS:
        values, not_values = getattr(operation, field), getattr(operation, not_attr)
        if values or not_values:
            out.append(Constraint(f"{path}.{field}", OPERATION_FIELDS[field], values, not_values))
    return out


def _condition_kind(condition: Condition) -> FieldKind:
    key = condition.key
    if key in CONDITION_FIELDS:
        return CONDITION_FIELDS[key]
    if key.startswith(HEADER_CONDITION_PREFIX) and key.endswith("]") and len(key) > len(HEADER_CONDITION_PREFIX) + 1:
        header = key[len(HEADER_CONDITION_PREFIX):-1].lower()
        return FieldKind(
            "principal", lambda v, _c: _principal(header=m.header_matcher(header, v)), http_only=True
        )
    known = ", ".join(sorted(CONDITION_FIELDS)) + ", request.headers[<name>]"
    raise m.MatcherValueError(f"condition key {key!r} is not supported; supported keys are {known}")


def _condition_constraint(condition: Condition, path: str) -> Constraint:
    if not condition.values and not condition.not_values:
        raise m.MatcherValueError(f"condition {condition.key!r} has neither values nor notValues")
    return Constraint(path, _condition_kind(condition), condition.values, condition.not_values)


def _source_check(source: Source) -> None:
    if source.request_principals or source.not_request_principals:
        raise m.MatcherValueError(
            "requestPrincipals and notRequestPrincipals are not supported, because idmesh does not validate JWTs"
        )


def _combine(side: Side, kind: str, items: list) -> Matcher:
    """Combine `items` with AND or OR on one side; a single item is returned unchanged."""
    if len(items) == 1:
        return items[0]
    if side == "permission":
        if kind == "and":
            return rbac_pb2.Permission(and_rules=rbac_pb2.Permission.Set(rules=items))
        return rbac_pb2.Permission(or_rules=rbac_pb2.Permission.Set(rules=items))
    if kind == "and":
        return rbac_pb2.Principal(and_ids=rbac_pb2.Principal.Set(ids=items))
    return rbac_pb2.Principal(or_ids=rbac_pb2.Principal.Set(ids=items))


def _negate(side: Side, item: Matcher) -> Matcher:
    if side == "permission":
        return rbac_pb2.Permission(not_rule=item)
    return rbac_pb2.Principal(not_id=item)


def _any(side: Side) -> Matcher:
    return rbac_pb2.Permission(any=True) if side == "permission" else rbac_pb2.Principal(any=True)


def _constraint_matchers(constraint: Constraint, config: MeshConfig) -> list[Matcher]:
    side = constraint.kind.side
    out: list[Matcher] = []
    for values, negated in ((constraint.values, False), (constraint.not_values, True)):
        if not values:
            continue
        built = []
        for index, value in enumerate(values):
            try:
                built.extend(constraint.kind.build(value, config))
            except m.MatcherValueError as exc:
                raise _FieldError(f"{_values_path(constraint.path, negated)}[{index}]", value, str(exc)) from exc
        combined = _combine(side, "or", built)
        out.append(_negate(side, combined) if negated else combined)
    return out


def _values_path(path: str, negated: bool) -> str:
    if not negated:
        return path
    head, _, field = path.rpartition(".")
    if field in _NOT_NAMES:
        return f"{head}.{_NOT_NAMES[field]}"
    return f"{path}.notValues"


class _FieldError(Exception):
    """A field value that cannot be translated; turned into a TranslationError by the caller."""

    def __init__(self, path: str, value: str, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.value = value


def _entry(side: Side, constraints: Iterable[Constraint], config: MeshConfig) -> Matcher:
    items: list[Matcher] = []
    for constraint in constraints:
        items.extend(_constraint_matchers(constraint, config))
    return _combine(side, "and", items) if items else _any(side)


def _rule_constraints(rule: Rule, base: str) -> tuple[list[list[Constraint]], list[list[Constraint]], list[Constraint]]:
    """Split `rule` into per-`from` and per-`to` constraints plus its `when` conditions."""
    sources = []
    for index, entry in enumerate(rule.sources):
        _source_check(entry)
        sources.append(_source_constraints(entry, f"{base}.from[{index}].source"))
    operations = [
        _operation_constraints(entry, f"{base}.to[{index}].operation") for index, entry in enumerate(rule.operations)
    ]
    conditions = [_condition_constraint(c, f"{base}.when[{index}]") for index, c in enumerate(rule.conditions)]
    return sources, operations, conditions


def rule_to_policy(
    policy: AuthorizationPolicy, index: int, *, for_tcp: bool, config: MeshConfig
) -> tuple[rbac_pb2.Policy | None, RbacNote | None]:
    """Translate `policy.rules[index]`; None when the rule can never match on this port.

    Raises TranslationError naming the field when a value cannot be translated.
    """
    base = f"spec.rules[{index}]"
    try:
        sources, operations, conditions = _rule_constraints(policy.rules[index], base)
    except m.MatcherValueError as exc:
        raise TranslationError(
            f"{policy.ref}: {base}: {exc}", namespace=policy.namespace, name=policy.name, path=base
        ) from exc

    every = [c for group in (*sources, *operations) for c in group] + conditions
    try:
        # Check every value, HTTP-only ones included, so a policy fails the same way on every port.
        for constraint in every:
            _constraint_matchers(constraint, config)
    except _FieldError as exc:
        raise _translation_error(policy, exc) from exc
    http_only = tuple(c.path for c in every if c.kind.http_only)
    note = None
    if for_tcp and http_only:
        if policy.action == "ALLOW":
            message = "the rule uses HTTP-only fields on a TCP port, so it never matches and is left out"
            return None, RbacNote(policy.namespace, policy.name, index, http_only, message)
        message = "the rule uses HTTP-only fields on a TCP port; they are ignored, so the rule matches more connections"
        note = RbacNote(policy.namespace, policy.name, index, http_only, message)

    def keep(constraints: Iterable[Constraint]) -> list[Constraint]:
        return [c for c in constraints if not (for_tcp and c.kind.http_only)]

    when_permissions = [c for c in keep(conditions) if c.kind.side == "permission"]
    when_principals = [c for c in keep(conditions) if c.kind.side == "principal"]
    try:
        permissions = [_entry("permission", keep(op) + when_permissions, config) for op in operations] or [
            _entry("permission", when_permissions, config)
        ]
        principals = [_entry("principal", keep(src) + when_principals, config) for src in sources] or [
            _entry("principal", when_principals, config)
        ]
    except _FieldError as exc:
        raise _translation_error(policy, exc) from exc
    return rbac_pb2.Policy(permissions=permissions, principals=principals), note


def _translation_error(policy: AuthorizationPolicy, exc: _FieldError) -> TranslationError:
    return TranslationError(
        f"{policy.ref}: {exc.path}: {exc}",
        namespace=policy.namespace,
        name=policy.name,
        path=exc.path,
        value=exc.value,
    )
