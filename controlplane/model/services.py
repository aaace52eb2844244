"""Services: ports, their mesh protocol, and named targetPort resolution."""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping

from controlplane.errors import ValidationError
from controlplane.model import names
from controlplane.model.fields import (
    ObjectErrors,
    as_list,
    as_mapping,
    as_port_number,
    as_str,
    child,
    item,
    show,
)
from controlplane.model.metadata import read_labels, read_metadata
from controlplane.model.selection import service_selects, target_port_for
from controlplane.model.types import PortProtocol, Service, ServicePort, Workload, frozen_map
from controlplane.model.workloads import PORT_PROTOCOLS

# Protocols recognised in a port name prefix or an appProtocol, as Istio reads them
# (compared case-insensitively). Protocols the mesh proxies as opaque bytes map to "tcp".
KNOWN_PROTOCOLS: Mapping[str, PortProtocol] = {
    "http": "http",
    "http2": "http2",
    "grpc": "grpc",
    # gRPC-Web is HTTP/1.1 or HTTP/2 from browsers; it is routed as plain HTTP.
    "grpc-web": "http",
    "tcp": "tcp",
    "https": "tcp",
    "tls": "tcp",
    "mongo": "tcp",
    "mysql": "tcp",
    "redis": "tcp",
}
# Kubernetes' own appProtocol values (KEP-3726).
KUBERNETES_APP_PROTOCOLS: Mapping[str, PortProtocol] = {
    "kubernetes.io/h2c": "http2",
    "kubernetes.io/ws": "http",
}


def detect_protocol(name: str, app_protocol: str = "") -> PortProtocol:
    """Decide how a service port is proxied.

    A recognised `appProtocol` wins; an unrecognised one falls back to the name, as in Istio.
    The name counts by its prefix before the first '-' (`http-api`), with `grpc-web` checked
    first because it contains a '-'. Anything unrecognised is "tcp".
    """
    app = app_protocol.lower()
    if app in KUBERNETES_APP_PROTOCOLS:
        return KUBERNETES_APP_PROTOCOLS[app]
    if app in KNOWN_PROTOCOLS:
        return KNOWN_PROTOCOLS[app]
    lowered = name.lower()
    if lowered.startswith("grpc-web"):
        return KNOWN_PROTOCOLS["grpc-web"]
    return KNOWN_PROTOCOLS.get(lowered.split("-", 1)[0], "tcp")


def parse_service(obj: Mapping[str, Any]) -> tuple[Service | None, list[ValidationError]]:
    """Parse a Service; invalid Services are left out with every error reported."""
    errors = ObjectErrors("Service")
    meta = read_metadata(obj, errors, name_rule=names.dns1035_label)
    if meta is None:
        return None, errors.errors
    spec = as_mapping(obj.get("spec", {}), "spec", errors) or {}
    selector = read_labels(spec["selector"], errors, "spec.selector") if spec.get("selector") is not None else {}
    raw_ports = as_list(spec.get("ports", []), "spec.ports", errors) or []
    ports = [_service_port(port, item("spec.ports", index), errors, named=len(raw_ports) > 1) for index, port in enumerate(raw_ports)]
    _check_unique_names(ports, errors)
    cluster_ip = spec.get("clusterIP")
    if errors:
        return None, errors.errors
    service = Service(
        namespace=meta.namespace,
        name=meta.name,
        ports=tuple(port for port in ports if port is not None),
        selector=frozen_map(selector),
        cluster_ip=cluster_ip if isinstance(cluster_ip, str) and cluster_ip else None,
        labels=frozen_map(meta.labels),
    )
    return service, errors.errors


def _service_port(value: Any, path: str, errors: ObjectErrors, *, named: bool) -> ServicePort | None:
    port = as_mapping(value, path, errors)
    if port is None:
        return None
    number = as_port_number(port.get("port"), child(path, "port"), errors)

    name = port.get("name", "")
    if as_str(name, child(path, "name"), errors) is None:
        name = ""
    elif name and (problem := names.dns1123_label(name)):
        errors.add(child(path, "name"), f"{show(name)} is not a port name: it {problem}", name)
    elif not name and named:
        errors.add(child(path, "name"), "is missing; every port of a Service with several ports needs a name", None)

    protocol = port.get("protocol", "TCP")
    if protocol not in PORT_PROTOCOLS:
        errors.add(child(path, "protocol"), f"{show(protocol)} is not a protocol; use one of {', '.join(PORT_PROTOCOLS)}", protocol)

    app_protocol = port.get("appProtocol", "")
    if as_str(app_protocol, child(path, "appProtocol"), errors) is None:
        app_protocol = ""

    if number is None:
        return None
    target = _target_port(port.get("targetPort", number), child(path, "targetPort"), errors)
    if target is None:
        return None
    return ServicePort(
        port=number,
        target_port=target,
        name=name,
        protocol=protocol,
        app_protocol=app_protocol,
        mesh_protocol=detect_protocol(name, app_protocol),
    )


def _target_port(value: Any, path: str, errors: ObjectErrors) -> int | str | None:
    if isinstance(value, str) and not value.isdigit():
        if problem := names.iana_service_name(value):
            errors.add(path, f"{show(value)} is not a port name: it {problem}", value)
            return None
        return value
    if isinstance(value, str):
        errors.add(path, f"{show(value)} is a string of digits; write the port number without quotes", value)
        return None
    return as_port_number(value, path, errors)


def _check_unique_names(ports: list[ServicePort | None], errors: ObjectErrors) -> None:
    seen: set[str] = set()
    for index, port in enumerate(ports):
        if port is None or not port.name:
            continue
        if port.name in seen:
            errors.add(child(item("spec.ports", index), "name"), f"{show(port.name)} is used by another port of this Service", port.name)
        seen.add(port.name)


def resolve_target_ports(services: Iterable[Service], workloads: Iterable[Workload]) -> tuple[Service, ...]:
    """Replace each named targetPort by a number when every selected workload agrees on it.

    A name that no selected workload declares, or that maps to different numbers on different
    workloads, stays a name: `endpoints_from_selectors` resolves it per workload.
    """
    workloads = tuple(workloads)
    resolved = []
    for service in services:
        selected = [workload for workload in workloads if service_selects(service, workload)]
        ports = []
        for port in service.ports:
            numbers = {target_port_for(port, workload) for workload in selected}
            if isinstance(port.target_port, str) and len(numbers) == 1 and None not in numbers:
                port = dataclasses.replace(port, target_port=numbers.pop())
            ports.append(port)
        resolved.append(dataclasses.replace(service, ports=tuple(ports)))
    return tuple(resolved)
