"""The kinds of object an install contains, in the order they are applied.

The order puts every object after those it depends on: CRDs before anything that could use
them, the Namespace before its contents, RBAC before the pods that need it, configuration
before the Deployment that reads it, and the webhook last, so that the API server only calls
it once a control plane can answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from controlplane.install.errors import InstallError


@dataclass(frozen=True, slots=True)
class InstallKind:
    api_version: str
    kind: str
    plural: str
    namespaced: bool

    def collection_path(self, namespace: str | None) -> str:
        """Return the REST path of the collection, such as `/apis/apps/v1/namespaces/NS/deployments`."""
        prefix = f"/api/{self.api_version}" if "/" not in self.api_version else f"/apis/{self.api_version}"
        if self.namespaced:
            return f"{prefix}/namespaces/{namespace}/{self.plural}"
        return f"{prefix}/{self.plural}"


APPLY_ORDER: tuple[InstallKind, ...] = (
    InstallKind("apiextensions.k8s.io/v1", "CustomResourceDefinition", "customresourcedefinitions", False),
    InstallKind("v1", "Namespace", "namespaces", False),
    InstallKind("v1", "ServiceAccount", "serviceaccounts", True),
    InstallKind("rbac.authorization.k8s.io/v1", "ClusterRole", "clusterroles", False),
    InstallKind("rbac.authorization.k8s.io/v1", "ClusterRoleBinding", "clusterrolebindings", False),
    InstallKind("rbac.authorization.k8s.io/v1", "Role", "roles", True),
    InstallKind("rbac.authorization.k8s.io/v1", "RoleBinding", "rolebindings", True),
    InstallKind("v1", "ConfigMap", "configmaps", True),
    InstallKind("v1", "Secret", "secrets", True),
    InstallKind("v1", "Service", "services", True),
    InstallKind("apps/v1", "Deployment", "deployments", True),
    InstallKind("policy/v1", "PodDisruptionBudget", "poddisruptionbudgets", True),
    InstallKind("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration", "mutatingwebhookconfigurations", False),
)
_BY_TYPE = {(kind.api_version, kind.kind): kind for kind in APPLY_ORDER}


def reference(obj: Mapping[str, Any]) -> str:
    """Return `kind/name` in lower case, as kubectl prints objects: `deployment/idmesh-controlplane`."""
    return f"{str(obj.get('kind', '')).lower()}/{obj.get('metadata', {}).get('name', '')}"


def kind_of(obj: Mapping[str, Any]) -> InstallKind:
    """Return the install kind of `obj`, or raise `InstallError` for a kind an install never contains."""
    found = _BY_TYPE.get((obj.get("apiVersion"), obj.get("kind")))
    if found is None:
        known = ", ".join(f"{kind.api_version} {kind.kind}" for kind in APPLY_ORDER)
        raise InstallError(
            f"{reference(obj)} has apiVersion {obj.get('apiVersion')!r} and kind {obj.get('kind')!r}, "
            f"which an install does not contain; the known kinds are {known}",
            object=reference(obj),
        )
    return found


def apply_rank(obj: Mapping[str, Any]) -> int:
    """Return the position of `obj`'s kind in `APPLY_ORDER`."""
    return APPLY_ORDER.index(kind_of(obj))
