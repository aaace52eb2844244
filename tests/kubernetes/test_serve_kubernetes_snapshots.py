"""Objects changed through the Kubernetes API reach the xDS snapshot of a proxy in `controlplane serve`."""

from __future__ import annotations

from typing import Any

from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

from controlplane.identity.spiffe_id import SpiffeId
from controlplane.model.types import Proxy
from controlplane.translate.resources import CLUSTER, ENDPOINT, LISTENER
from controlplane.xds.snapshot import Snapshot
from tests.kubernetes.conftest import Kube, wait_until
from tests.kubernetes.k8s_extras import api_server  # noqa: F401 - fixture
from tests.kubernetes.test_serve_kubernetes_harness import (  # noqa: F401 - fixtures
    POLICY_GROUP,
    POLICY_VERSION,
    TRUST_DOMAIN,
    control_plane,
    create_policy,
    serve_overrides,
)

NAMESPACE = "payments"
LEDGER_CLUSTER = "outbound|80||ledger.payments.svc.cluster.local"
ALLOW_RULE = "ns[payments]-policy[allow-shop]-rule[0]"


async def create_ledger(kube: Kube) -> None:
    """Create namespace payments with service account, pod, Service and EndpointSlice of `ledger`."""
    await kube(kube.core.create_namespace, {"metadata": {"name": NAMESPACE}})
    await kube(kube.core.create_namespaced_service_account, NAMESPACE, {"metadata": {"name": "ledger"}})
    await kube(kube.core.create_namespaced_pod, NAMESPACE, {
        "metadata": {"name": "ledger-0", "labels": {"app": "ledger"}},
        "spec": {"serviceAccountName": "ledger", "nodeName": "node-a", "containers": [
            {"name": "app", "image": "ledger:1", "ports": [{"containerPort": 8080, "name": "http"}]}]},
        "status": {"phase": "Running", "podIP": "10.0.0.7"},
    })
    await kube(kube.core.create_namespaced_service, NAMESPACE, {
        "metadata": {"name": "ledger"},
        "spec": {"selector": {"app": "ledger"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
    })
    await kube(kube.discovery.create_namespaced_endpoint_slice, NAMESPACE, {
        "metadata": {"name": "ledger-x1", "labels": {"kubernetes.io/service-name": "ledger"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080}],
        "endpoints": [{"addresses": ["10.0.0.7"], "targetRef": {"kind": "Pod", "name": "ledger-0"}}],
    })


def ledger_proxy() -> Proxy:
    return Proxy(
        node_id="sidecar~10.0.0.7~ledger-0.payments~payments.svc.cluster.local",
        namespace=NAMESPACE,
        workload="ledger-0",
        service_account="ledger",
        ip="10.0.0.7",
        spiffe_id=SpiffeId.for_workload(TRUST_DOMAIN, NAMESPACE, "ledger"),
        labels={"app": "ledger"},
    )


def rbac_policies(snapshot: Snapshot | None) -> dict[str, dict[str, Any]]:
    """Return `{RBAC filter name: {policy name: Policy}}` of the HTTP filter chains of the inbound listener."""
    if snapshot is None or "virtualInbound" not in snapshot.of_type(LISTENER):
        return {}
    listener = listener_pb2.Listener.FromString(snapshot.of_type(LISTENER)["virtualInbound"].payload)
    found: dict[str, dict[str, Any]] = {}
    for chain in listener.filter_chains:
        for network_filter in chain.filters:
            manager = hcm_pb2.HttpConnectionManager()
            if not network_filter.typed_config.Unpack(manager):
                continue
            for http_filter in manager.http_filters:
                config = http_rbac_pb2.RBAC()
                if http_filter.typed_config.Unpack(config):
                    found.setdefault(http_filter.name, {}).update(config.rules.policies)
    return found


def endpoint_addresses(snapshot: Snapshot | None, cluster: str) -> list[tuple[str, int]]:
    if snapshot is None or cluster not in snapshot.of_type(ENDPOINT):
        return []
    assignment = endpoint_pb2.ClusterLoadAssignment.FromString(snapshot.of_type(ENDPOINT)[cluster].payload)
    return [
        (lb.endpoint.address.socket_address.address, lb.endpoint.address.socket_address.port_value)
        for group in assignment.endpoints
        for lb in group.lb_endpoints
    ]


def allowed_namespaces(snapshot: Snapshot | None) -> str:
    """Return the principals of the ALLOW rule as text, which names the source namespaces it matches."""
    policy = rbac_policies(snapshot).get("idmesh.rbac.allow", {}).get(ALLOW_RULE)
    return str(policy.principals) if policy is not None else ""


async def test_api_objects_reach_proxy_snapshot(control_plane, kube):
    await create_ledger(kube)
    await create_policy(kube, NAMESPACE, "allow-shop", {
        "selector": {"matchLabels": {"app": "ledger"}},
        "action": "ALLOW",
        "rules": [{"from": [{"source": {"namespaces": ["shop"]}}]}],
    })
    watch = control_plane.cache.watch(ledger_proxy(), lambda _snapshot: None)
    try:
        await wait_until(lambda: "/ns/shop/" in allowed_namespaces(watch.snapshot), what="the ALLOW rule in RBAC")

        assert LEDGER_CLUSTER in watch.snapshot.of_type(CLUSTER)
        assert endpoint_addresses(watch.snapshot, LEDGER_CLUSTER) == [("10.0.0.7", 8080)]
        assert list(rbac_policies(watch.snapshot)["idmesh.rbac.allow"]) == [ALLOW_RULE]
    finally:
        watch.cancel()


async def test_policy_change_through_api_changes_rbac(control_plane, kube):
    await create_ledger(kube)
    await create_policy(kube, NAMESPACE, "allow-shop", {
        "selector": {"matchLabels": {"app": "ledger"}},
        "action": "ALLOW",
        "rules": [{"from": [{"source": {"namespaces": ["shop"]}}]}],
    })
    watch = control_plane.cache.watch(ledger_proxy(), lambda _snapshot: None)
    try:
        await wait_until(lambda: "/ns/shop/" in allowed_namespaces(watch.snapshot), what="the first ALLOW rule")

        await kube(kube.custom.patch_namespaced_custom_object, POLICY_GROUP, POLICY_VERSION, NAMESPACE,
                   "authorizationpolicies", "allow-shop",
                   {"spec": {"rules": [{"from": [{"source": {"namespaces": ["web"]}}]}]}},
                   _content_type="application/merge-patch+json")

        await wait_until(lambda: "/ns/web/" in allowed_namespaces(watch.snapshot), what="the patched ALLOW rule")
        assert "/ns/shop/" not in allowed_namespaces(watch.snapshot)
    finally:
        watch.cancel()


async def test_deleted_service_loses_its_cluster(control_plane, kube):
    await create_ledger(kube)
    watch = control_plane.cache.watch(ledger_proxy(), lambda _snapshot: None)
    try:
        await wait_until(lambda: watch.snapshot is not None and LEDGER_CLUSTER in watch.snapshot.of_type(CLUSTER),
                         what="the ledger cluster")

        await kube(kube.core.delete_namespaced_service, "ledger", NAMESPACE)

        await wait_until(lambda: LEDGER_CLUSTER not in watch.snapshot.of_type(CLUSTER), what="the cluster to go")
        assert LEDGER_CLUSTER not in watch.snapshot.of_type(ENDPOINT)
    finally:
        watch.cancel()
