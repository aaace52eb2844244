"""Endpoints: from EndpointSlices in Kubernetes mode, from Service selectors in local mode."""

from __future__ import annotations

import ipaddress
from typing import Any, Iterable, Mapping

from controlplane.errors import ValidationError
from controlplane.model.fields import ObjectErrors, as_list, as_mapping, child, item, show
from controlplane.model.metadata import read_metadata
from controlplane.model.selection import service_selects, target_port_for
from controlplane.model.types import Endpoint, MeshState, Service, Workload

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
ADDRESS_TYPES = ("IPv4", "IPv6", "FQDN")


def endpoints_from_selectors(state: MeshState) -> tuple[Endpoint, ...]:
    """Compute endpoints for local mode: each workload with an IP, behind every Service port
    whose selector matches it, at the resolved target port. Workloads without an IP, and named
    target ports a workload does not declare, are skipped."""
    endpoints = []
    for service in state.services:
        for workload in state.workloads:
            if workload.ip is None or not service_selects(service, workload):
                continue
            for port in service.ports:
                target = target_port_for(port, workload)
                if target is None:
                    continue
                endpoints.append(
                    Endpoint(
                        namespace=service.namespace,
                        service=service.name,
                        service_port=port.port,
                        address=workload.ip,
                        port=target,
                        workload=workload.name,
                        service_account=workload.service_account,
                    )
                )
    return tuple(endpoints)


def parse_endpoint_slice(
    obj: Mapping[str, Any], *, services: Iterable[Service], workloads: Iterable[Workload]
) -> tuple[tuple[Endpoint, ...], list[ValidationError]]:
    """Parse a `discovery.k8s.io/v1` EndpointSlice into endpoints of known Service ports.

    Slice ports match Service ports by name, as the EndpointSlice controller writes them. A slice
    whose Service is not (yet) known yields nothing and no error, because the watch on Services
    may simply lag behind. FQDN slices carry no addresses the mesh can use and are skipped.
    `ready` is the endpoint's `conditions.ready`, where an absent value means ready.
    """
    errors = ObjectErrors("EndpointSlice")
    meta = read_metadata(obj, errors)
    if meta is None:
        return (), errors.errors
    service_name = meta.labels.get(SERVICE_NAME_LABEL)
    address_type = obj.get("addressType")
    if address_type not in ADDRESS_TYPES:
        errors.add("addressType", f"{show(address_type)} is not an address type; use one of {', '.join(ADDRESS_TYPES)}", address_type)
    service = next((s for s in services if s.namespace == meta.namespace and s.name == service_name), None)
    if errors or service is None or address_type == "FQDN":
        return (), errors.errors

    port_pairs = _slice_ports(obj.get("ports") or [], service, errors)
    accounts = {w.name: w.service_account for w in workloads if w.namespace == meta.namespace and w.kind == "Pod"}
    endpoints = []
    for index, entry in enumerate(as_list(obj.get("endpoints") or [], "endpoints", errors) or ()):
        path = item("endpoints", index)
        entry = as_mapping(entry, path, errors)
        if entry is None:
            continue
        ready = _ready(entry, path, errors)
        pod = _pod_name(entry)
        for address in _addresses(entry, path, errors):
            for service_port, port in port_pairs:
                endpoints.append(
                    Endpoint(
                        namespace=meta.namespace,
                        service=service.name,
                        service_port=service_port,
                        address=address,
                        port=port,
                        workload=pod,
                        service_account=accounts.get(pod, ""),
                        ready=ready,
                    )
                )
    return tuple(endpoints), errors.errors


def _slice_ports(value: Any, service: Service, errors: ObjectErrors) -> list[tuple[int, int]]:
    """Pair each slice port with the Service port of the same name: (service port, target port)."""
    by_name = {port.name: port for port in service.ports}
    pairs = []
    for index, entry in enumerate(as_list(value, "ports", errors) or ()):
        path = item("ports", index)
        entry = as_mapping(entry, path, errors)
        if entry is None:
            continue
        number = entry.get("port")
        if not isinstance(number, int) or isinstance(number, bool) or not 1 <= number <= 65535:
            errors.add(child(path, "port"), f"{show(number)} is not a port number; use an integer from 1 to 65535", number)
            continue
        name = entry.get("name") or ""
        service_port = by_name.get(name) if isinstance(name, str) else None
        if service_port is not None:
            pairs.append((service_port.port, number))
    return pairs


def _ready(entry: Mapping[str, Any], path: str, errors: ObjectErrors) -> bool:
    conditions = entry.get("conditions") or {}
    ready = conditions.get("ready") if isinstance(conditions, dict) else None
    if ready is None:
        return True
    if not isinstance(ready, bool):
        errors.add(child(path, "conditions.ready"), f"must be true or false, not {show(ready)}", ready)
        return False
    return ready


def _pod_name(entry: Mapping[str, Any]) -> str:
    target = entry.get("targetRef")
    if isinstance(target, dict) and target.get("kind") == "Pod" and isinstance(target.get("name"), str):
        return target["name"]
    return ""


def _addresses(entry: Mapping[str, Any], path: str, errors: ObjectErrors) -> list[str]:
    addresses_path = child(path, "addresses")
    valid = []
    for index, address in enumerate(as_list(entry.get("addresses"), addresses_path, errors) or ()):
        try:
            if not isinstance(address, str):
                raise ValueError(address)
            valid.append(str(ipaddress.ip_address(address)))
        except ValueError:
            errors.add(item(addresses_path, index), f"{show(address)} is not an IP address", address)
    return valid
