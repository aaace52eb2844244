"""Whether a pod gets an idmesh sidecar: a pure function of its namespace and its own metadata.

Inputs are the namespace label `idmesh.io/injection` (`enabled` or `disabled`) and the pod
annotation `idmesh.io/inject` (`"true"` or `"false"`). Only the pod's annotations count; for a
Deployment that means its pod template, never the Deployment's own metadata, because the
admission webhook only ever sees the pod. The rules, first match wins:

1. `hostNetwork: true`: never injected. Such a pod shares the node's network namespace, so a
   sidecar capturing its traffic would capture the node's traffic too.
2. Namespace label `disabled`: not injected, whatever the pod says (an explicit namespace opt-out
   wins over a pod opt-in).
3. Pod annotation `"false"`: not injected. Pod annotation `"true"`: injected.
4. Otherwise the namespace decides: injected when the label is `enabled`.

Any other value (such as `"enabled"` on the pod, or `"True"`) is treated as unset, and the
decision carries a warning so that `meshctl analyze` and the webhook can report it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

INJECT_ANNOTATION = "idmesh.io/inject"
INJECTION_LABEL = "idmesh.io/injection"
STATUS_ANNOTATION = "idmesh.io/status"

POD_VALUES = ("true", "false")
NAMESPACE_VALUES = ("enabled", "disabled")


@dataclass(frozen=True, slots=True)
class Decision:
    inject: bool
    reason: str
    # Set when an input had an unknown value or asked for something that cannot be done.
    warning: str | None = None


def injection_decision(
    *,
    namespace_labels: Mapping[str, str],
    pod_annotations: Mapping[str, str],
    host_network: bool,
    owner_kind: str = "Pod",
) -> Decision:
    """Decide injection for one pod; `owner_kind` ("Pod", "Deployment") only words the reason."""
    annotation_name = "pod annotation" if owner_kind == "Pod" else f"{owner_kind} pod template annotation"
    warnings: list[str] = []

    pod_value = pod_annotations.get(INJECT_ANNOTATION)
    if pod_value is not None and pod_value not in POD_VALUES:
        warnings.append(
            f'{annotation_name} {INJECT_ANNOTATION}="{pod_value}" is not "true" or "false"; '
            "it is treated as unset"
        )
        pod_value = None
    namespace_value = namespace_labels.get(INJECTION_LABEL)
    if namespace_value is not None and namespace_value not in NAMESPACE_VALUES:
        warnings.append(
            f'namespace label {INJECTION_LABEL}="{namespace_value}" is not "enabled" or "disabled"; '
            "it is treated as unset"
        )
        namespace_value = None

    if host_network:
        reason = (
            "hostNetwork pods are never injected: the pod shares the node's network namespace, "
            "so the sidecar would capture the node's traffic"
        )
        if pod_value == "true" or (namespace_value == "enabled" and pod_value != "false"):
            warnings.append(f"injection was requested but {reason}")
        return Decision(False, reason, _join(warnings))

    if namespace_value == "disabled":
        reason = f"namespace label {INJECTION_LABEL}=disabled"
        if pod_value == "true":
            reason += f" wins over {annotation_name} {INJECT_ANNOTATION}=true"
        return Decision(False, reason, _join(warnings))
    if pod_value is not None:
        return Decision(pod_value == "true", f"{annotation_name} {INJECT_ANNOTATION}={pod_value}", _join(warnings))
    if namespace_value == "enabled":
        return Decision(True, f"namespace label {INJECTION_LABEL}=enabled", _join(warnings))
    return Decision(False, f"neither {annotation_name} {INJECT_ANNOTATION} nor namespace label {INJECTION_LABEL} asks for injection", _join(warnings))


def _join(warnings: list[str]) -> str | None:
    return "; ".join(warnings) or None
