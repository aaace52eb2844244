"""AuthorizationPolicy to Envoy RBAC filters, in Istio's order and with Istio's semantics.

Each inbound filter chain gets, in this order:

1. one filter per dry-run policy, with only `shadow_rules`, so it reports and never enforces;
2. AUDIT policies as one filter with action LOG, which never denies;
3. DENY policies, plus a deny-all policy for each policy that failed to translate;
4. ALLOW policies, only when at least one ALLOW policy selects the workload. With none, every
   request that passed the DENY filter is allowed; with some, a request must match one of them.

RBAC policy names identify the source: `ns[<namespace>]-policy[<name>]-rule[<index>]`, or
`ns[<namespace>]-policy[<name>]-fail-closed` for a policy that could not be translated. Envoy
reports the matched name in the response code details (`rbac_access_denied_matched_policy[...]`)
and in dynamic metadata under `envoy.filters.http.rbac`: `<prefix>enforced_effective_policy_id`
and `<prefix>enforced_engine_result`, where `<prefix>` is the filter's `rules_stat_prefix`, and
`<prefix>shadow_effective_policy_id` / `<prefix>shadow_engine_result` for shadow rules.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal, Mapping

from envoy.config.listener.v3 import listener_components_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message

from controlplane.errors import TranslationError
from controlplane.model.types import AuthorizationPolicy, MeshConfig, MeshState
from controlplane.translate.rbac_rules import RbacNote, rule_to_policy

EnvoyAction = Literal["ALLOW", "DENY", "LOG"]

# Namespaces under which Envoy writes RBAC dynamic metadata; fixed by Envoy, not by filter name.
HTTP_METADATA_NAMESPACE = "envoy.filters.http.rbac"
NETWORK_METADATA_NAMESPACE = "envoy.filters.network.rbac"

FILTER_NAME_PREFIX = "idmesh.rbac."
STAT_PREFIX = "idmesh_"
_ENVOY_ACTION: Mapping[str, EnvoyAction] = {"AUDIT": "LOG", "DENY": "DENY", "ALLOW": "ALLOW"}
# Enforced filters in evaluation order, named by the Istio action they carry.
_ENFORCED_ORDER = ("AUDIT", "DENY", "ALLOW")


def rule_policy_name(namespace: str, name: str, index: int) -> str:
    return f"ns[{namespace}]-policy[{name}]-rule[{index}]"


def fail_closed_policy_name(namespace: str, name: str) -> str:
    return f"ns[{namespace}]-policy[{name}]-fail-closed"


def dry_run_stat_prefix(namespace: str, name: str) -> str:
    """`idmesh_dry_run_<namespace>_<name>_` with characters other than [A-Za-z0-9-] as `_`.

    Kubernetes names never contain `_`, so distinct policies keep distinct prefixes.
    """
    clean = re.sub(r"[^A-Za-z0-9-]", "_", f"{namespace}_{name}")
    return f"{STAT_PREFIX}dry_run_{clean}_"


def selector_matches(selector: Mapping[str, str] | None, labels: Mapping[str, str]) -> bool:
    """True when every selector label is on the workload; no selector, or an empty one, selects all."""
    return all(labels.get(key) == value for key, value in (selector or {}).items())


def policies_for_workload(
    state: MeshState, *, namespace: str, labels: Mapping[str, str]
) -> tuple[AuthorizationPolicy, ...]:
    """Policies that apply to a workload: its namespace's and the root namespace's (mesh-wide).

    A selector on a root-namespace policy picks workloads by label in every namespace. The
    result is ordered root namespace first, then by namespace and name.
    """
    root = state.config.root_namespace
    selected = [
        policy
        for policy in state.authorization_policies
        if policy.namespace in (namespace, root) and selector_matches(policy.selector, labels)
    ]
    return tuple(sorted(selected, key=lambda p: (p.namespace != root, p.namespace, p.name)))


@dataclass(frozen=True, slots=True)
class RbacTranslation:
    """Filters for one port plus what went wrong or changed on the way.

    `problems` lists policies that failed closed. `notes` lists rules that changed because
    they use HTTP-only fields on a TCP port.
    """

    filters: tuple[Message, ...] = ()
    problems: tuple[TranslationError, ...] = ()
    notes: tuple[RbacNote, ...] = ()


@dataclass(slots=True)
class _FilterPlan:
    name: str
    stat_prefix: str
    rules: rbac_pb2.RBAC | None = None
    shadow_rules: rbac_pb2.RBAC | None = None


@dataclass(slots=True)
class _Plan:
    filters: list[_FilterPlan] = field(default_factory=list)
    problems: list[TranslationError] = field(default_factory=list)
    notes: list[RbacNote] = field(default_factory=list)


def _deny_all() -> rbac_pb2.Policy:
    return rbac_pb2.Policy(
        permissions=[rbac_pb2.Permission(any=True)], principals=[rbac_pb2.Principal(any=True)]
    )


def _policy_rules(
    policy: AuthorizationPolicy, *, for_tcp: bool, config: MeshConfig
) -> tuple[dict[str, rbac_pb2.Policy], list[RbacNote]]:
    """RBAC policies for every rule of `policy`; raise TranslationError if it cannot be enforced."""
    if policy.error:
        raise TranslationError(
            f"{policy.ref}: {policy.error}", namespace=policy.namespace, name=policy.name, reason=policy.error
        )
    if policy.action not in _ENVOY_ACTION:
        raise TranslationError(
            f"{policy.ref}: action {policy.action!r} is not supported; use ALLOW, DENY or AUDIT",
            namespace=policy.namespace,
            name=policy.name,
            path="spec.action",
            value=policy.action,
        )
    rules: dict[str, rbac_pb2.Policy] = {}
    notes: list[RbacNote] = []
    for index in range(len(policy.rules)):
        translated, note = rule_to_policy(policy, index, for_tcp=for_tcp, config=config)
        if translated is not None:
            rules[rule_policy_name(policy.namespace, policy.name, index)] = translated
        if note is not None:
            notes.append(note)
    return rules, notes


def _fail_closed(policy: AuthorizationPolicy, cause: TranslationError) -> TranslationError:
    effect = (
        "the policy is in dry-run mode, so its deny-all replacement is only reported"
        if policy.dry_run
        else "the policy fails closed: every request to the workloads it selects is denied"
    )
    fields = {**cause.fields(), "namespace": policy.namespace, "name": policy.name}
    fields.update(reason=str(cause), rbac_policy=fail_closed_policy_name(policy.namespace, policy.name))
    error = TranslationError(f"{cause}; {effect}", **fields)
    error.__cause__ = cause
    return error


def _plan(policies: tuple[AuthorizationPolicy, ...] | list, *, for_tcp: bool, config: MeshConfig) -> _Plan:
    plan = _Plan()
    enforced: dict[str, dict[str, rbac_pb2.Policy]] = {action: {} for action in _ENFORCED_ORDER}
    has_allow = False
    for policy in policies:
        action = policy.action
        try:
            rules, notes = _policy_rules(policy, for_tcp=for_tcp, config=config)
        except TranslationError as exc:
            plan.problems.append(_fail_closed(policy, exc))
            action = "DENY"
            rules, notes = {fail_closed_policy_name(policy.namespace, policy.name): _deny_all()}, []
        plan.notes.extend(notes)
        if policy.dry_run:
            shadow = rbac_pb2.RBAC(action=_ENVOY_ACTION[action], policies=rules)
            name = f"{FILTER_NAME_PREFIX}dry_run.{policy.namespace}.{policy.name}"
            prefix = dry_run_stat_prefix(policy.namespace, policy.name)
            plan.filters.append(_FilterPlan(name, prefix, shadow_rules=shadow))
            continue
        has_allow = has_allow or action == "ALLOW"
        enforced[action].update(rules)

    plan.filters.sort(key=lambda f: f.name)
    for action in _ENFORCED_ORDER:
        if enforced[action] or (action == "ALLOW" and has_allow):
            rules = rbac_pb2.RBAC(action=_ENVOY_ACTION[action], policies=enforced[action])
            kind = action.lower()
            plan.filters.append(_FilterPlan(f"{FILTER_NAME_PREFIX}{kind}", f"{STAT_PREFIX}{kind}_", rules=rules))
    return plan


def _pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message, deterministic=True)
    return packed


def _http_filter(plan: _FilterPlan) -> hcm_pb2.HttpFilter:
    config = http_rbac_pb2.RBAC()
    if plan.rules is not None:
        config.rules.CopyFrom(plan.rules)
        config.rules_stat_prefix = plan.stat_prefix
    if plan.shadow_rules is not None:
        config.shadow_rules.CopyFrom(plan.shadow_rules)
        config.shadow_rules_stat_prefix = plan.stat_prefix
    return hcm_pb2.HttpFilter(name=plan.name, typed_config=_pack(config))


def _network_filter(plan: _FilterPlan, port: int) -> listener_components_pb2.Filter:
    # Network RBAC has no rules_stat_prefix; its required stat_prefix names the port and filter.
    config = network_rbac_pb2.RBAC(stat_prefix=f"inbound_{port}.{plan.stat_prefix.rstrip('_')}.")
    if plan.rules is not None:
        config.rules.CopyFrom(plan.rules)
    if plan.shadow_rules is not None:
        config.shadow_rules.CopyFrom(plan.shadow_rules)
        config.shadow_rules_stat_prefix = plan.stat_prefix
    return listener_components_pb2.Filter(name=plan.name, typed_config=_pack(config))


def translate_http_rbac(
    policies: tuple[AuthorizationPolicy, ...] | list, *, port: int, config: MeshConfig
) -> RbacTranslation:
    """RBAC HTTP filters for an HTTP port, to go before the router, with problems and notes."""
    plan = _plan(policies, for_tcp=False, config=config)
    filters = tuple(_http_filter(f) for f in plan.filters)
    return RbacTranslation(filters, tuple(plan.problems), tuple(plan.notes))


def translate_network_rbac(
    policies: tuple[AuthorizationPolicy, ...] | list, *, port: int, config: MeshConfig
) -> RbacTranslation:
    """RBAC network filters for a TCP port, to go before tcp_proxy, with problems and notes."""
    plan = _plan(policies, for_tcp=True, config=config)
    filters = tuple(_network_filter(f, port) for f in plan.filters)
    return RbacTranslation(filters, tuple(plan.problems), tuple(plan.notes))


def http_rbac_filters(
    policies: tuple[AuthorizationPolicy, ...] | list, *, port: int, config: MeshConfig
) -> list[hcm_pb2.HttpFilter]:
    return list(translate_http_rbac(policies, port=port, config=config).filters)


def network_rbac_filters(
    policies: tuple[AuthorizationPolicy, ...] | list, *, port: int, config: MeshConfig
) -> list[listener_components_pb2.Filter]:
    return list(translate_network_rbac(policies, port=port, config=config).filters)
