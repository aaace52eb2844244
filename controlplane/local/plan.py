"""Address plan of a local mesh: a pure function of the mesh state.

Local mode has no pods and no iptables. Every workload gets its own loopback address standing in
for a pod IP, so its Envoy can bind the same ports as in a cluster (15000 admin, 15001 outbound,
the app's ports inbound) without clashing with other workloads. The demo app of a workload with
a sidecar listens on a second loopback address that only its Envoy forwards to. Within a subnet
such as 127.10.0.0/16 the plan uses:

    127.10.0.1        the control plane
    127.10.1.N        workload N's address (Envoy inbound listeners, outbound listener, admin)
    127.10.2.N        app address of the Nth workload in namespace/name order

The annotation `idmesh.io/local-address` on a pod template pins a workload's address.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Iterable, Mapping

from controlplane.errors import ConfigError
from controlplane.model.types import MeshState, Service, Workload

LOCAL_ADDRESS_ANNOTATION = "idmesh.io/local-address"
DEFAULT_SUBNET = "127.10.0.0/16"
MAX_WORKLOADS = 250


@dataclass(frozen=True, slots=True)
class LocalWorkload:
    namespace: str
    name: str
    service_account: str
    address: str
    app_address: str
    sidecar: bool
    http_ports: tuple[int, ...]
    tcp_ports: tuple[int, ...]
    labels: Mapping[str, str]

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class LocalPlan:
    control_plane_address: str
    workloads: tuple[LocalWorkload, ...]

    def find(self, reference: str, *, default_namespace: str | None = None) -> LocalWorkload:
        """Find a workload by `namespace/name`, or by `name` when that name is unique."""
        if "/" in reference:
            matches = [w for w in self.workloads if w.key == reference]
        else:
            matches = [w for w in self.workloads if w.name == reference]
            if len(matches) > 1 and default_namespace:
                matches = [w for w in matches if w.namespace == default_namespace]
        if not matches:
            known = ", ".join(w.key for w in self.workloads) or "none"
            raise ConfigError(f"workload {reference!r} not found; known workloads: {known}", workload=reference)
        if len(matches) > 1:
            raise ConfigError(
                f"workload name {reference!r} is ambiguous; write it as namespace/name "
                f"({', '.join(w.key for w in matches)})",
                workload=reference,
            )
        return matches[0]

    def addresses(self) -> dict[str, str]:
        """Map `namespace/name` to address, in the format of the control plane's `--local-addresses` file."""
        return {w.key: w.address for w in self.workloads}

    def addresses_json(self) -> str:
        return json.dumps(self.addresses(), indent=2, sort_keys=True)


def _network(subnet: str) -> ipaddress.IPv4Network:
    try:
        network = ipaddress.IPv4Network(subnet)
    except ValueError as exc:
        raise ConfigError(f"invalid local subnet {subnet!r}: {exc}", value=subnet) from exc
    if not network.subnet_of(ipaddress.IPv4Network("127.0.0.0/8")) or network.prefixlen > 16:
        raise ConfigError(
            f"local subnet {subnet!r} must be a /16 or larger inside 127.0.0.0/8, such as {DEFAULT_SUBNET}",
            value=subnet,
        )
    return network


def _service_ports(workload: Workload, services: Iterable[Service]) -> tuple[set[int], set[int]]:
    """Split the workload's served ports into HTTP and TCP by the services that select it."""
    by_name = {p.name: p.port for p in workload.ports if p.name}
    http: set[int] = set()
    tcp: set[int] = set()
    for service in services:
        if service.namespace != workload.namespace or not service.selector:
            continue
        if any(workload.labels.get(k) != v for k, v in service.selector.items()):
            continue
        for port in service.ports:
            target = port.target_port
            number = by_name.get(target) if isinstance(target, str) else target
            if number is None:
                continue
            (http if port.is_http else tcp).add(number)
    for port in workload.ports:
        if port.port not in http and port.port not in tcp:
            (http if port.name.startswith(("http", "grpc")) else tcp).add(port.port)
    return http, tcp - http


def plan_local_mesh(state: MeshState, *, subnet: str = DEFAULT_SUBNET) -> LocalPlan:
    """Assign addresses to every workload in `state`, in namespace/name order."""
    network = _network(subnet)
    base = int(network.network_address)
    workloads = sorted(state.workloads, key=lambda w: (w.namespace, w.name))
    if len(workloads) > MAX_WORKLOADS:
        raise ConfigError(f"local mode runs at most {MAX_WORKLOADS} workloads; the folder has {len(workloads)}")
    pinned = {
        (w.namespace, w.name): w.annotations[LOCAL_ADDRESS_ANNOTATION]
        for w in workloads
        if LOCAL_ADDRESS_ANNOTATION in w.annotations
    }
    taken: dict[str, str] = {}
    for (namespace, name), address in pinned.items():
        try:
            parsed = ipaddress.IPv4Address(address)
        except ValueError as exc:
            raise ConfigError(
                f"{namespace}/{name}: annotation {LOCAL_ADDRESS_ANNOTATION}: {address!r} is not an IPv4 address",
                value=address,
            ) from exc
        if parsed not in network:
            raise ConfigError(
                f"{namespace}/{name}: annotation {LOCAL_ADDRESS_ANNOTATION}: {address} is outside the local subnet {network}",
                value=address,
            )
        if address in taken:
            raise ConfigError(f"{namespace}/{name} and {taken[address]} both pin address {address}", value=address)
        taken[address] = f"{namespace}/{name}"

    planned: list[LocalWorkload] = []
    next_index = 1
    for position, workload in enumerate(workloads, start=1):
        address = pinned.get((workload.namespace, workload.name))
        if address is None:
            while str(ipaddress.IPv4Address(base + (1 << 8) + next_index)) in taken:
                next_index += 1
            address = str(ipaddress.IPv4Address(base + (1 << 8) + next_index))
            taken[address] = f"{workload.namespace}/{workload.name}"
            next_index += 1
        app_address = str(ipaddress.IPv4Address(base + (2 << 8) + position))
        http, tcp = _service_ports(workload, state.services)
        planned.append(
            LocalWorkload(
                namespace=workload.namespace,
                name=workload.name,
                service_account=workload.service_account,
                address=address,
                app_address=app_address if workload.injected else address,
                sidecar=workload.injected,
                http_ports=tuple(sorted(http)),
                tcp_ports=tuple(sorted(tcp)),
                labels=workload.labels,
            )
        )
    return LocalPlan(control_plane_address=str(ipaddress.IPv4Address(base + 1)), workloads=tuple(planned))
