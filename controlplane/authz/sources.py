"""Map RBAC policy and filter names back to the AuthorizationPolicy they came from.

The translator (`controlplane/translate/rbac.py`) names each RBAC policy
`ns[<namespace>]-policy[<name>]-rule[<index>]`, or `ns[<namespace>]-policy[<name>]-fail-closed`
for a policy it could not translate, and names filters `idmesh.rbac.<kind>`, with one
`idmesh.rbac.dry_run.<namespace>.<name>` filter per dry-run policy. Kubernetes names contain no
`[`, `]` or `.` in a namespace, so these names parse back without ambiguity.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from controlplane.translate.authz import FAIL_CLOSED_FILTER
from controlplane.translate.rbac import FILTER_NAME_PREFIX

_POLICY_NAME = re.compile(r"ns\[(?P<namespace>[^\[\]]*)\]-policy\[(?P<name>[^\[\]]*)\]-(?:rule\[(?P<rule>\d+)\]|(?P<failed>fail-closed))")
_DRY_RUN_PREFIX = f"{FILTER_NAME_PREFIX}dry_run."
ALLOW_FILTER = f"{FILTER_NAME_PREFIX}allow"
_FILTER_KINDS = {
    f"{FILTER_NAME_PREFIX}audit": "AUDIT policies",
    f"{FILTER_NAME_PREFIX}deny": "DENY policies",
    ALLOW_FILTER: "ALLOW policies",
    FAIL_CLOSED_FILTER: "deny-all filter that replaced every RBAC filter of the port because a "
    "policy has a regular expression that RE2 rejects",
}


@dataclass(frozen=True, slots=True)
class SourcePolicy:
    """The AuthorizationPolicy behind one RBAC policy; `rule` is None for a fail-closed policy."""

    namespace: str
    name: str
    rule: int | None

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def fail_closed(self) -> bool:
        return self.rule is None

    def describe(self) -> str:
        if self.fail_closed:
            return f"{self.ref} (failed closed: it could not be translated, so it denies every request)"
        return f"{self.ref} rule {self.rule}"


def source_policy(rbac_policy: str | None) -> SourcePolicy | None:
    """Parse an idmesh RBAC policy name; None for None or a name the translator did not make."""
    if rbac_policy is None:
        return None
    found = _POLICY_NAME.fullmatch(rbac_policy)
    if found is None:
        return None
    rule = found.group("rule")
    return SourcePolicy(found.group("namespace"), found.group("name"), int(rule) if rule is not None else None)


def dry_run_policy(filter_name: str) -> str | None:
    """`namespace/name` of the dry-run policy a filter belongs to, or None for other filters."""
    if not filter_name.startswith(_DRY_RUN_PREFIX):
        return None
    namespace, _, name = filter_name[len(_DRY_RUN_PREFIX) :].partition(".")
    return f"{namespace}/{name}" if namespace and name else None


def describe_filter(filter_name: str) -> str:
    """Describe in a few words what an RBAC filter contains, for people reading a decision."""
    dry_run = dry_run_policy(filter_name)
    if dry_run is not None:
        return f"dry-run policy {dry_run}"
    return _FILTER_KINDS.get(filter_name, f"filter {filter_name}")
