"""AuthorizationPolicy and PeerAuthentication from `security.idmesh.io/v1` or Istio's group.

Both kinds follow Istio's schema and semantics, so Istio security YAML applies unchanged. Unknown
fields are errors, as under a structural CRD schema.

Invalid objects are not dropped, because dropping a policy can open access. An invalid
AuthorizationPolicy keeps its selector and gets `error` set, so it fails closed (denies every
request) for the workloads it selects. When the selector itself cannot be read, the policy is
widened to its whole namespace (the whole mesh in the root namespace). An invalid
PeerAuthentication reads as mode STRICT with no port-level settings, for the same scope.
"""

from __future__ import annotations

from typing import Any, Mapping

from controlplane.errors import ValidationError
from controlplane.model.fields import (
    ObjectErrors,
    as_list,
    as_mapping,
    as_str,
    check_fields,
    child,
    item,
    map_key,
    show,
)
from controlplane.model.metadata import read_labels, read_metadata
from controlplane.model.rules import FAILS_CLOSED, read_rule
from controlplane.model.types import AuthorizationPolicy, PeerAuthentication, frozen_map

IDMESH_GROUP = "security.idmesh.io"
ISTIO_GROUP = "security.istio.io"
API_VERSIONS = (f"{IDMESH_GROUP}/v1", f"{ISTIO_GROUP}/v1", f"{ISTIO_GROUP}/v1beta1")
POLICY_GROUPS = (IDMESH_GROUP, ISTIO_GROUP)

DRY_RUN_ANNOTATIONS = ("idmesh.io/dry-run", "istio.io/dry-run")
ACTIONS = ("ALLOW", "DENY", "AUDIT", "CUSTOM")
MTLS_MODES = ("UNSET", "DISABLE", "PERMISSIVE", "STRICT")
TOP_LEVEL_FIELDS = ("apiVersion", "kind", "metadata", "spec", "status")


def check_api_version(obj: Mapping[str, Any], errors: ObjectErrors) -> None:
    api_version = obj.get("apiVersion")
    if api_version not in API_VERSIONS:
        errors.add("apiVersion", f"{show(api_version)} is not supported; use one of {', '.join(API_VERSIONS)}", api_version)


def _read_spec(obj: Mapping[str, Any], errors: ObjectErrors) -> Mapping[str, Any]:
    check_fields(obj, TOP_LEVEL_FIELDS, "", errors)
    spec = obj.get("spec")
    if spec is None:
        return {}
    return as_mapping(spec, "spec", errors) or {}


def _selector_scope(namespace: str, root_namespace: str) -> str:
    if namespace == root_namespace:
        return f"every workload in the mesh (policies in the root namespace {root_namespace} apply mesh-wide)"
    return f"every workload in namespace {namespace}"


def read_selector(
    spec: Mapping[str, Any], errors: ObjectErrors, *, consequence: str
) -> tuple[Mapping[str, str] | None, bool]:
    """Read `spec.selector`; return the labels (None when absent) and whether it was readable.

    Each selector error ends with `consequence`, which states what happens to the policy when its
    selector cannot be read.
    """
    if "selector" not in spec:
        return None, True
    own = ObjectErrors(errors.kind, errors.namespace, errors.name)
    labels: dict[str, str] = {}
    selector = as_mapping(spec["selector"], "spec.selector", own)
    if selector is not None:
        check_fields(selector, ("matchLabels",), "spec.selector", own)
        if "matchLabels" in selector:
            labels = read_labels(selector["matchLabels"], own, "spec.selector.matchLabels")
    for error in own.errors:
        errors.add(error.path, f"{error.detail}; {consequence}", error.value)
    if own:
        return None, False
    return frozen_map(labels), True


def dry_run(annotations: Mapping[str, str]) -> bool:
    return any(annotations.get(key) == "true" for key in DRY_RUN_ANNOTATIONS)


def parse_authorization_policy(
    obj: Mapping[str, Any], *, root_namespace: str
) -> tuple[AuthorizationPolicy | None, list[ValidationError]]:
    """Parse one AuthorizationPolicy; None only when it cannot be identified."""
    errors = ObjectErrors("AuthorizationPolicy")
    meta = read_metadata(obj, errors)
    if meta is None:
        return None, errors.errors
    # An unknown version of a policy group still fails closed rather than being skipped.
    check_api_version(obj, errors)
    spec = _read_spec(obj, errors)
    check_fields(spec, ("selector", "targetRef", "targetRefs", "action", "provider", "rules"), "spec", errors)

    scope = _selector_scope(meta.namespace, root_namespace)
    selector, _ = read_selector(
        spec, errors, consequence=f"the selector cannot be read, so the policy fails closed for {scope}"
    )
    for field in ("targetRef", "targetRefs"):
        if field in spec:
            errors.add(child("spec", field), f"is not supported, because idmesh has no gateways or waypoints; {FAILS_CLOSED}", spec[field], unsupported=True)

    action = _read_action(spec, errors)
    provider = _read_provider(spec, action, errors)
    rules = []
    if "rules" in spec:
        for index, rule in enumerate(as_list(spec["rules"], "spec.rules", errors) or ()):
            rules.append(read_rule(rule, item("spec.rules", index), errors))

    policy = AuthorizationPolicy(
        namespace=meta.namespace,
        name=meta.name,
        action=action,
        selector=selector,
        rules=tuple(rules),
        provider=provider,
        dry_run=dry_run(meta.annotations),
        api_version=obj["apiVersion"],
        error=errors.summary() or None,
    )
    return policy, errors.errors


def _read_action(spec: Mapping[str, Any], errors: ObjectErrors) -> Any:
    if "action" not in spec:
        return "ALLOW"
    action = spec["action"]
    if action not in ACTIONS:
        errors.add("spec.action", f"{show(action)} is not an action; use one of {', '.join(ACTIONS)}", action)
        return "ALLOW"
    if action == "CUSTOM":
        errors.add("spec.action", f"CUSTOM is not supported, because idmesh has no external authorizers; {FAILS_CLOSED}", action, unsupported=True)
    return action


def _read_provider(spec: Mapping[str, Any], action: str, errors: ObjectErrors) -> str:
    if "provider" not in spec:
        return ""
    provider = as_mapping(spec["provider"], "spec.provider", errors)
    if provider is None:
        return ""
    if action != "CUSTOM":
        errors.add("spec.provider", f"is only allowed with action CUSTOM, not {action}", provider)
    check_fields(provider, ("name",), "spec.provider", errors)
    name = as_str(provider.get("name", ""), "spec.provider.name", errors)
    return name or ""


def parse_peer_authentication(
    obj: Mapping[str, Any], *, root_namespace: str
) -> tuple[PeerAuthentication | None, list[ValidationError]]:
    """Parse one PeerAuthentication; None only when it cannot be identified."""
    errors = ObjectErrors("PeerAuthentication")
    meta = read_metadata(obj, errors)
    if meta is None:
        return None, errors.errors
    # An unknown version of a policy group still fails closed rather than being skipped.
    check_api_version(obj, errors)
    spec = _read_spec(obj, errors)
    check_fields(spec, ("selector", "mtls", "portLevelMtls"), "spec", errors)

    scope = _selector_scope(meta.namespace, root_namespace)
    selector, _ = read_selector(
        spec, errors, consequence=f"the selector cannot be read, so mTLS is STRICT for {scope}"
    )
    mode = _read_mode(spec.get("mtls"), "spec.mtls", errors) if "mtls" in spec else "UNSET"
    port_level: dict[int, Any] = {}
    if "portLevelMtls" in spec:
        if not selector:
            errors.add("spec.portLevelMtls", "is only allowed together with a selector with matchLabels", spec["portLevelMtls"])
        port_level = _read_port_level(spec["portLevelMtls"], errors)

    if errors:
        # Requiring mTLS is the reading that cannot let plaintext through by mistake.
        mode, port_level = "STRICT", {}
    peer_authentication = PeerAuthentication(
        namespace=meta.namespace,
        name=meta.name,
        selector=selector,
        mode=mode,
        port_level=frozen_map(port_level),
        api_version=obj["apiVersion"],
        error=errors.summary() or None,
    )
    return peer_authentication, errors.errors


def _read_mode(value: Any, path: str, errors: ObjectErrors) -> Any:
    mtls = as_mapping(value, path, errors)
    if mtls is None:
        return "UNSET"
    check_fields(mtls, ("mode",), path, errors)
    mode = mtls.get("mode", "UNSET")
    if mode not in MTLS_MODES:
        errors.add(child(path, "mode"), f"{show(mode)} is not an mTLS mode; use one of {', '.join(MTLS_MODES)}", mode)
        return "UNSET"
    return mode


def _read_port_level(value: Any, errors: ObjectErrors) -> dict[int, Any]:
    ports = as_mapping(value, "spec.portLevelMtls", errors)
    result: dict[int, Any] = {}
    for key, mtls in (ports or {}).items():
        path = map_key("spec.portLevelMtls", key)
        number = _port_key(key)
        if number is None:
            errors.add(path, f"{show(key)} is not a port number; use a number from 1 to 65535", key)
            continue
        result[number] = _read_mode(mtls, path, errors)
    return result


def _port_key(key: Any) -> int | None:
    # YAML reads `8080:` as an int and `"8080":` as a string; both name the port.
    if isinstance(key, bool):
        return None
    if isinstance(key, str) and key.isascii() and key.isdigit():
        key = int(key)
    if isinstance(key, int) and 1 <= key <= 65535:
        return key
    return None
