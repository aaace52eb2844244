"""Questions about the mesh state that the inbound and outbound builders ask.

Each function scans the state once; `MeshIndex` groups what the outbound side needs for every
service so that a mesh of a thousand services is not scanned once per service.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field

from controlplane.errors import TranslationError
from controlplane.model.types import (
    Endpoint,
    MeshState,
    PortProtocol,
    Proxy,
    Service,
    ServicePort,
    Workload,
)
from controlplane.translate import names
from controlplane.translate.mtls import selects


def find_workload(state: MeshState, proxy: Proxy) -> Workload | None:
    for workload in state.workloads:
        if workload.namespace == proxy.namespace and workload.name == proxy.workload:
            return workload
    return None


def workload_labels(state: MeshState, proxy: Proxy) -> Mapping[str, str]:
    """Labels that select policies and services for the proxy.

    The mesh state's own copy of the workload is preferred over the labels in the proxy's node
    metadata, because node metadata is written by the pod and policies must not depend on it.
    """
    workload = find_workload(state, proxy)
    return workload.labels if workload is not None else proxy.labels


def selecting_services(state: MeshState, namespace: str, labels: Mapping[str, str]) -> list[Service]:
    """Services in `namespace` whose non-empty selector matches `labels`, sorted by name."""
    found = [
        service
        for service in state.services
        if service.namespace == namespace and service.selector and selects(service.selector, labels)
    ]
    return sorted(found, key=lambda service: service.name)


def resolve_target_port(port: ServicePort, workload: Workload | None) -> int | None:
    """The workload port a service port sends to; a named target port needs the workload."""
    if isinstance(port.target_port, int):
        return port.target_port
    if isinstance(port.target_port, str) and port.target_port.isdigit():
        return int(port.target_port)
    for container_port in workload.ports if workload is not None else ():
        if container_port.name == port.target_port:
            return container_port.port
    return None


@dataclass(frozen=True, slots=True)
class InboundPort:
    """One workload port and the protocol the services in front of it agree on."""

    port: int
    protocol: PortProtocol


def inbound_ports(
    state: MeshState, proxy: Proxy
) -> tuple[list[InboundPort], list[TranslationError]]:
    """List the ports the workload serves, with each one's protocol, sorted by port.

    A port is every TCP container port of the workload plus every target port of a service that
    selects it. The protocol comes from those services (`mesh_protocol`); a port that no service
    names is TCP. When services disagree the port is proxied as TCP, which works for any
    payload, and the disagreement is reported.
    """
    workload = find_workload(state, proxy)
    labels = workload_labels(state, proxy)
    # port -> protocol -> the services that declare it
    protocols: dict[int, dict[PortProtocol, list[str]]] = {}
    problems: list[TranslationError] = []

    for container_port in workload.ports if workload is not None else ():
        if container_port.protocol.upper() == "TCP":
            protocols.setdefault(container_port.port, {})
    for service in selecting_services(state, proxy.namespace, labels):
        for service_port in service.ports:
            if service_port.protocol.upper() != "TCP":
                continue
            target = resolve_target_port(service_port, workload)
            if target is None:
                problems.append(
                    TranslationError(
                        f"{service.ref}: port {service_port.port} targets {service_port.target_port!r}, "
                        f"which is not a port of workload {proxy.namespace}/{proxy.workload}; "
                        "name a container port or use a number",
                        object=str(service.ref),
                    )
                )
                continue
            claims = protocols.setdefault(target, {})
            claims.setdefault(service_port.mesh_protocol, []).append(str(service.ref))

    ports: list[InboundPort] = []
    for port in sorted(protocols):
        if port in names.RESERVED_PORTS:
            problems.append(
                TranslationError(
                    f"workload {proxy.namespace}/{proxy.workload}: port {port} is reserved for the "
                    f"sidecar ({', '.join(map(str, sorted(names.RESERVED_PORTS)))}); it gets no inbound listener",
                    object=f"Workload {proxy.namespace}/{proxy.workload}",
                )
            )
            continue
        claimed = protocols[port]
        if len(claimed) > 1:
            owners = sorted(ref for refs in claimed.values() for ref in refs)
            problems.append(
                TranslationError(
                    f"port {port} of workload {proxy.namespace}/{proxy.workload} is declared as "
                    f"{' and '.join(sorted(claimed))} by {', '.join(owners)}; it is proxied as tcp",
                    object=owners[0],
                )
            )
            ports.append(InboundPort(port, "tcp"))
        else:
            ports.append(InboundPort(port, next(iter(claimed), "tcp")))
    return ports, problems


@dataclass(slots=True)
class MeshIndex:
    """Workloads and endpoints grouped for lookups by namespace, name and service port."""

    workloads: dict[tuple[str, str], Workload] = field(default_factory=dict)
    # (namespace, label key, label value) -> workloads carrying that label
    workloads_by_label: dict[tuple[str, str, str], list[Workload]] = field(default_factory=lambda: defaultdict(list))
    endpoints: dict[tuple[str, str, int], list[Endpoint]] = field(default_factory=lambda: defaultdict(list))

    @classmethod
    def build(cls, state: MeshState) -> MeshIndex:
        index = cls()
        for workload in state.workloads:
            index.workloads[(workload.namespace, workload.name)] = workload
            for key, value in workload.labels.items():
                index.workloads_by_label[(workload.namespace, key, value)].append(workload)
        for endpoint in state.endpoints:
            if endpoint.ready:
                index.endpoints[(endpoint.namespace, endpoint.service, endpoint.service_port)].append(endpoint)
        return index

    def endpoints_of(self, service: Service, port: int) -> list[Endpoint]:
        found = self.endpoints.get((service.namespace, service.name, port), [])
        return sorted(found, key=lambda e: (e.address, e.port, e.workload))

    def workload_of(self, endpoint: Endpoint) -> Workload | None:
        return self.workloads.get((endpoint.namespace, endpoint.workload)) if endpoint.workload else None

    def selected_workloads(self, service: Service) -> list[Workload]:
        if not service.selector:
            return []
        # Only workloads carrying the selector's first label can match all of it.
        key, value = next(iter(service.selector.items()))
        candidates = self.workloads_by_label.get((service.namespace, key, value), ())
        return [workload for workload in candidates if selects(service.selector, workload.labels)]
