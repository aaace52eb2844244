"""Evaluate a listener's RBAC filters on one request, as Envoy 1.40 would.

Filters run in order. In each filter the shadow engine runs first and only reports; then the
enforced engine decides. An engine walks its policies in name order (Envoy keeps them in a
`std::map`) and stops at the first match, whose name becomes the effective policy ID. ALLOW
allows on a match, DENY denies on a match, LOG always allows and sets the access log hint.
The first enforced denial stops the chain, so later filters, their shadow rules included,
never run. A filter with neither `rules` nor `shadow_rules` allows everything.

The result also carries the dynamic metadata Envoy writes, so it can be compared with
`%DYNAMIC_METADATA(envoy.filters.http.rbac:<key>)%` in an access log, and the response code
details Envoy sets on a denial.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Iterable, Literal, Mapping, Sequence, Union

from envoy.config.listener.v3 import listener_components_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac_pb2
from google.protobuf.message import Message

from controlplane.authz.errors import UnsupportedRbacError
from controlplane.authz.matchers import Context, Predicate, compile_policy
from controlplane.authz.request import Request

Kind = Literal["http", "network"]
EngineAction = Literal["ALLOW", "DENY", "LOG"]
FilterInput = Union[
    hcm_pb2.HttpFilter, listener_components_pb2.Filter, http_rbac_pb2.RBAC, network_rbac_pb2.RBAC
]

HTTP_RBAC_TYPE = "envoy.extensions.filters.http.rbac.v3.RBAC"
NETWORK_RBAC_TYPE = "envoy.extensions.filters.network.rbac.v3.RBAC"
# Terminal filters: evaluation ends there, because nothing after them can deny.
TERMINAL_TYPES = frozenset(
    {
        "envoy.extensions.filters.http.router.v3.Router",
        "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
    }
)
HTTP_METADATA_NAMESPACE = "envoy.filters.http.rbac"
NETWORK_METADATA_NAMESPACE = "envoy.filters.network.rbac"
COMMON_METADATA_NAMESPACE = "envoy.common"
ACCESS_LOG_HINT = "access_log_hint"
NO_ALLOW_MATCHED = "no ALLOW policy matched"
_ACTIONS: Mapping[int, EngineAction] = {0: "ALLOW", 1: "DENY", 2: "LOG"}


@dataclass(frozen=True, slots=True)
class EngineResult:
    """One engine's verdict; `matched_policy` is the effective policy ID, None when nothing matched."""

    filter_name: str
    action: EngineAction
    allowed: bool
    matched_policy: str | None


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of a filter chain for one request.

    `filter_name` and `policy` name what decided. On a denial they are the denying filter and
    its matched policy, which is None when an ALLOW engine matched nothing. On an allowed
    request they are the last ALLOW engine and its matched policy, both None when no ALLOW
    engine ran. `logged` lists the LOG
    engines whose policies matched, and `shadow` every shadow engine that ran.
    """

    allowed: bool
    reason: str
    filter_name: str | None = None
    policy: str | None = None
    enforced: tuple[EngineResult, ...] = ()
    shadow: tuple[EngineResult, ...] = ()
    logged: tuple[EngineResult, ...] = ()
    dynamic_metadata: Mapping[str, Mapping[str, str | bool]] = field(
        default_factory=lambda: MappingProxyType({})
    )

    @property
    def response_code_details(self) -> str | None:
        """What Envoy puts in %RESPONSE_CODE_DETAILS% (HTTP) or the connection termination details."""
        if self.allowed:
            return None
        return f"rbac_access_denied_matched_policy[{self.policy or 'none'}]"


@dataclass(frozen=True, slots=True)
class _Engine:
    action: EngineAction
    policies: tuple[tuple[str, Predicate], ...]

    def run(self, context: Context) -> tuple[bool, str | None]:
        matched = next((name for name, matches in self.policies if matches(context)), None)
        if self.action == "ALLOW":
            return matched is not None, matched
        if self.action == "DENY":
            return matched is None, matched
        return True, matched


@dataclass(frozen=True, slots=True)
class _Filter:
    name: str
    engine: _Engine | None
    shadow: _Engine | None
    rules_prefix: str
    shadow_prefix: str


def _engine(rules: rbac_pb2.RBAC, where: str) -> _Engine:
    if rules.action not in _ACTIONS:
        raise UnsupportedRbacError(f"{where}.action: unknown action {rules.action}", path=where)
    # std::map<std::string, ...> orders keys bytewise, which is code point order for UTF-8.
    ordered = sorted(rules.policies.items(), key=lambda item: item[0].encode())
    policies = tuple(
        (name, compile_policy(policy, f'{where}.policies["{name}"]')) for name, policy in ordered
    )
    return _Engine(_ACTIONS[rules.action], policies)


def _unpack(item: FilterInput, index: int, kind: Kind) -> tuple[str, Message | None]:
    """Return the filter's name and RBAC config, or None for a terminal filter."""
    if isinstance(item, (http_rbac_pb2.RBAC, network_rbac_pb2.RBAC)):
        return f"filter[{index}]", item
    where = f"filter[{index}] {item.name!r}"
    if isinstance(item, hcm_pb2.HttpFilter) and item.disabled:
        raise UnsupportedRbacError(f"{where}: disabled filters (enabled per route) are not supported", path=where)
    if item.WhichOneof("config_type") != "typed_config":
        raise UnsupportedRbacError(f"{where}: only typed_config is supported", path=where)
    type_name = item.typed_config.TypeName()
    if type_name in TERMINAL_TYPES:
        return item.name, None
    expected = HTTP_RBAC_TYPE if kind == "http" else NETWORK_RBAC_TYPE
    if type_name != expected:
        raise UnsupportedRbacError(f"{where}: {type_name} is not an {kind} RBAC filter", path=where)
    config = http_rbac_pb2.RBAC() if kind == "http" else network_rbac_pb2.RBAC()
    item.typed_config.Unpack(config)
    return item.name, config


def compile_filters(filters: Iterable[FilterInput], *, kind: Kind) -> tuple[_Filter, ...]:
    """Check and compile a filter chain; raise UnsupportedRbacError on anything not evaluable."""
    compiled = []
    for index, item in enumerate(filters):
        name, config = _unpack(item, index, kind)
        if config is None:
            break
        for unsupported in ("matcher", "shadow_matcher"):
            if config.HasField(unsupported):
                raise UnsupportedRbacError(f"filter {name!r}: {unsupported} is not supported", path=name)
        engine = _engine(config.rules, f"{name}.rules") if config.HasField("rules") else None
        shadow = _engine(config.shadow_rules, f"{name}.shadow_rules") if config.HasField("shadow_rules") else None
        rules_prefix = config.rules_stat_prefix if kind == "http" else ""
        compiled.append(_Filter(name, engine, shadow, rules_prefix, config.shadow_rules_stat_prefix))
    return tuple(compiled)


def evaluate(filters: Sequence[FilterInput], request: Request, *, kind: Kind = "http") -> Decision:
    """Run `filters` (HttpFilter or listener Filter messages, or bare RBAC configs) on `request`.

    `kind` chooses HTTP or network filter semantics: network filters see no HTTP headers and
    write only shadow results into dynamic metadata.
    """
    chain = compile_filters(filters, kind=kind)
    context = Context(request, request.http_headers() if kind == "http" else {})
    namespace = HTTP_METADATA_NAMESPACE if kind == "http" else NETWORK_METADATA_NAMESPACE
    metadata: dict[str, dict[str, str | bool]] = {}
    enforced: list[EngineResult] = []
    shadow: list[EngineResult] = []
    logged: list[EngineResult] = []

    for item in chain:
        fields: dict[str, str | bool] = {}
        if item.shadow is not None:
            allowed, matched = item.shadow.run(context)
            shadow.append(EngineResult(item.name, item.shadow.action, allowed, matched))
            if matched is not None:
                fields[f"{item.shadow_prefix}shadow_effective_policy_id"] = matched
            fields[f"{item.shadow_prefix}shadow_engine_result"] = "allowed" if allowed else "denied"
        denied = False
        if item.engine is not None:
            allowed, matched = item.engine.run(context)
            denied = not allowed
            result = EngineResult(item.name, item.engine.action, allowed, matched)
            enforced.append(result)
            if item.engine.action == "LOG":
                metadata.setdefault(COMMON_METADATA_NAMESPACE, {})[ACCESS_LOG_HINT] = matched is not None
                if matched is not None:
                    logged.append(result)
            if kind == "http":
                if matched is not None:
                    fields[f"{item.rules_prefix}enforced_effective_policy_id"] = matched
                fields[f"{item.rules_prefix}enforced_engine_result"] = "allowed" if allowed else "denied"
        if fields:
            metadata.setdefault(namespace, {}).update(fields)
        if denied:
            return _decision(False, enforced, shadow, logged, metadata)
    return _decision(True, enforced, shadow, logged, metadata)


def _decision(
    allowed: bool,
    enforced: list[EngineResult],
    shadow: list[EngineResult],
    logged: list[EngineResult],
    metadata: dict[str, dict[str, str | bool]],
) -> Decision:
    if not allowed:
        last = enforced[-1]
        if last.action == "DENY":
            reason = f"denied by DENY policy {last.matched_policy}"
        else:
            reason = NO_ALLOW_MATCHED
        decider: EngineResult | None = last
    else:
        decider = next((r for r in reversed(enforced) if r.action == "ALLOW"), None)
        if decider is None:
            reason = "allowed: no ALLOW policy applies and no DENY policy matched"
        else:
            reason = f"allowed by ALLOW policy {decider.matched_policy}"
    frozen = MappingProxyType({ns: MappingProxyType(dict(values)) for ns, values in metadata.items()})
    return Decision(
        allowed=allowed,
        reason=reason,
        filter_name=decider.filter_name if decider else None,
        policy=decider.matched_policy if decider else None,
        enforced=tuple(enforced),
        shadow=tuple(shadow),
        logged=tuple(logged),
        dynamic_metadata=frozen,
    )
