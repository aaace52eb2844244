"""The leader duty that keeps the injection webhook's `caBundle` equal to the mesh trust bundle."""

from __future__ import annotations

import asyncio
import base64
import collections
import copy
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import jsonpatch
import kmock
import kubernetes
import pytest
import pytest_asyncio
import yaml
from kmock._internal import enums, rendering
from kmock._internal.k8s import KubernetesError
from structlog.testing import capture_logs

from controlplane.kube.webhook_ca_bundle import WebhookCABundleUpdater, ca_bundle_patch, encode_ca_bundle
from tests.kubernetes.conftest import ApiServer, Kube, wait_until, within
from tests.kubernetes.k8s_extras import FakeClock, MeshApiEmulator
from tests.kubernetes.test_serve_kubernetes_harness import (  # noqa: F401 - fixtures
    control_plane,
    eventually,
    read_json,
)

PLURAL = "mutatingwebhookconfigurations"
WEBHOOK_MANIFEST = Path(__file__).resolve().parents[2] / "manifests" / "base" / "webhook.yaml"
NAME = "idmesh-sidecar-injector"
RESYNC_SECONDS = 60.0
RETRY_SECONDS = 10.0
BUNDLE_CHECK_SECONDS = 5.0
OLD_BUNDLE = "-----BEGIN CERTIFICATE-----\nb2xk\n-----END CERTIFICATE-----\n"
NEW_BUNDLE = "-----BEGIN CERTIFICATE-----\nbmV3\n-----END CERTIFICATE-----\n"


@attrs.define(kw_only=True)
class WebhookApiEmulator(MeshApiEmulator):
    """`MeshApiEmulator` with MutatingWebhookConfigurations and the JSON patch behaviour of a real API server.

    A JSON patch gets a new `metadata.resourceVersion` like any other write, and a failed `test`
    operation is refused with HTTP 422, as the API server refuses it.
    """

    # Requests to mutatingwebhookconfigurations by HTTP method.
    webhook_requests: collections.Counter[str] = attrs.field(factory=collections.Counter)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.resources[f"admissionregistration.k8s.io/v1/{PLURAL}"] = kmock.ResourceInfo(
            kind="MutatingWebhookConfiguration", namespaced=False)

    async def _handle(self, request: rendering.Request) -> Any:
        if request.resource is not None and request.resource.plural == PLURAL:
            self.webhook_requests[str(request.method.value)] += 1
        try:
            return await super()._handle(request)
        except jsonpatch.JsonPatchTestFailed as exc:
            raise KubernetesError(status=422, reason="Invalid", message=str(exc)) from exc

    def _stamp(self, request: rendering.Request) -> None:
        if request.action == enums.action.UPDATE and isinstance(request.data, list):
            request.data.append({"op": "add", "path": "/metadata/resourceVersion", "value": str(self.revision)})
            return
        super()._stamp(request)


@pytest_asyncio.fixture()
async def api_server() -> AsyncIterator[ApiServer]:
    async with WebhookApiEmulator() as emulator:
        server = ApiServer(emulator)
        await server.start()
        try:
            yield server
        finally:
            await server.stop()


def manifest_configuration() -> dict[str, Any]:
    """Return the MutatingWebhookConfiguration of manifests/base, which has no caBundle."""
    return yaml.safe_load(WEBHOOK_MANIFEST.read_text())


async def create_configuration(kube: Kube, body: dict[str, Any]) -> None:
    api = kubernetes.client.AdmissionregistrationV1Api(kube.api_client)
    await kube(api.create_mutating_webhook_configuration, body, _preload_content=False)


async def read_configuration(kube: Kube) -> dict[str, Any] | None:
    api = kubernetes.client.AdmissionregistrationV1Api(kube.api_client)
    return await read_json(kube, api.read_mutating_webhook_configuration, NAME)


def ca_bundles(configuration: dict[str, Any] | None) -> list[str | None]:
    return [webhook["clientConfig"].get("caBundle") for webhook in (configuration or {}).get("webhooks", [])]


class Bundle:
    """A bundle PEM provider whose value the test changes."""

    def __init__(self, pem: str) -> None:
        self.pem = pem

    def __call__(self) -> str:
        return self.pem


@pytest_asyncio.fixture()
async def run_updater(client_configuration: kubernetes.client.Configuration) -> AsyncIterator[Any]:
    """Start updaters with a fake clock's sleep, and cancel them all at teardown."""
    tasks: list[asyncio.Task[None]] = []

    def start(bundle: Bundle, clock: FakeClock) -> WebhookCABundleUpdater:
        updater = WebhookCABundleUpdater(client_configuration, name=NAME, bundle_pem=bundle,
                                         resync_seconds=RESYNC_SECONDS, retry_seconds=RETRY_SECONDS,
                                         bundle_check_seconds=BUNDLE_CHECK_SECONDS, sleep=clock.sleep)
        tasks.append(asyncio.create_task(updater.run()))
        return updater

    try:
        yield start
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def pass_time(clock: FakeClock, seconds: float) -> None:
    """Advance `clock` one bundle check at a time, waiting each time for the updater's next sleep."""
    for _ in range(int(seconds / BUNDLE_CHECK_SECONDS)):
        await clock.advance(BUNDLE_CHECK_SECONDS, rounds=1)


def two_webhooks(stale_bundle: str) -> dict[str, Any]:
    """Return the manifest's configuration with a second webhook that has a stale caBundle."""
    configuration = manifest_configuration()
    second = copy.deepcopy(configuration["webhooks"][0])
    second["name"] = "second.idmesh.io"
    second["clientConfig"]["caBundle"] = encode_ca_bundle(stale_bundle)
    configuration["webhooks"].append(second)
    return configuration


def test_manifest_names_the_configuration_the_duty_updates():
    assert manifest_configuration()["metadata"]["name"] == NAME


def test_patch_is_empty_when_every_ca_bundle_is_current():
    configuration = two_webhooks(NEW_BUNDLE)
    configuration["webhooks"][0]["clientConfig"]["caBundle"] = encode_ca_bundle(NEW_BUNDLE)

    assert ca_bundle_patch(configuration, encode_ca_bundle(NEW_BUNDLE)) == []


def test_patch_tests_resource_version_and_webhook_names():
    configuration = two_webhooks(OLD_BUNDLE)
    configuration["metadata"]["resourceVersion"] = "7"
    ca_bundle = encode_ca_bundle(NEW_BUNDLE)

    assert ca_bundle_patch(configuration, ca_bundle) == [
        {"op": "test", "path": "/metadata/resourceVersion", "value": "7"},
        {"op": "test", "path": "/webhooks/0/name", "value": "sidecar-injector.idmesh.io"},
        {"op": "add", "path": "/webhooks/0/clientConfig/caBundle", "value": ca_bundle},
        {"op": "test", "path": "/webhooks/1/name", "value": "second.idmesh.io"},
        {"op": "add", "path": "/webhooks/1/clientConfig/caBundle", "value": ca_bundle},
    ]


async def test_empty_and_stale_ca_bundles_are_patched_once(emulator, kube, run_updater):
    await create_configuration(kube, two_webhooks(OLD_BUNDLE))
    clock = FakeClock()

    updater = run_updater(Bundle(NEW_BUNDLE), clock)
    await wait_until(lambda: clock.sleepers == 1, what="the first pass")
    after_first_pass = collections.Counter(emulator.webhook_requests)
    await pass_time(clock, RESYNC_SECONDS)
    after_second_pass = collections.Counter(emulator.webhook_requests)
    configuration = await read_configuration(kube)

    assert (after_first_pass["GET"], after_first_pass["PATCH"]) == (1, 1)
    assert (after_second_pass["GET"], after_second_pass["PATCH"], after_second_pass["PUT"]) == (2, 1, 0)
    assert updater.writes == 1
    assert ca_bundles(configuration) == [encode_ca_bundle(NEW_BUNDLE)] * 2
    assert base64.b64decode(ca_bundles(configuration)[0]).decode() == NEW_BUNDLE


async def test_changed_bundle_is_patched_before_resync(emulator, kube, run_updater):
    configuration = manifest_configuration()
    configuration["webhooks"][0]["clientConfig"]["caBundle"] = encode_ca_bundle(OLD_BUNDLE)
    await create_configuration(kube, configuration)
    bundle = Bundle(OLD_BUNDLE)
    clock = FakeClock()

    updater = run_updater(bundle, clock)
    await wait_until(lambda: clock.sleepers == 1, what="the first pass")
    writes_before = updater.writes
    bundle.pem = NEW_BUNDLE
    await clock.advance(BUNDLE_CHECK_SECONDS, rounds=1)

    assert writes_before == 0
    assert updater.writes == 1
    assert ca_bundles(await read_configuration(kube)) == [encode_ca_bundle(NEW_BUNDLE)]


async def test_missing_configuration_is_patched_once_created(emulator, kube, run_updater):
    clock = FakeClock()

    with capture_logs() as logs:
        updater = run_updater(Bundle(NEW_BUNDLE), clock)
        await wait_until(lambda: clock.sleepers == 1, what="the first pass")
        await pass_time(clock, RETRY_SECONDS)
        missing = [entry for entry in logs if entry["event"] == "webhook_ca_bundle.configuration_missing"]
        await create_configuration(kube, manifest_configuration())
        await pass_time(clock, RETRY_SECONDS)

    assert emulator.webhook_requests["GET"] == 3
    assert [(entry["log_level"], entry["name"]) for entry in missing] == [("info", NAME)]
    assert updater.writes == 1
    assert ca_bundles(await read_configuration(kube)) == [encode_ca_bundle(NEW_BUNDLE)]


async def test_configuration_edited_since_read_is_rejected(emulator, kube):
    await create_configuration(kube, manifest_configuration())
    read = await read_configuration(kube)
    patch = ca_bundle_patch(read, encode_ca_bundle(NEW_BUNDLE))
    edit = [{"op": "add", "path": "/metadata/labels/edited", "value": "yes"}]
    api = kubernetes.client.AdmissionregistrationV1Api(kube.api_client)
    await kube(api.patch_mutating_webhook_configuration, NAME, edit, _content_type="application/json-patch+json")

    with pytest.raises(kubernetes.client.ApiException) as caught:
        await kube(api.patch_mutating_webhook_configuration, NAME, patch,
                   _content_type="application/json-patch+json")

    assert caught.value.status == 422
    assert ca_bundles(await read_configuration(kube)) == [None]


# ----- through `controlplane serve` -------------------------------------------------------


@pytest.fixture()
def serve_overrides() -> dict[str, Any]:
    return {"webhook_address": "127.0.0.1:0"}


@pytest_asyncio.fixture()
async def webhook_configuration(kube: Kube) -> None:
    """The manifest's configuration, created before the control plane starts, as kustomize applies it."""
    await create_configuration(kube, manifest_configuration())


async def test_leader_sets_ca_bundle_to_ca_roots(webhook_configuration, control_plane, kube):
    expected = base64.b64encode(control_plane.ca.trust_bundle().to_pem().encode()).decode()

    configuration = await eventually(
        lambda: _with_ca_bundle(kube), what=f"caBundle of MutatingWebhookConfiguration {NAME}",
    )

    unchanged = manifest_configuration()["webhooks"]
    unchanged[0]["clientConfig"]["caBundle"] = expected
    assert control_plane.kubernetes.elector.is_leader
    assert ca_bundles(configuration) == [expected]
    assert configuration["webhooks"] == unchanged


async def _with_ca_bundle(kube: Kube) -> dict[str, Any] | None:
    configuration = await within(read_configuration(kube))
    return configuration if configuration and all(ca_bundles(configuration)) else None
