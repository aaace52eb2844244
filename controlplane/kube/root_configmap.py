"""Publish the trust bundle as ConfigMap `idmesh-root-cert` (key `root-cert.pem`) in every namespace.

Pods mount this ConfigMap to verify the control plane before they have a certificate of their
own. `RootCertPublisher.run` is a leader duty (see `leader.run_while_leading`) that watches
Namespaces and every ConfigMap named `idmesh-root-cert`. It rewrites a namespace's ConfigMap
with the current bundle when the namespace appears, when the bundle changes (`set_bundle`),
when someone edits or deletes the ConfigMap, and on a periodic resync.

Namespaces that are terminating are skipped, because the API server refuses new objects in them.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import kubernetes.client
from kubernetes.client import CoreV1Api

from controlplane.errors import KubernetesApiError
from controlplane.kube.rest import DEFAULT_TIMEOUT, MERGE_PATCH, Timeout, call_json
from controlplane.log import get_logger
from controlplane.sources.k8s_informer import Change, WatchSettings, backoff_delay
from controlplane.sources.k8s_resources import ResourceKind
from controlplane.sources.kubernetes import KubernetesSource

ROOT_CONFIGMAP_NAME = "idmesh-root-cert"
ROOT_CERT_KEY = "root-cert.pem"
MANAGED_BY_LABEL = {"app.kubernetes.io/managed-by": "idmesh"}

NAMESPACES = ResourceKind("", "v1", "namespaces", "Namespace")
ROOT_CONFIGMAPS = ResourceKind("", "v1", "configmaps", "ConfigMap", name=ROOT_CONFIGMAP_NAME)

log = get_logger("kube.root_configmap")


def desired_configmap(namespace: str, bundle_pem: str) -> dict[str, Any]:
    """Return the ConfigMap that publishes `bundle_pem` in `namespace`."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": ROOT_CONFIGMAP_NAME, "namespace": namespace, "labels": dict(MANAGED_BY_LABEL)},
        "data": {ROOT_CERT_KEY: bundle_pem},
    }


def is_current(configmap: Mapping[str, Any] | None, bundle_pem: str) -> bool:
    """Return whether `configmap` exists and publishes exactly `bundle_pem`."""
    if configmap is None:
        return False
    return (configmap.get("data") or {}).get(ROOT_CERT_KEY) == bundle_pem


def is_active(namespace: Mapping[str, Any]) -> bool:
    """Return whether objects can still be created in `namespace`, which is not terminating."""
    metadata = namespace.get("metadata") or {}
    phase = (namespace.get("status") or {}).get("phase")
    return not metadata.get("deletionTimestamp") and phase != "Terminating"


class RootCertPublisher:
    """Keeps `idmesh-root-cert` current in every active namespace while `run` is running."""

    def __init__(
        self,
        configuration: kubernetes.client.Configuration,
        *,
        bundle_pem: str,
        settings: WatchSettings | None = None,
        resync_seconds: float = 300.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        timeout: Timeout = DEFAULT_TIMEOUT,
    ) -> None:
        self._configuration = configuration
        self._bundle_pem = bundle_pem
        self._settings = settings or WatchSettings()
        self._resync_seconds = resync_seconds
        self._sleep = sleep
        self._timeout = timeout
        self._source: KubernetesSource | None = None
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        # How many ConfigMaps this publisher has created or patched.
        self.writes = 0

    def set_bundle(self, bundle_pem: str) -> None:
        """Publish `bundle_pem` from now on, and rewrite every namespace's ConfigMap if it changed."""
        if bundle_pem == self._bundle_pem:
            return
        self._bundle_pem = bundle_pem
        log.info("root_configmap.bundle_changed")
        self._mark_all()

    async def run(self) -> None:
        """Watch and publish until cancelled."""
        source = KubernetesSource(
            self._configuration, kinds=(NAMESPACES, ROOT_CONFIGMAPS), settings=self._settings, on_change=self._on_change
        )
        api_client = kubernetes.client.ApiClient(self._configuration)
        self._source = source
        await source.start()
        resync = asyncio.create_task(self._resync())
        try:
            await source.ready.wait()
            self._mark_all()
            await self._publish_forever(CoreV1Api(api_client))
        finally:
            resync.cancel()
            await asyncio.gather(resync, return_exceptions=True)
            self._source = None
            await source.stop()
            api_client.close()

    async def _publish_forever(self, core: CoreV1Api) -> None:
        rng = random.Random()
        failures = 0
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._dirty = sorted(self._dirty), set()
            failed = []
            for namespace in batch:
                try:
                    await self._reconcile(core, namespace)
                except KubernetesApiError as exc:
                    log.warning("root_configmap.write_failed", namespace=namespace, status=exc.status, error=exc.message)
                    failed.append(namespace)
            if not failed:
                failures = 0
                continue
            delay = backoff_delay(failures, self._settings, rng)
            failures += 1
            await self._sleep(delay)
            self._dirty.update(failed)
            self._wake.set()

    async def _resync(self) -> None:
        while True:
            await self._sleep(self._resync_seconds)
            self._mark_all()

    def _mark_all(self) -> None:
        if self._source is None or not self._source.ready.is_set():
            return
        self._dirty.update(
            obj["metadata"]["name"] for obj in self._source.objects() if obj.get("kind") == NAMESPACES.kind
        )
        self._wake.set()

    def _on_change(self, change: Change) -> None:
        type_name, namespace, name = change.key
        if type_name == NAMESPACES.type_name:
            if change.type != "DELETED":
                self._dirty.add(name)
        elif change.type != "ADDED" or not is_current(change.object, self._bundle_pem):
            self._dirty.add(namespace)
        if self._dirty and self._source is not None and self._source.ready.is_set():
            self._wake.set()

    async def _reconcile(self, core: CoreV1Api, namespace: str) -> None:
        assert self._source is not None
        namespace_object = self._source.get((NAMESPACES.type_name, "", namespace))
        if namespace_object is None or not is_active(namespace_object):
            return
        existing = self._source.get((ROOT_CONFIGMAPS.type_name, namespace, ROOT_CONFIGMAP_NAME))
        if is_current(existing, self._bundle_pem):
            return
        await asyncio.to_thread(self._write, core, namespace, self._bundle_pem, exists=existing is not None)

    # Blocking requests, run in worker threads.

    def _write(self, core: CoreV1Api, namespace: str, bundle_pem: str, *, exists: bool) -> None:
        if not exists and self._create(core, namespace, bundle_pem):
            return
        call_json(core.patch_namespaced_config_map, ROOT_CONFIGMAP_NAME, namespace,
                  {"metadata": {"labels": dict(MANAGED_BY_LABEL)}, "data": {ROOT_CERT_KEY: bundle_pem}},
                  what=f"PATCH configmaps {namespace}/{ROOT_CONFIGMAP_NAME}", timeout=self._timeout,
                  _content_type=MERGE_PATCH)
        self.writes += 1
        log.info("root_configmap.updated", namespace=namespace)

    def _create(self, core: CoreV1Api, namespace: str, bundle_pem: str) -> bool:
        """Create the ConfigMap; return False if it already exists, so the caller patches it instead."""
        try:
            call_json(core.create_namespaced_config_map, namespace, desired_configmap(namespace, bundle_pem),
                      what=f"POST configmaps {namespace}/{ROOT_CONFIGMAP_NAME}", timeout=self._timeout)
        except KubernetesApiError as exc:
            if exc.status == 409:
                return False
            raise
        self.writes += 1
        log.info("root_configmap.created", namespace=namespace)
        return True
