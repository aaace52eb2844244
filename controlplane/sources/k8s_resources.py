"""The Kubernetes resources the control plane watches, and how their objects are keyed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

# (apiVersion/kind, namespace, name), with namespace "" for cluster-scoped objects.
ObjectKey = tuple[str, str, str]

# The ConfigMap in the root namespace that contains the mesh-wide settings.
MESH_CONFIGMAP_NAME = "idmesh"

POLICY_GROUPS = ("security.idmesh.io", "security.istio.io")


@dataclass(frozen=True, slots=True)
class ResourceKind:
    """One collection to list and watch."""

    group: str
    version: str
    plural: str
    kind: str
    # Served only where its CustomResourceDefinition is installed, so discovered first.
    crd: bool = False
    # Restrict the collection to one namespace, and to one object name by field selector.
    namespace: str | None = None
    name: str | None = None

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_version_path(self) -> str:
        """The discovery path of the API group version, such as `/apis/discovery.k8s.io/v1`."""
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"

    @property
    def path(self) -> str:
        """The collection path to list and watch."""
        scope = f"/namespaces/{self.namespace}" if self.namespace else ""
        return f"{self.group_version_path}{scope}/{self.plural}"

    @property
    def field_selector(self) -> str | None:
        return f"metadata.name={self.name}" if self.name else None

    @property
    def type_name(self) -> str:
        """The first part of an `ObjectKey`: `apiVersion/kind`, such as `v1/Pod`."""
        return f"{self.api_version}/{self.kind}"

    def __str__(self) -> str:
        return self.path

    def key_of(self, obj: Mapping[str, Any]) -> ObjectKey:
        metadata = obj.get("metadata") or {}
        return (self.type_name, metadata.get("namespace") or "", metadata.get("name") or "")

    def complete(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Set `apiVersion` and `kind`, which the API leaves out of the items of a list."""
        obj["apiVersion"] = self.api_version
        obj["kind"] = self.kind
        return obj


def watched_kinds(root_namespace: str) -> tuple[ResourceKind, ...]:
    """Return every collection the control plane watches, the policy CRDs of both groups included."""
    core = (
        ResourceKind("", "v1", "namespaces", "Namespace"),
        ResourceKind("", "v1", "serviceaccounts", "ServiceAccount"),
        ResourceKind("", "v1", "pods", "Pod"),
        ResourceKind("", "v1", "services", "Service"),
        ResourceKind("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice"),
        ResourceKind("", "v1", "configmaps", "ConfigMap", namespace=root_namespace, name=MESH_CONFIGMAP_NAME),
    )
    policies = tuple(
        ResourceKind(group, "v1", plural, kind, crd=True)
        for group in POLICY_GROUPS
        for plural, kind in (
            ("authorizationpolicies", "AuthorizationPolicy"),
            ("peerauthentications", "PeerAuthentication"),
        )
    )
    return core + policies
