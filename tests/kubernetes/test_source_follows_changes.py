"""Objects created, changed and deleted through the API reach the store and notify consumers."""

from __future__ import annotations

import asyncio

from tests.kubernetes.conftest import declare_policy_crds, wait_until, within

POD = {"metadata": {"name": "ledger-0", "labels": {"app": "ledger"}}, "spec": {"serviceAccountName": "ledger", "containers": [{"name": "app", "image": "ledger:1"}]}}
POD_KEY = ("v1/Pod", "payments", "ledger-0")


async def test_objects_created_after_start_reach_store(make_source, kube):
    source = await make_source()
    await within(source.ready.wait())

    await kube(kube.core.create_namespace, {"metadata": {"name": "payments", "labels": {"idmesh.io/injection": "enabled"}}})
    await kube(kube.core.create_namespaced_service_account, "payments", {"metadata": {"name": "ledger"}})
    await kube(kube.core.create_namespaced_pod, "payments", POD)
    await kube(kube.core.create_namespaced_service, "payments", {"metadata": {"name": "ledger"}, "spec": {"selector": {"app": "ledger"}, "ports": [{"name": "http", "port": 8080}]}})
    await kube(
        kube.discovery.create_namespaced_endpoint_slice,
        "payments",
        {"metadata": {"name": "ledger-abc", "labels": {"kubernetes.io/service-name": "ledger"}}, "addressType": "IPv4", "endpoints": [{"addresses": ["10.0.0.7"]}]},
    )
    expected = {
        ("v1/Namespace", "", "payments"),
        ("v1/ServiceAccount", "payments", "ledger"),
        POD_KEY,
        ("v1/Service", "payments", "ledger"),
        ("discovery.k8s.io/v1/EndpointSlice", "payments", "ledger-abc"),
    }
    await wait_until(lambda: expected <= {_key(obj) for obj in source.objects()}, what="all five objects")

    pod = source.get(POD_KEY)
    assert pod["apiVersion"] == "v1"
    assert pod["kind"] == "Pod"
    assert pod["spec"]["serviceAccountName"] == "ledger"
    assert pod["metadata"]["labels"] == {"app": "ledger"}


async def test_existing_objects_are_in_store_when_ready(make_source, kube, change_log):
    await kube(kube.core.create_namespace, {"metadata": {"name": "payments"}})
    await kube(kube.core.create_namespaced_pod, "payments", POD)

    source = await make_source()
    await within(source.ready.wait())

    assert source.get(POD_KEY) is not None
    assert source.get(("v1/Namespace", "", "payments")) is not None
    assert change_log.of(POD_KEY) == ["ADDED"]


async def test_create_patch_delete_notify_in_order(make_source, kube, change_log):
    source = await make_source()
    await within(source.ready.wait())
    changes = source.changes()
    first = asyncio.ensure_future(anext(changes))
    await asyncio.sleep(0)

    await kube(kube.core.create_namespaced_pod, "payments", POD)
    await kube(kube.core.patch_namespaced_pod, "ledger-0", "payments", {"metadata": {"labels": {"version": "v2"}}})
    await wait_until(lambda: change_log.of(POD_KEY) == ["ADDED", "MODIFIED"], what="ADDED then MODIFIED")
    assert source.get(POD_KEY)["metadata"]["labels"] == {"app": "ledger", "version": "v2"}

    await kube(kube.core.delete_namespaced_pod, "ledger-0", "payments")
    await wait_until(lambda: change_log.of(POD_KEY) == ["ADDED", "MODIFIED", "DELETED"], what="DELETED")
    assert source.get(POD_KEY) is None
    assert POD_KEY not in {_key(obj) for obj in source.objects()}

    iterated = [await within(first)] + [await within(anext(changes)) for _ in range(2)]
    assert [(change.type, change.key) for change in iterated] == [("ADDED", POD_KEY), ("MODIFIED", POD_KEY), ("DELETED", POD_KEY)]
    await changes.aclose()


async def test_only_mesh_configmap_in_root_namespace_is_stored(make_source, kube):
    source = await make_source(root_namespace="idmesh-system")
    await within(source.ready.wait())

    await kube(kube.core.create_namespaced_config_map, "idmesh-system", {"metadata": {"name": "other"}, "data": {"a": "b"}})
    await kube(kube.core.create_namespaced_config_map, "payments", {"metadata": {"name": "idmesh"}, "data": {"a": "b"}})
    await kube(kube.core.create_namespaced_config_map, "idmesh-system", {"metadata": {"name": "idmesh"}, "data": {"mesh": "trustDomain: example.org\n"}})
    await wait_until(lambda: source.get(("v1/ConfigMap", "idmesh-system", "idmesh")) is not None, what="the mesh ConfigMap")

    configmaps = [_key(obj) for obj in source.objects() if obj["kind"] == "ConfigMap"]
    assert configmaps == [("v1/ConfigMap", "idmesh-system", "idmesh")]
    assert source.get(("v1/ConfigMap", "idmesh-system", "idmesh"))["data"] == {"mesh": "trustDomain: example.org\n"}


async def test_policies_of_both_groups_are_stored(make_source, kube, emulator):
    declare_policy_crds(emulator, "security.idmesh.io")
    declare_policy_crds(emulator, "security.istio.io")
    source = await make_source()
    await within(source.ready.wait())

    for group in ("security.idmesh.io", "security.istio.io"):
        await kube(
            kube.custom.create_namespaced_custom_object,
            group, "v1", "payments", "authorizationpolicies",
            {"apiVersion": f"{group}/v1", "kind": "AuthorizationPolicy", "metadata": {"name": "allow-shop"}, "spec": {"action": "ALLOW", "rules": [{}]}},
        )
        await kube(
            kube.custom.create_namespaced_custom_object,
            group, "v1", "payments", "peerauthentications",
            {"apiVersion": f"{group}/v1", "kind": "PeerAuthentication", "metadata": {"name": "strict"}, "spec": {"mtls": {"mode": "STRICT"}}},
        )
    expected = {
        ("security.idmesh.io/v1/AuthorizationPolicy", "payments", "allow-shop"),
        ("security.idmesh.io/v1/PeerAuthentication", "payments", "strict"),
        ("security.istio.io/v1/AuthorizationPolicy", "payments", "allow-shop"),
        ("security.istio.io/v1/PeerAuthentication", "payments", "strict"),
    }
    await wait_until(lambda: expected <= {_key(obj) for obj in source.objects()}, what="four policies")
    assert source.get(("security.istio.io/v1/AuthorizationPolicy", "payments", "allow-shop"))["spec"] == {"action": "ALLOW", "rules": [{}]}


def _key(obj):
    metadata = obj["metadata"]
    return (f"{obj['apiVersion']}/{obj['kind']}", metadata.get("namespace", ""), metadata["name"])
