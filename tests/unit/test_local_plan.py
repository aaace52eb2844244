"""Local mode gives every workload its own loopback address and app address."""

from __future__ import annotations

from types import MappingProxyType

import pytest

from controlplane.errors import ConfigError
from controlplane.local.plan import plan_local_mesh
from controlplane.model.types import ContainerPort, MeshState, Service, ServicePort, Workload


def workload(namespace: str, name: str, *, injected: bool = True, annotations: dict | None = None, ports=()) -> Workload:
    return Workload(
        namespace=namespace,
        name=name,
        service_account=name,
        labels=MappingProxyType({"app": name}),
        annotations=MappingProxyType(annotations or {}),
        ports=tuple(ports),
        injected=injected,
        kind="Deployment",
    )


def test_addresses_follow_namespace_and_name_order() -> None:
    state = MeshState(workloads=(workload("shop", "web"), workload("payments", "worker"), workload("payments", "ledger")))
    plan = plan_local_mesh(state, subnet="127.20.0.0/16")
    assert plan.control_plane_address == "127.20.0.1"
    assert [(w.key, w.address, w.app_address) for w in plan.workloads] == [
        ("payments/ledger", "127.20.1.1", "127.20.2.1"),
        ("payments/worker", "127.20.1.2", "127.20.2.2"),
        ("shop/web", "127.20.1.3", "127.20.2.3"),
    ]


def test_pinned_address_is_kept_and_skipped_by_others() -> None:
    state = MeshState(
        workloads=(
            workload("a", "one"),
            workload("a", "two", annotations={"idmesh.io/local-address": "127.20.1.1"}),
        )
    )
    plan = plan_local_mesh(state, subnet="127.20.0.0/16")
    assert plan.addresses() == {"a/one": "127.20.1.2", "a/two": "127.20.1.1"}
    assert len({w.app_address for w in plan.workloads}) == 2


def test_workload_without_sidecar_serves_on_its_own_address() -> None:
    plan = plan_local_mesh(MeshState(workloads=(workload("a", "plain", injected=False),)), subnet="127.20.0.0/16")
    (only,) = plan.workloads
    assert only.sidecar is False
    assert only.app_address == only.address


def test_ports_are_split_by_service_protocol() -> None:
    ports = (ContainerPort(8080, "http"), ContainerPort(9000, "store"), ContainerPort(7000, ""))
    service = Service(
        namespace="a",
        name="svc",
        selector=MappingProxyType({"app": "one"}),
        ports=(
            ServicePort(80, 8080, "http", mesh_protocol="http"),
            ServicePort(9000, "store", "tcp-store", mesh_protocol="tcp"),
        ),
    )
    plan = plan_local_mesh(MeshState(workloads=(workload("a", "one", ports=ports),), services=(service,)))
    (only,) = plan.workloads
    assert only.http_ports == (8080,)
    assert only.tcp_ports == (7000, 9000)


@pytest.mark.parametrize(
    ("subnet", "message"),
    [("10.0.0.0/16", "inside 127.0.0.0/8"), ("127.1.1.0/24", "a /16 or larger"), ("nonsense", "invalid local subnet")],
)
def test_bad_subnets_are_rejected(subnet: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        plan_local_mesh(MeshState(), subnet=subnet)


def test_pins_outside_subnet_or_twice_are_rejected() -> None:
    outside = MeshState(workloads=(workload("a", "x", annotations={"idmesh.io/local-address": "127.99.1.1"}),))
    with pytest.raises(ConfigError, match="outside the local subnet"):
        plan_local_mesh(outside)
    twice = MeshState(
        workloads=(
            workload("a", "x", annotations={"idmesh.io/local-address": "127.10.1.9"}),
            workload("a", "y", annotations={"idmesh.io/local-address": "127.10.1.9"}),
        )
    )
    with pytest.raises(ConfigError, match="both pin address 127.10.1.9"):
        plan_local_mesh(twice)


def test_find_resolves_short_and_full_names() -> None:
    plan = plan_local_mesh(MeshState(workloads=(workload("a", "x"), workload("b", "x"), workload("b", "y"))))
    assert plan.find("b/x").namespace == "b"
    assert plan.find("y").key == "b/y"
    with pytest.raises(ConfigError, match="ambiguous"):
        plan.find("x")
    with pytest.raises(ConfigError, match="not found"):
        plan.find("zzz")
