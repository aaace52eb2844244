"""Apply the sidecar template to one pod (or pod template): a pure function shared by the
admission webhook and `meshctl inject`.

The result contains the patched pod and the RFC 6902 JSON Patch that turns the input into it.
Only "add" operations are used, so the patch never touches what the pod already had.
Injection is idempotent: a pod that carries `idmesh.io/status`, or already has a container
named like ours, is returned unchanged with an empty patch.

Ordering: the init container and (by default) the proxy, as a restartable init container, are
appended after the pod's own init containers. Those run before capture is installed, so their
traffic is neither captured nor sent through Envoy.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from controlplane.injector.containers import (
    INIT_CONTAINER,
    PROXY_CONTAINER,
    VOLUMES,
    init_container,
    proxy_container,
    volumes,
)
from controlplane.injector.decision import STATUS_ANNOTATION, injection_decision
from controlplane.injector.settings import TEMPLATE_VERSION, InjectionSettings, capture_settings

JSONPatch = dict[str, Any]


@dataclass(frozen=True, slots=True)
class InjectionResult:
    """The pod after injection, the patch that produced it, and why it was (or was not) injected."""

    patched_pod: dict[str, Any]
    patch: list[JSONPatch]
    injected: bool
    reason: str
    warnings: tuple[str, ...] = field(default=())


def inject_pod(
    pod: Mapping[str, Any],
    *,
    namespace_labels: Mapping[str, str],
    settings: InjectionSettings,
    owner_kind: str = "Pod",
    workload: str | None = None,
) -> InjectionResult:
    """Decide and apply injection for `pod`, a Pod or the `template` of a workload.

    `owner_kind` names the workload kind for messages ("Deployment" for its pod template).
    `workload` is the workload's name; without it the name comes from the pod's controller
    reference. `pod` is not modified.
    """
    metadata = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    annotations = metadata.get("annotations") or {}

    existing = _existing_injection(metadata, spec)
    if existing:
        return InjectionResult(copy.deepcopy(dict(pod)), [], False, existing)

    decision = injection_decision(
        namespace_labels=namespace_labels,
        pod_annotations=annotations,
        host_network=bool(spec.get("hostNetwork")),
        owner_kind=owner_kind,
    )
    warnings = [decision.warning] if decision.warning else []
    if not decision.inject:
        return InjectionResult(copy.deepcopy(dict(pod)), [], False, decision.reason, tuple(warnings))

    taken = sorted(set(VOLUMES) & {volume.get("name") for volume in spec.get("volumes") or []})
    if taken:
        reason = f"the pod already has volumes named {', '.join(taken)}, which the sidecar needs"
        return InjectionResult(copy.deepcopy(dict(pod)), [], False, reason, (*warnings, f"not injected: {reason}"))

    capture, capture_warnings = capture_settings(settings, annotations)
    warnings += capture_warnings
    proxy = proxy_container(settings, workload=workload or workload_name(metadata), labels=metadata.get("labels") or {})
    init = init_container(settings, capture)
    new_init = [init, proxy] if settings.native_sidecar else [init]
    new_containers = [] if settings.native_sidecar else [proxy]
    new_volumes = volumes(settings)
    status = json.dumps({
        "version": TEMPLATE_VERSION,
        "initContainers": [container["name"] for container in new_init],
        "containers": [container["name"] for container in new_containers],
        "volumes": [volume["name"] for volume in new_volumes],
    }, separators=(",", ":"))

    patch: list[JSONPatch] = []
    for key in ("metadata", "spec"):
        if pod.get(key) is None:
            patch.append({"op": "add", "path": f"/{key}", "value": {}})
    _add_to_map(patch, metadata, "/metadata", "annotations", STATUS_ANNOTATION, status)
    _add_to_list(patch, spec, "/spec", "initContainers", new_init)
    _add_to_list(patch, spec, "/spec", "containers", new_containers)
    _add_to_list(patch, spec, "/spec", "volumes", new_volumes)

    patched = copy.deepcopy(dict(pod))
    patched_meta = patched["metadata"] = patched.get("metadata") or {}
    patched_meta["annotations"] = {**(patched_meta.get("annotations") or {}), STATUS_ANNOTATION: status}
    patched_spec = patched["spec"] = patched.get("spec") or {}
    for key, items in (("initContainers", new_init), ("containers", new_containers), ("volumes", new_volumes)):
        if items:
            patched_spec[key] = [*(patched_spec.get(key) or []), *copy.deepcopy(items)]
    return InjectionResult(patched, patch, True, decision.reason, tuple(warnings))


def _existing_injection(metadata: Mapping[str, Any], spec: Mapping[str, Any]) -> str:
    if STATUS_ANNOTATION in (metadata.get("annotations") or {}):
        return f"already injected: the pod has the {STATUS_ANNOTATION} annotation"
    names = {c.get("name") for key in ("containers", "initContainers") for c in spec.get(key) or []}
    ours = sorted(names & {PROXY_CONTAINER, INIT_CONTAINER})
    if ours:
        return f"already injected: the pod has containers named {', '.join(ours)}"
    return ""


def workload_name(metadata: Mapping[str, Any]) -> str:
    """Name the pod's workload: its controller (a ReplicaSet's Deployment), else the pod itself.

    Returns "" when the pod has neither a controller nor a name yet, and the sidecar then takes
    the pod's name from the downward API.
    """
    for reference in metadata.get("ownerReferences") or []:
        if not reference.get("controller"):
            continue
        name = str(reference.get("name", ""))
        template_hash = (metadata.get("labels") or {}).get("pod-template-hash")
        # A Deployment names its ReplicaSets "<deployment>-<pod-template-hash>".
        if reference.get("kind") == "ReplicaSet" and template_hash and name.endswith(f"-{template_hash}"):
            return name[: -len(template_hash) - 1]
        return name
    return str(metadata.get("name") or "")


def _pointer(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def _add_to_map(patch: list[JSONPatch], parent: Mapping[str, Any], path: str, key: str, name: str, value: Any) -> None:
    if parent.get(key) is None:
        patch.append({"op": "add", "path": f"{path}/{key}", "value": {name: value}})
    else:
        patch.append({"op": "add", "path": f"{path}/{key}/{_pointer(name)}", "value": value})


def _add_to_list(patch: list[JSONPatch], parent: Mapping[str, Any], path: str, key: str, items: list[Any]) -> None:
    if not items:
        return
    if parent.get(key) is None:
        patch.append({"op": "add", "path": f"{path}/{key}", "value": copy.deepcopy(items)})
        return
    for item in items:
        patch.append({"op": "add", "path": f"{path}/{key}/-", "value": copy.deepcopy(item)})
