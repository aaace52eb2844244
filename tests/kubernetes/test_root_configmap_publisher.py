"""The trust bundle ConfigMap appears in every namespace and is put back after edits and deletions."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime

import kubernetes
import pytest

from controlplane.identity.ca import CertificateAuthority
from controlplane.kube.leader import ElectionSettings, LeaderElector, Outcome, run_while_leading
from controlplane.kube.root_configmap import ROOT_CONFIGMAP_NAME, RootCertPublisher
from tests.kubernetes.conftest import FAST_SETTINGS, wait_until
from tests.kubernetes.k8s_extras import FakeClock, api_server  # noqa: F401 - fixture

NOW = datetime(2030, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> tuple[str, str]:
    """Two different trust bundles, as PEM."""
    pems = []
    for name in ("first", "second"):
        ca = CertificateAuthority.create(tmp_path_factory.mktemp(name), trust_domain="cluster.local", now=NOW)
        pems.append(ca.trust_bundle().to_pem())
    return pems[0], pems[1]


def stored(emulator, namespace: str) -> dict | None:
    """Return `namespace`'s root ConfigMap as the emulator stores it, or None without one."""
    for (resource, object_namespace, name), obj in emulator.objects.items():
        if resource.plural == "configmaps" and (object_namespace, name) == (namespace, ROOT_CONFIGMAP_NAME) and not obj.deleted:
            return obj.raw
    return None


def published(emulator, namespace: str) -> str | None:
    """Return the bundle in `namespace`'s root ConfigMap, or None without one."""
    configmap = stored(emulator, namespace)
    return None if configmap is None else configmap.get("data", {}).get("root-cert.pem")


@contextlib.asynccontextmanager
async def publishing(client_configuration, bundle_pem: str):
    publisher = RootCertPublisher(client_configuration, bundle_pem=bundle_pem, settings=FAST_SETTINGS)
    task = asyncio.create_task(publisher.run())
    try:
        yield publisher
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_configmap_in_every_namespace(client_configuration, kube, emulator, bundles):
    for namespace in ("payments", "shop"):
        await kube(kube.core.create_namespace, {"metadata": {"name": namespace}})

    async with publishing(client_configuration, bundles[0]):
        await wait_until(lambda: published(emulator, "payments") == bundles[0], what="the ConfigMap in payments")
        await wait_until(lambda: published(emulator, "shop") == bundles[0], what="the ConfigMap in shop")

        await kube(kube.core.create_namespace, {"metadata": {"name": "ledger"}})
        await wait_until(lambda: published(emulator, "ledger") == bundles[0], what="the ConfigMap in a new namespace")


async def test_deleted_configmap_restored(client_configuration, kube, emulator, bundles):
    await kube(kube.core.create_namespace, {"metadata": {"name": "payments"}})

    async with publishing(client_configuration, bundles[0]):
        await wait_until(lambda: published(emulator, "payments") == bundles[0], what="the first ConfigMap")
        first_uid = stored(emulator, "payments")["metadata"]["uid"]
        await kube(kube.core.delete_namespaced_config_map, ROOT_CONFIGMAP_NAME, "payments")

        await wait_until(
            lambda: (stored(emulator, "payments") or {}).get("metadata", {}).get("uid") not in (None, first_uid),
            what="a new ConfigMap to replace the deleted one",
        )
        assert published(emulator, "payments") == bundles[0]


async def test_edited_configmap_restored(client_configuration, kube, emulator, bundles):
    await kube(kube.core.create_namespace, {"metadata": {"name": "payments"}})

    async with publishing(client_configuration, bundles[0]):
        await wait_until(lambda: published(emulator, "payments") == bundles[0], what="the first ConfigMap")
        await kube(kube.core.patch_namespaced_config_map, ROOT_CONFIGMAP_NAME, "payments", {"data": {"root-cert.pem": "edited"}})

        await wait_until(lambda: published(emulator, "payments") == bundles[0], what="the edit to be undone")


async def test_existing_stale_configmap_updated(client_configuration, kube, emulator, bundles):
    await kube(kube.core.create_namespace, {"metadata": {"name": "payments"}})
    stale = {"metadata": {"name": ROOT_CONFIGMAP_NAME}, "data": {"root-cert.pem": bundles[1]}}
    await kube(kube.core.create_namespaced_config_map, "payments", stale)

    async with publishing(client_configuration, bundles[0]):
        await wait_until(lambda: published(emulator, "payments") == bundles[0], what="the stale ConfigMap to be updated")


async def test_bundle_change_republished(client_configuration, kube, emulator, bundles):
    for namespace in ("payments", "shop"):
        await kube(kube.core.create_namespace, {"metadata": {"name": namespace}})

    async with publishing(client_configuration, bundles[0]) as publisher:
        await wait_until(lambda: published(emulator, "shop") == bundles[0], what="the first bundle")
        publisher.set_bundle(bundles[1])

        await wait_until(lambda: published(emulator, "payments") == bundles[1], what="the new bundle in payments")
        await wait_until(lambda: published(emulator, "shop") == bundles[1], what="the new bundle in shop")


async def test_terminating_namespace_skipped(client_configuration, kube, emulator, bundles):
    await kube(kube.core.create_namespace, {"metadata": {"name": "leaving"}, "status": {"phase": "Terminating"}})
    await kube(kube.core.create_namespace, {"metadata": {"name": "payments"}})

    async with publishing(client_configuration, bundles[0]) as publisher:
        # Namespaces are handled in name order, so "leaving" is decided before "payments" is written.
        await wait_until(lambda: publisher.writes >= 1, what="the ConfigMap in payments")

        assert publisher.writes == 1
        assert published(emulator, "payments") == bundles[0]
        assert published(emulator, "leaving") is None


async def test_only_leader_publishes(client_configuration, kube, emulator, bundles):
    await kube(kube.core.create_namespace, {"metadata": {"name": "payments"}})
    clock = FakeClock(NOW)
    settings = ElectionSettings(lease_duration=15, renew_deadline=10, retry_period=2)
    api_client = kubernetes.client.ApiClient(client_configuration)
    holder = LeaderElector(api_client, namespace="idmesh-system", identity="cp-a_1", settings=settings, clock=clock)
    follower = LeaderElector(
        api_client, namespace="idmesh-system", identity="cp-b_2", settings=settings, clock=clock, sleep=clock.sleep
    )
    publisher = RootCertPublisher(client_configuration, bundle_pem=bundles[0], settings=FAST_SETTINGS)
    assert await holder.try_acquire_or_renew() is Outcome.LEADING
    tasks = [asyncio.create_task(follower.run()), asyncio.create_task(run_while_leading(follower, publisher.run))]
    try:
        await wait_until(lambda: clock.sleepers == 1, what="the follower's first round")
        assert not follower.is_leader
        assert emulator.list_counts["configmaps"] == 0

        await holder.release()
        await clock.advance(2, rounds=1)
        assert follower.is_leader
        await wait_until(lambda: published(emulator, "payments") == bundles[0], what="the new leader to publish")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        api_client.close()
