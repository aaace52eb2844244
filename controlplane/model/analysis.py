"""Findings about a parsed mesh: invalid objects (errors) and risky ones (warnings).

`meshctl analyze` prints these; the functions are pure so that the control plane can report the
same findings in status. Errors are objects that are left out or fail closed. Warnings are
objects that are in force but probably do not do what their author meant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Literal, Mapping

from controlplane.errors import ValidationError
from controlplane.injector.decision import (
    INJECT_ANNOTATION,
    INJECTION_LABEL,
    NAMESPACE_VALUES,
    POD_VALUES,
    injection_decision,
)
from controlplane.model.fields import map_key, show
from controlplane.model.meshconfig import CONFIGMAP_NAME
from controlplane.model.parse import kind_key
from controlplane.model.policy import DRY_RUN_ANNOTATIONS
from controlplane.model.selection import policy_selects, service_selects, target_port_for
from controlplane.model.types import AuthorizationPolicy, MeshState, Operation, Rule, Workload

Severity = Literal["error", "warning"]

HTTP_ONLY_OPERATION_FIELDS = ("hosts", "not_hosts", "methods", "not_methods", "paths", "not_paths")
HEADER_CONDITION_PREFIX = "request.headers["


@dataclass(frozen=True, slots=True)
class Finding:
    severity: Severity
    code: str
    # The object at fault as "Kind namespace/name", or a file name for unreadable files.
    object: str
    path: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {
            "severity": self.severity,
            "code": self.code,
            "object": self.object,
            "path": self.path,
            "message": self.message,
        }


def analyze(state: MeshState, objects: Iterable[Mapping[str, Any]] = ()) -> list[Finding]:
    """Return every finding, errors first. `objects` are the raw objects behind `state`, for
    checks on fields the model does not keep (annotations of Deployments and policies)."""
    objects = list(objects)
    findings = [*_error_findings(state), *_fail_closed_findings(state)]
    findings += _selects_nothing(state)
    for policy in state.authorization_policies:
        findings += _http_fields_on_tcp(state, policy)
        findings += _principal_findings(state, policy)
    findings += _injection_findings(state)
    findings += _annotation_findings(state, objects)
    return sorted(findings, key=lambda finding: finding.severity != "error")


def _error_findings(state: MeshState) -> list[Finding]:
    findings = []
    for error in state.errors:
        if isinstance(error, ValidationError):
            ref = f"{error.kind} {error.namespace}/{error.name}" if error.namespace else f"{error.kind} {error.name}"
            code = "unsupported-feature" if error.fields().get("unsupported") else "invalid-object"
            findings.append(Finding("error", code, ref, error.path, error.detail))
        else:
            findings.append(Finding("error", "invalid-object", "", "", str(error)))
    return findings


def _selected(state: MeshState, namespace: str, selector: Mapping[str, str] | None) -> list[Workload]:
    root = state.config.root_namespace
    return [w for w in state.workloads if policy_selects(namespace=namespace, selector=selector, workload=w, root_namespace=root)]


def _fail_closed_findings(state: MeshState) -> list[Finding]:
    findings = []
    for policy in (*state.authorization_policies, *state.peer_authentications):
        if policy.error is None:
            continue
        names = ", ".join(str(w.ref) for w in _selected(state, policy.namespace, policy.selector)) or "none right now"
        if isinstance(policy, AuthorizationPolicy):
            message = f"the policy is invalid, so every workload it selects denies all requests; selected: {names}"
        else:
            message = f"the PeerAuthentication is invalid, so it reads as mode STRICT; selected: {names}"
        findings.append(Finding("error", "fails-closed", str(policy.ref), "", message))
    return findings


def _selects_nothing(state: MeshState) -> list[Finding]:
    findings = []
    for policy in (*state.authorization_policies, *state.peer_authentications):
        if _selected(state, policy.namespace, policy.selector):
            continue
        if policy.namespace == state.config.root_namespace:
            where = "the mesh has no workloads"
            if policy.selector:
                where = f"no workload in the mesh has labels {_labels(policy.selector)}"
        elif policy.selector:
            where = f"no workload in namespace {policy.namespace} has labels {_labels(policy.selector)}"
        else:
            where = f"namespace {policy.namespace} has no workloads"
        findings.append(Finding("warning", "selects-no-workload", str(policy.ref), "spec.selector", f"selects no workload: {where}"))
    return findings


def _labels(selector: Mapping[str, str]) -> str:
    return ",".join(f"{key}={value}" for key, value in sorted(selector.items()))


def _port_protocols(state: MeshState, workload: Workload) -> dict[int, set[str]]:
    """Map each container port that a Service reaches on `workload` to the mesh protocols of the
    Service ports that reach it."""
    ports: dict[int, set[str]] = {}
    for service in state.services:
        if not service_selects(service, workload):
            continue
        for port in service.ports:
            target = target_port_for(port, workload)
            if target is not None:
                ports.setdefault(target, set()).add(port.mesh_protocol)
    return ports


def _http_only_fields(rule: Rule, operation: Operation | None) -> list[str]:
    fields = []
    if operation is not None:
        fields = [name for name in HTTP_ONLY_OPERATION_FIELDS if getattr(operation, name)]
    fields += [c.key for c in rule.conditions if c.key.startswith(HEADER_CONDITION_PREFIX)]
    return fields


def _http_fields_on_tcp(state: MeshState, policy: AuthorizationPolicy) -> list[Finding]:
    if policy.error is not None:
        return []
    findings = []
    workloads = _selected(state, policy.namespace, policy.selector)
    for index, rule in enumerate(policy.rules):
        for op_index, operation in enumerate(rule.operations or (None,)):
            fields = _http_only_fields(rule, operation)
            if not fields:
                continue
            path = f"spec.rules[{index}].to[{op_index}].operation" if operation is not None else f"spec.rules[{index}].when"
            for workload in workloads:
                tcp_ports = _tcp_ports(state, workload, operation)
                if tcp_ports:
                    findings.append(
                        Finding("warning", "http-fields-on-tcp-port", str(policy.ref), path, _tcp_message(policy, fields, workload, tcp_ports))
                    )
    return findings


def _tcp_ports(state: MeshState, workload: Workload, operation: Operation | None) -> list[int]:
    protocols = _port_protocols(state, workload)
    ports = sorted(protocols)
    if operation is not None and operation.ports:
        # A listed port that no Service reaches is proxied as plain TCP.
        ports = sorted(int(port) for port in operation.ports)
    return [port for port in ports if protocols.get(port, {"tcp"}) == {"tcp"}]


def _tcp_message(policy: AuthorizationPolicy, fields: list[str], workload: Workload, ports: list[int]) -> str:
    names = ", ".join(_api_name(field) for field in fields)
    port_list = ", ".join(str(port) for port in ports)
    if policy.action == "ALLOW":
        effect = "so this rule never matches there"
    else:
        effect = "so they are ignored there and the rule matches on its other fields alone"
    return (
        f"{names} can only be checked on HTTP, but port {port_list} of {workload.ref} is TCP, {effect}; "
        "name the Service port http-* (or set appProtocol) or remove those fields"
    )


def _api_name(field: str) -> str:
    head, *rest = field.split("_")
    return head + "".join(part.capitalize() for part in rest)


def _principal_findings(state: MeshState, policy: AuthorizationPolicy) -> list[Finding]:
    findings = []
    for path, value, positive in _principal_values(policy):
        if value == "*" and positive and policy.action == "ALLOW":
            findings.append(
                Finding(
                    "warning",
                    "wildcard-principal",
                    str(policy.ref),
                    path,
                    '"*" allows any authenticated peer of every trusted trust domain; list the principals that need access',
                )
            )
            continue
        trust_domain = value.removeprefix("spiffe://").split("/", 1)[0]
        if "*" in trust_domain or trust_domain == "cluster.local" or trust_domain in state.config.trust_domains:
            continue
        accepted = ", ".join(state.config.trust_domains)
        findings.append(
            Finding(
                "warning",
                "principal-outside-trust-domain",
                str(policy.ref),
                path,
                f"{show(value)} is in trust domain {trust_domain}, which is not the mesh's trust domain "
                f"or an alias (trusted: {accepted}), so no peer presents it",
            )
        )
    return findings


def _principal_values(policy: AuthorizationPolicy) -> Iterable[tuple[str, str, bool]]:
    """Yield (field path, principal, whether the field matches it positively)."""
    for index, rule in enumerate(policy.rules):
        base = f"spec.rules[{index}]"
        for source_index, source in enumerate(rule.sources):
            for name, values, positive in (("principals", source.principals, True), ("notPrincipals", source.not_principals, False)):
                for value_index, value in enumerate(values):
                    yield f"{base}.from[{source_index}].source.{name}[{value_index}]", value, positive
        for condition_index, condition in enumerate(rule.conditions):
            if condition.key != "source.principal":
                continue
            for name, values, positive in (("values", condition.values, True), ("notValues", condition.not_values, False)):
                for value_index, value in enumerate(values):
                    yield f"{base}.when[{condition_index}].{name}[{value_index}]", value, positive


def _injection_findings(state: MeshState) -> list[Finding]:
    findings = []
    namespace_labels = {namespace.name: namespace.labels for namespace in state.namespaces}
    for namespace in state.namespaces:
        value = namespace.labels.get(INJECTION_LABEL)
        if value is not None and value not in NAMESPACE_VALUES:
            findings.append(
                Finding(
                    "warning",
                    "unknown-injection-value",
                    f"Namespace {namespace.name}",
                    map_key("metadata.labels", INJECTION_LABEL),
                    f'{show(value)} is not "enabled" or "disabled"; it is treated as unset',
                )
            )
    for workload in state.workloads:
        annotations_path = "metadata.annotations" if workload.kind == "Pod" else "spec.template.metadata.annotations"
        path = map_key(annotations_path, INJECT_ANNOTATION)
        decision = injection_decision(
            namespace_labels=namespace_labels.get(workload.namespace, {}),
            pod_annotations=workload.annotations,
            host_network=workload.host_network,
            owner_kind=workload.kind,
        )
        value = workload.annotations.get(INJECT_ANNOTATION)
        if value is not None and value not in POD_VALUES:
            outcome = "injected" if decision.inject else "not injected"
            findings.append(
                Finding(
                    "warning",
                    "unknown-injection-value",
                    str(workload.ref),
                    path,
                    f'{show(value)} is not "true" or "false"; it is treated as unset, so the workload is {outcome}',
                )
            )
        if workload.host_network and decision.warning and "hostNetwork" in decision.warning:
            findings.append(Finding("warning", "host-network-injection", str(workload.ref), path, f"{decision.reason}; remove the request or hostNetwork"))
    return findings


def _annotation_findings(state: MeshState, objects: list[Mapping[str, Any]]) -> list[Finding]:
    """Checks on raw objects: annotations the model drops, and ConfigMaps it ignores."""
    findings = []
    for obj in objects:
        kind = kind_key(obj)
        meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
        annotations = meta.get("annotations") if isinstance(meta.get("annotations"), dict) else {}
        ref = f"{obj.get('kind')} {meta.get('namespace', 'default')}/{meta.get('name')}"
        if kind == "Deployment" and INJECT_ANNOTATION in annotations:
            findings.append(
                Finding(
                    "warning",
                    "inject-annotation-on-deployment",
                    ref,
                    map_key("metadata.annotations", INJECT_ANNOTATION),
                    "is ignored, because only the pod template's annotations count; "
                    "move it to spec.template.metadata.annotations",
                )
            )
        if kind in ("AuthorizationPolicy", "PeerAuthentication"):
            for key in DRY_RUN_ANNOTATIONS:
                if key in annotations and annotations[key] not in ("true", "false"):
                    findings.append(
                        Finding(
                            "warning",
                            "unknown-dry-run-value",
                            ref,
                            map_key("metadata.annotations", key),
                            f'{show(annotations[key])} is not "true" or "false"; the policy is enforced',
                        )
                    )
        if kind == "ConfigMap" and meta.get("name") == CONFIGMAP_NAME and meta.get("namespace", "default") != state.config.root_namespace:
            findings.append(
                Finding(
                    "warning",
                    "mesh-config-ignored",
                    ref,
                    "",
                    f"is not in the root namespace {state.config.root_namespace}, so its settings are ignored",
                )
            )
    return findings
