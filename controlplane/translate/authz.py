"""The one place the translator calls `rbac.py` for authorization filters.

Every filter list that comes back is checked for regular expressions Envoy's RE2 would reject.
If one is found, the chain gets a single deny-all RBAC filter in its place, so the workload
fails closed instead of Envoy rejecting the whole listener update, and the fault is reported.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from envoy.config.listener.v3 import listener_components_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac_pb2

from controlplane.errors import TranslationError
from controlplane.model.types import AuthorizationPolicy, MeshConfig, MeshState
from controlplane.translate import names, rbac
from controlplane.translate.validate import regex_problems

# Name of the deny-all filter that replaces a port's RBAC filters when one has a bad regex.
FAIL_CLOSED_FILTER = f"{rbac.FILTER_NAME_PREFIX}fail_closed"
_RBAC_POLICY_KEY = re.compile(r"policies\['([^']+)'\]")


@dataclass(frozen=True, slots=True)
class Authorization:
    """The policies that select one workload, and the filters they become on each port."""

    config: MeshConfig
    policies: tuple[AuthorizationPolicy, ...] = ()

    def http_filters(self, port: int) -> tuple[list[hcm_pb2.HttpFilter], list[Exception]]:
        result = rbac.translate_http_rbac(self.policies, port=port, config=self.config)
        return _fail_closed_on_bad_regex(list(result.filters), _problems(result), port=port, http=True)

    def network_filters(self, port: int) -> tuple[list[listener_components_pb2.Filter], list[Exception]]:
        result = rbac.translate_network_rbac(self.policies, port=port, config=self.config)
        return _fail_closed_on_bad_regex(list(result.filters), _problems(result), port=port, http=False)


def authorization_for(state: MeshState, *, namespace: str, labels: Mapping[str, str]) -> Authorization:
    """Select the AuthorizationPolicies for one workload."""
    policies = rbac.policies_for_workload(state, namespace=namespace, labels=labels)
    return Authorization(state.config, tuple(policies))


def _problems(result: rbac.RbacTranslation) -> list[Exception]:
    """Failed-closed policies, and rules left out on a TCP port for using HTTP-only fields."""
    problems: list[Exception] = list(result.problems)
    for note in result.notes:
        problems.append(
            TranslationError(
                f"AuthorizationPolicy {note.namespace}/{note.policy}: spec.rules[{note.rule}]: {note.message}",
                namespace=note.namespace,
                name=note.policy,
                rule=note.rule,
                fields=note.fields,
            )
        )
    return problems


def _deny_all_http() -> hcm_pb2.HttpFilter:
    # An ALLOW engine with no policies matches nothing, so it denies every request.
    config = http_rbac_pb2.RBAC(rules=rbac_pb2.RBAC(action=rbac_pb2.RBAC.Action.ALLOW))
    return hcm_pb2.HttpFilter(name=FAIL_CLOSED_FILTER, typed_config=names.pack(config))


def _deny_all_network(port: int) -> listener_components_pb2.Filter:
    config = network_rbac_pb2.RBAC(
        rules=rbac_pb2.RBAC(action=rbac_pb2.RBAC.Action.ALLOW), stat_prefix=f"inbound_{port}.fail_closed."
    )
    return listener_components_pb2.Filter(name=FAIL_CLOSED_FILTER, typed_config=names.pack(config))


def _fail_closed_on_bad_regex(filters: list, problems: list[Exception], *, port: int, http: bool):
    bad: list[Exception] = []
    for item in filters:
        for path, pattern, reason in regex_problems(item):
            # The RBAC policy key in the path names the AuthorizationPolicy and its rule.
            named = _RBAC_POLICY_KEY.search(path)
            source = named.group(1) if named else f"filter {item.name}"
            bad.append(
                TranslationError(
                    f"{source}: regular expression {pattern!r} is rejected by RE2 ({reason}); "
                    f"port {port} denies every request until the policy is fixed",
                    port=port,
                    object=source,
                    path=path,
                    regex=pattern,
                )
            )
    if not bad:
        return filters, problems
    replacement = [_deny_all_http()] if http else [_deny_all_network(port)]
    return replacement, problems + bad
