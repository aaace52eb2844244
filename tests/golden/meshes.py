"""Mesh states for translator tests and the benchmark, built directly as model values."""

from __future__ import annotations

from controlplane.identity.spiffe_id import SpiffeId
from controlplane.model.types import (
    AuthorizationPolicy,
    ContainerPort,
    Endpoint,
    MeshConfig,
    MeshState,
    Namespace,
    Operation,
    PeerAuthentication,
    Proxy,
    Rule,
    Service,
    ServicePort,
    Source,
    Workload,
)

TRUST_DOMAIN = "cluster.local"


def proxy_for(workload: Workload, *, ip: str, mode: str = "local", app_address: str = "127.0.0.1") -> Proxy:
    return Proxy(
        node_id=f"sidecar~{ip}~{workload.name}.{workload.namespace}~{workload.namespace}.svc.cluster.local",
        namespace=workload.namespace,
        workload=workload.name,
        service_account=workload.service_account,
        ip=ip,
        spiffe_id=SpiffeId.for_workload(TRUST_DOMAIN, workload.namespace, workload.service_account),
        labels=workload.labels,
        mode=mode,
        app_address=app_address,
    )


# The small mesh of the golden files: a ledger with HTTP, gRPC and TCP ports in a STRICT
# namespace, a web front end, and a legacy workload without a sidecar.
LEDGER = Workload(
    "payments",
    "ledger",
    service_account="ledger",
    labels={"app": "ledger"},
    ports=(ContainerPort(8080, "http"), ContainerPort(9000, "tcp"), ContainerPort(9090, "grpc")),
    ip="127.0.10.1",
    injected=True,
)
WEB = Workload(
    "shop", "web", service_account="web", labels={"app": "web"}, ports=(ContainerPort(8080, "http"),),
    ip="127.0.10.2", injected=True,
)
LEGACY = Workload(
    "shop", "legacy", service_account="legacy", labels={"app": "legacy"}, ports=(ContainerPort(8080),),
    ip="127.0.10.3", injected=False,
)


def small_mesh(*, extra_policies: tuple[AuthorizationPolicy, ...] = ()) -> MeshState:
    services = (
        Service(
            "payments", "ledger",
            ports=(
                ServicePort(8080, 8080, name="http", mesh_protocol="http"),
                ServicePort(9090, "grpc", name="grpc", mesh_protocol="grpc"),
            ),
            selector={"app": "ledger"}, cluster_ip="10.96.0.10",
        ),
        Service(
            "payments", "ledger-tcp", ports=(ServicePort(9000, 9000, name="tcp"),),
            selector={"app": "ledger"}, cluster_ip="10.96.0.11",
        ),
        Service(
            "shop", "web", ports=(ServicePort(80, 8080, name="http", mesh_protocol="http"),),
            selector={"app": "web"}, cluster_ip="10.96.0.20",
        ),
        Service(
            "shop", "legacy", ports=(ServicePort(8080, 8080, name="http", mesh_protocol="http"),),
            selector={"app": "legacy"}, cluster_ip="10.96.0.21",
        ),
    )
    endpoints = (
        Endpoint("payments", "ledger", 8080, "127.0.10.1", 8080, workload="ledger", service_account="ledger"),
        Endpoint("payments", "ledger", 9090, "127.0.10.1", 9090, workload="ledger", service_account="ledger"),
        Endpoint("payments", "ledger-tcp", 9000, "127.0.10.1", 9000, workload="ledger", service_account="ledger"),
        Endpoint("shop", "web", 80, "127.0.10.2", 8080, workload="web", service_account="web"),
        Endpoint("shop", "legacy", 8080, "127.0.10.3", 8080, workload="legacy", service_account="legacy"),
    )
    peer_authentications = (
        PeerAuthentication("idmesh-system", "default", mode="PERMISSIVE"),
        PeerAuthentication("payments", "default", mode="STRICT"),
        PeerAuthentication("payments", "ledger-grpc", selector={"app": "ledger"}, port_level={9090: "PERMISSIVE"}),
    )
    policies = (
        AuthorizationPolicy(
            "payments", "ledger-allow-web", action="ALLOW", selector={"app": "ledger"},
            rules=(
                Rule(
                    sources=(Source(principals=("cluster.local/ns/shop/sa/web",)),),
                    operations=(Operation(methods=("GET",), paths=("/data*",)),),
                ),
                Rule(sources=(Source(namespaces=("shop",)),), operations=(Operation(ports=("9000",)),)),
            ),
        ),
        AuthorizationPolicy(
            "payments", "ledger-deny-admin", action="DENY", selector={"app": "ledger"},
            rules=(Rule(operations=(Operation(ports=("8080",), paths=("/admin", "/admin/*")),)),),
        ),
        *extra_policies,
    )
    return MeshState(
        config=MeshConfig(),
        namespaces=(Namespace("idmesh-system"), Namespace("payments"), Namespace("shop")),
        workloads=(LEDGER, WEB, LEGACY),
        services=services,
        endpoints=endpoints,
        authorization_policies=policies,
        peer_authentications=peer_authentications,
    )


def synthetic_mesh(*, services: int, policies: int, namespaces: int = 10) -> MeshState:
    """A mesh of `services` services, one workload and two endpoints each, and `policies` policies.

    Service `svc-<i>` lives in `ns<i % namespaces>`; every third one is TCP on 9000, every third
    gRPC on 9090, the rest HTTP on 8080. Half the policies select `svc-0`'s workload, so the
    proxy of `svc-0` carries many RBAC rules; the rest are spread over the other workloads.
    """
    workloads = []
    service_list = []
    endpoints = []
    for i in range(services):
        namespace = f"ns{i % namespaces}"
        name = f"svc-{i}"
        kind = ("http", "tcp", "grpc")[i % 3]
        port = {"http": 8080, "tcp": 9000, "grpc": 9090}[kind]
        workloads.append(
            Workload(
                namespace, name, service_account=f"sa-{i}", labels={"app": name},
                ports=(ContainerPort(port, kind),), ip=_address(i, 0), injected=True,
            )
        )
        service_list.append(
            Service(
                namespace, name, ports=(ServicePort(port, port, name=kind, mesh_protocol=kind),),
                selector={"app": name}, cluster_ip=f"10.{96 + i // 65536}.{i // 256 % 256}.{i % 256}",
            )
        )
        for replica in range(2):
            endpoints.append(
                Endpoint(namespace, name, port, _address(i, replica), port, workload=name, service_account=f"sa-{i}")
            )

    policy_list = []
    for k in range(policies):
        target = 0 if k % 2 == 0 else 1 + (k % max(services - 1, 1))
        namespace = f"ns{target % namespaces}"
        source = f"sa-{(k * 7) % services}"
        policy_list.append(
            AuthorizationPolicy(
                namespace, f"policy-{k}", action="DENY" if k % 5 == 0 else "ALLOW",
                selector={"app": f"svc-{target}"}, dry_run=k % 11 == 0,
                rules=(
                    Rule(
                        sources=(Source(principals=(f"{TRUST_DOMAIN}/ns/ns{k % namespaces}/sa/{source}",)),),
                        operations=(Operation(methods=("GET", "POST"), paths=(f"/api/v{k}/*", f"/items/{k}")),),
                    ),
                    Rule(sources=(Source(namespaces=(f"ns{(k + 1) % namespaces}",)),)),
                ),
            )
        )
    return MeshState(
        config=MeshConfig(),
        namespaces=tuple(Namespace(f"ns{n}") for n in range(namespaces)),
        workloads=tuple(workloads),
        services=tuple(service_list),
        endpoints=tuple(endpoints),
        authorization_policies=tuple(policy_list),
        peer_authentications=(PeerAuthentication("idmesh-system", "default", mode="STRICT"),),
    )


def _address(index: int, replica: int) -> str:
    # Loopback addresses stand in for pod IPs; 127.<1 + replica>.x.y is unique per index.
    number = index + 1
    return f"127.{1 + replica}.{number // 256 % 256}.{number % 256}"
