"""Objects created through the API become a MeshState through the source and `parse_objects`."""

from __future__ import annotations

from controlplane.model.parse import parse_objects
from controlplane.model.types import Endpoint
from tests.kubernetes.conftest import declare_policy_crds, wait_until, within


async def test_api_objects_become_mesh_state(make_source, kube, emulator):
    declare_policy_crds(emulator, "security.idmesh.io")
    source = await make_source(root_namespace="idmesh-system")
    await within(source.ready.wait())

    await kube(kube.core.create_namespaced_config_map, "idmesh-system", {"metadata": {"name": "idmesh"}, "data": {"mesh": "trustDomain: example.org\n"}})
    await kube(kube.core.create_namespace, {"metadata": {"name": "payments", "labels": {"idmesh.io/injection": "enabled"}}})
    await kube(kube.core.create_namespaced_service_account, "payments", {"metadata": {"name": "ledger"}})
    await kube(
        kube.core.create_namespaced_pod,
        "payments",
        {
            "metadata": {"name": "ledger-0", "labels": {"app": "ledger"}},
            "spec": {"serviceAccountName": "ledger", "containers": [{"name": "app", "image": "ledger:1", "ports": [{"containerPort": 8080, "name": "http"}]}]},
            "status": {"podIP": "10.0.0.7"},
        },
    )
    await kube(
        kube.core.create_namespaced_service,
        "payments",
        {"metadata": {"name": "ledger"}, "spec": {"selector": {"app": "ledger"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}},
    )
    await kube(
        kube.discovery.create_namespaced_endpoint_slice,
        "payments",
        {
            "metadata": {"name": "ledger-x1", "labels": {"kubernetes.io/service-name": "ledger"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": [{"addresses": ["10.0.0.7"], "targetRef": {"kind": "Pod", "name": "ledger-0"}}],
        },
    )
    await kube(
        kube.custom.create_namespaced_custom_object,
        "security.idmesh.io", "v1", "payments", "authorizationpolicies",
        {
            "apiVersion": "security.idmesh.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": {"name": "allow-shop"},
            "spec": {"selector": {"matchLabels": {"app": "ledger"}}, "action": "ALLOW", "rules": [{"from": [{"source": {"namespaces": ["shop"]}}]}]},
        },
    )
    await kube(
        kube.custom.create_namespaced_custom_object,
        "security.idmesh.io", "v1", "payments", "peerauthentications",
        {"apiVersion": "security.idmesh.io/v1", "kind": "PeerAuthentication", "metadata": {"name": "strict"}, "spec": {"mtls": {"mode": "STRICT"}}},
    )
    await wait_until(lambda: len(source.objects()) == 8, what="eight objects in the store")

    state = parse_objects(source.objects())

    assert state.errors == ()
    assert state.config.trust_domain == "example.org"
    assert [(n.name, dict(n.labels)) for n in state.namespaces] == [("payments", {"idmesh.io/injection": "enabled"})]
    assert [(a.namespace, a.name) for a in state.service_accounts] == [("payments", "ledger")]
    [workload] = state.workloads
    assert (workload.namespace, workload.name, workload.service_account, workload.ip) == ("payments", "ledger-0", "ledger", "10.0.0.7")
    [service] = state.services
    assert (service.namespace, service.name, [p.port for p in service.ports]) == ("payments", "ledger", [80])
    assert state.endpoints == (
        Endpoint(namespace="payments", service="ledger", service_port=80, address="10.0.0.7", port=8080, workload="ledger-0", service_account="ledger"),
    )
    [policy] = state.authorization_policies
    assert (policy.namespace, policy.name, policy.action, policy.error) == ("payments", "allow-shop", "ALLOW", None)
    [peer] = state.peer_authentications
    assert (peer.name, peer.mode) == ("strict", "STRICT")
