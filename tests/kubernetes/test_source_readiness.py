"""Readiness: set once every collection has listed; a missing CRD group does not hold it back."""

from __future__ import annotations

import asyncio

import structlog

from tests.kubernetes.conftest import declare_policy_crds, wait_until, within

CORE_PLURALS = ("namespaces", "serviceaccounts", "services", "endpointslices", "configmaps")
POLICY = {"metadata": {"name": "deny-all"}, "spec": {"action": "DENY", "rules": [{}]}}


def _events(logs, name):
    return [entry for entry in logs if entry["event"] == name]


def _discovery_requests(emulator, group):
    return [request for request in emulator if request.url.path == f"/apis/{group}/v1"]


async def test_not_ready_until_last_collection_listed(make_source, emulator):
    gate = emulator.list_gates["pods"] = asyncio.Event()

    with structlog.testing.capture_logs() as logs:
        source = await make_source()
        await wait_until(lambda: source.unlisted == ("/api/v1/pods",), what="every other collection to list")
        assert all(emulator.list_counts[plural] == 1 for plural in CORE_PLURALS)
        assert len(_events(logs, "kubernetes.crd.missing")) == 4
        assert not source.ready.is_set()

        gate.set()
        await within(source.ready.wait())

    assert emulator.list_counts["pods"] == 1


async def test_missing_crd_group_does_not_block_readiness(make_source, kube, emulator):
    declare_policy_crds(emulator, "security.idmesh.io")
    await kube(kube.custom.create_namespaced_custom_object, "security.idmesh.io", "v1", "payments", "authorizationpolicies", POLICY)

    with structlog.testing.capture_logs() as logs:
        source = await make_source()
        await within(source.ready.wait())
        # Discovery is asked again and again, but the absence is logged once per collection.
        await wait_until(lambda: len(_discovery_requests(emulator, "security.istio.io")) >= 6, what="repeated discovery")

    assert source.get(("security.idmesh.io/v1/AuthorizationPolicy", "payments", "deny-all")) is not None
    missing = sorted(entry["resource"] for entry in _events(logs, "kubernetes.crd.missing"))
    assert missing == ["/apis/security.istio.io/v1/authorizationpolicies", "/apis/security.istio.io/v1/peerauthentications"]
    assert {entry["log_level"] for entry in _events(logs, "kubernetes.crd.missing")} == {"info"}


async def test_crd_installed_later_is_watched(make_source, kube, emulator, change_log):
    source = await make_source()
    await within(source.ready.wait())

    declare_policy_crds(emulator, "security.istio.io")
    await kube(kube.custom.create_namespaced_custom_object, "security.istio.io", "v1", "payments", "authorizationpolicies", POLICY)

    key = ("security.istio.io/v1/AuthorizationPolicy", "payments", "deny-all")
    await wait_until(lambda: source.get(key) is not None, what="the policy after its CRD appeared")
    assert change_log.of(key) == ["ADDED"]


async def test_removed_crd_deletes_its_objects(make_source, kube, emulator, change_log):
    declare_policy_crds(emulator, "security.istio.io")
    await kube(kube.custom.create_namespaced_custom_object, "security.istio.io", "v1", "payments", "authorizationpolicies", POLICY)
    source = await make_source()
    await within(source.ready.wait())
    key = ("security.istio.io/v1/AuthorizationPolicy", "payments", "deny-all")
    assert source.get(key) is not None

    with structlog.testing.capture_logs() as logs:
        emulator.uninstall("security.istio.io/v1/authorizationpolicies")
        await wait_until(lambda: source.get(key) is None, what="the policy to go with its CRD")

    assert change_log.of(key) == ["ADDED", "DELETED"]
    assert [entry["resource"] for entry in _events(logs, "kubernetes.crd.removed")] == ["/apis/security.istio.io/v1/authorizationpolicies"]
    assert [entry for entry in logs if entry["log_level"] in ("warning", "error")] == []
