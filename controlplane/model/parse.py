"""Turn Kubernetes API objects into one `MeshState`.

`parse_objects` is the single entry point for both sources: the Kubernetes informers and a folder
of YAML. It never raises on bad input. Every problem becomes a `ValidationError` in
`MeshState.errors`, and the object concerned is left out (workloads, Services, settings) or
fails closed (policies).

Endpoints come from EndpointSlices (Kubernetes mode). In local mode there are none, so after
giving workloads their addresses the caller fills them in with `endpoints_from_selectors`:

    state = dataclasses.replace(state, endpoints=endpoints_from_selectors(state))
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable, Iterable, Mapping, TypeVar

from controlplane.errors import ValidationError
from controlplane.model.endpoints import parse_endpoint_slice
from controlplane.model.meshconfig import mesh_config_from_objects
from controlplane.model.metadata import object_kind
from controlplane.model.policy import POLICY_GROUPS, parse_authorization_policy, parse_peer_authentication
from controlplane.model.services import parse_service, resolve_target_ports
from controlplane.model.types import MeshConfig, MeshState
from controlplane.model.workloads import parse_deployment, parse_namespace, parse_pod, parse_service_account

T = TypeVar("T")

CORE_KINDS = ("Namespace", "ServiceAccount", "Pod", "Service", "ConfigMap")


def kind_key(obj: Mapping[str, Any]) -> str:
    """Classify an object as one of the kinds the mesh reads, or "" for any other."""
    group, kind = object_kind(obj)
    if group == "" and kind in CORE_KINDS:
        return kind
    if (group, kind) == ("apps", "Deployment"):
        return "Deployment"
    if (group, kind) == ("discovery.k8s.io", "EndpointSlice"):
        return "EndpointSlice"
    if group in POLICY_GROUPS and kind in ("AuthorizationPolicy", "PeerAuthentication"):
        return kind
    return ""


def parse_objects(objects: Iterable[Mapping[str, Any]], *, config: MeshConfig | None = None) -> MeshState:
    """Parse every object the mesh reads; other kinds are ignored.

    `config` contains settings from the command line or defaults; the `idmesh` ConfigMap in its
    root namespace overrides the keys it sets.
    """
    by_kind: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for obj in objects:
        if isinstance(obj, Mapping) and (key := kind_key(obj)):
            by_kind[key].append(obj)

    errors: list[ValidationError] = []
    mesh_config, config_errors = mesh_config_from_objects(by_kind["ConfigMap"], base=config or MeshConfig())
    errors.extend(config_errors)

    def collect(kind: str, parse: Callable[[Mapping[str, Any]], tuple[T | None, list[ValidationError]]]) -> list[T]:
        parsed = []
        for obj in by_kind[kind]:
            value, problems = parse(obj)
            errors.extend(problems)
            if value is not None:
                parsed.append(value)
        return _unique(parsed, kind, errors)

    namespaces = collect("Namespace", parse_namespace)
    namespace_labels = {namespace.name: namespace.labels for namespace in namespaces}
    service_accounts = collect("ServiceAccount", parse_service_account)
    workloads = collect("Pod", lambda obj: parse_pod(obj, namespace_labels=namespace_labels))
    workloads += collect("Deployment", lambda obj: parse_deployment(obj, namespace_labels=namespace_labels))
    services = resolve_target_ports(collect("Service", parse_service), workloads)
    root = mesh_config.root_namespace
    authorization_policies = collect("AuthorizationPolicy", lambda obj: parse_authorization_policy(obj, root_namespace=root))
    peer_authentications = collect("PeerAuthentication", lambda obj: parse_peer_authentication(obj, root_namespace=root))

    endpoints = []
    for obj in by_kind["EndpointSlice"]:
        slice_endpoints, problems = parse_endpoint_slice(obj, services=services, workloads=workloads)
        endpoints.extend(slice_endpoints)
        errors.extend(problems)

    return MeshState(
        config=mesh_config,
        namespaces=tuple(namespaces),
        service_accounts=tuple(service_accounts),
        workloads=tuple(workloads),
        services=services,
        endpoints=tuple(endpoints),
        authorization_policies=tuple(authorization_policies),
        peer_authentications=tuple(peer_authentications),
        errors=tuple(errors),
    )


def _unique(values: list[T], kind: str, errors: list[ValidationError]) -> list[T]:
    """Keep the first object of each namespace/name and report later duplicates."""
    seen: set[tuple[str, str]] = set()
    kept = []
    for value in values:
        key = (getattr(value, "namespace", ""), value.name)  # type: ignore[attr-defined]
        if key in seen:
            errors.append(
                ValidationError(
                    "is defined more than once; the first definition is used",
                    kind=getattr(value, "kind", kind) if kind in ("Pod", "Deployment") else kind,
                    namespace=key[0],
                    name=key[1],
                )
            )
            continue
        seen.add(key)
        kept.append(value)
    return kept
