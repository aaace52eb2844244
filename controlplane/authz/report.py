"""Turn a checked call into a plain record: the decision, its reason in policy terms, the evidence.

RBAC names are translated back to the AuthorizationPolicy (`namespace/name` and rule index)
that produced them, so a reader can go straight to the YAML. The record holds only strings,
numbers, booleans, lists and dicts, so it prints as JSON or YAML unchanged.
"""

from __future__ import annotations

from typing import Any, Mapping

from controlplane.authz.check import Call, Outcome
from controlplane.authz.evaluate import NO_ALLOW_MATCHED, Decision, EngineResult
from controlplane.authz.sources import ALLOW_FILTER, describe_filter, dry_run_policy, source_policy

_ACTION_NAMES = {"ALLOW": "ALLOW", "DENY": "DENY", "LOG": "AUDIT"}


def _policy_fields(rbac_policy: str | None) -> dict[str, Any]:
    source = source_policy(rbac_policy)
    return {
        "rbac_policy": rbac_policy,
        "policy": source.ref if source else None,
        "rule": source.rule if source else None,
        "fail_closed": source.fail_closed if source else False,
    }


def _policy_text(rbac_policy: str | None) -> str:
    source = source_policy(rbac_policy)
    if source is None:
        return str(rbac_policy)
    return source.describe()


def decision_reason(outcome: Outcome) -> str:
    """Word the reason in AuthorizationPolicy terms, e.g. `allowed by ALLOW policy payments/x rule 0`."""
    decision = outcome.decision
    if decision is None:
        return outcome.reason
    filter_name = decision.filter_name or ""
    if not decision.allowed:
        last = decision.enforced[-1]
        if last.action == "DENY":
            return f"denied by DENY policy {_policy_text(last.matched_policy)}"
        if filter_name == ALLOW_FILTER:
            return NO_ALLOW_MATCHED
        return f"{NO_ALLOW_MATCHED} in the {describe_filter(filter_name)}"
    if decision.policy is not None:
        return f"allowed by ALLOW policy {_policy_text(decision.policy)}"
    if decision.filter_name is not None:
        return f"allowed by {describe_filter(filter_name)}"
    return "allowed: no ALLOW policy selects the workload and no DENY policy matched"


def _dry_run_entry(result: EngineResult) -> dict[str, Any]:
    return {
        "filter": result.filter_name,
        "dry_run_policy": dry_run_policy(result.filter_name),
        "action": _ACTION_NAMES[result.action],
        "result": "allow" if result.allowed else "deny",
        **_policy_fields(result.matched_policy),
    }


def _audit_entry(result: EngineResult) -> dict[str, Any]:
    return {"filter": result.filter_name, **_policy_fields(result.matched_policy)}


def _decisions(outcome: Outcome) -> list[Decision]:
    return [d for d in (outcome.network, outcome.http) if d is not None]


def _path_record(call: Call, outcome: Outcome) -> dict[str, Any] | None:
    if outcome.chain is None or outcome.chain.path_settings is None:
        return None
    settings = outcome.chain.path_settings
    return {
        "sent": call.path,
        "normalized": outcome.path.path if outcome.path else None,
        "normalize_path": settings.normalize_path,
        "merge_slashes": settings.merge_slashes,
        "escaped_slashes": settings.escaped_slashes_action,
    }


def outcome_record(call: Call, outcome: Outcome, context: Mapping[str, Any]) -> dict[str, Any]:
    """Build the whole explanation as one record.

    `context` supplies what the call does not hold: `caller` and `callee` as the user named
    them, `source_ip_given` (False when the source IP is a default), and `problems`, the
    control plane's translation problems for the callee.
    """
    decision = outcome.decision
    deciding = None
    if decision is not None and decision.filter_name is not None:
        deciding = {"filter": decision.filter_name, "holds": describe_filter(decision.filter_name), **_policy_fields(decision.policy)}
    chain = outcome.chain
    http = chain is not None and chain.protocol == "http"
    notes = list(outcome.notes)
    if not context.get("source_ip_given", True) and outcome.stage != "transport":
        notes.append(f"source IP {call.source_ip} is assumed; pass --source-ip when policies match addresses")
    if http and outcome.path is not None and outcome.path.changed:
        notes.append(f"Envoy normalizes the path {call.path} to {outcome.path.path} before authorization")
    return {
        "decision": "ALLOW" if outcome.allowed else "DENY",
        "reason": decision_reason(outcome),
        "stage": outcome.stage,
        "from": {
            "caller": context.get("caller"),
            "principal": call.principal,
            "principal_seen": outcome.principal_seen,
            "transport": "mtls" if outcome.tls else "plaintext",
            "source_ip": call.source_ip,
        },
        "to": {
            "workload": context.get("callee"),
            "address": call.destination_ip,
            "port": call.port,
            "protocol": chain.protocol if chain else None,
            "listener": chain.listener if chain else None,
            "filter_chain": chain.chain if chain else None,
        },
        "request": {
            "method": call.method if http else None,
            "host": call.host if http else None,
            "headers": {name: list(values) for name, values in call.headers.items()} if http else {},
            "path": _path_record(call, outcome),
        },
        "deciding": deciding,
        "response_code_details": decision.response_code_details if decision is not None else None,
        "dry_run": [_dry_run_entry(r) for d in _decisions(outcome) for r in d.shadow],
        "audit": [_audit_entry(r) for d in _decisions(outcome) for r in d.logged],
        "notes": notes,
        "problems": _relevant_problems(deciding, context.get("problems", [])),
    }


def _relevant_problems(deciding: Mapping[str, Any] | None, problems: list[str]) -> list[str]:
    """Translation problems that explain a fail-closed decision; all of them for a fail-closed filter."""
    if deciding is None:
        return []
    if deciding["fail_closed"]:
        return [p for p in problems if p.startswith(f"AuthorizationPolicy {deciding['policy']}:")]
    if deciding["rbac_policy"] is None and "regular expression" in deciding["holds"]:
        return [p for p in problems if "RE2" in p]
    return []
