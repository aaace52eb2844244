"""Keep the `caBundle` of the injection webhook's MutatingWebhookConfiguration equal to the trust bundle.

The webhook serves a certificate issued by the mesh CA, so the API server can call it only if
every webhook's `clientConfig.caBundle` contains the mesh roots. `WebhookCABundleUpdater.run`
is a leader duty (see `leader.run_while_leading`). It reads the configuration on start, every
`resync_seconds`, and within `bundle_check_seconds` of the bundle provider returning another
bundle. When a webhook's `caBundle` differs, it sends one JSON patch that sets them all.

A JSON merge patch would replace the `webhooks` list as a whole, so the updater sends a JSON
patch (RFC 6902) that addresses each webhook by index. The patch starts with `test` operations on
`metadata.resourceVersion` and on each patched webhook's name. A configuration edited since it
was read therefore fails with HTTP 422, and the next pass reads it again.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import kubernetes.client
from kubernetes.client import AdmissionregistrationV1Api

from controlplane.errors import KubernetesApiError
from controlplane.kube.rest import DEFAULT_TIMEOUT, Timeout, call_json
from controlplane.log import get_logger

JSON_PATCH = "application/json-patch+json"

log = get_logger("kube.webhook_ca_bundle")


def encode_ca_bundle(bundle_pem: str) -> str:
    """Return `bundle_pem` as the API expects `caBundle`: base64 of the PEM bytes."""
    return base64.b64encode(bundle_pem.encode("ascii")).decode("ascii")


def ca_bundle_patch(configuration: Mapping[str, Any], ca_bundle: str) -> list[dict[str, Any]]:
    """Return the JSON patch that sets every webhook's `clientConfig.caBundle` to `ca_bundle`.

    `ca_bundle` is already base64. The patch is empty when every webhook already has it.
    """
    operations: list[dict[str, Any]] = []
    for index, webhook in enumerate(configuration.get("webhooks") or []):
        client_config = webhook.get("clientConfig")
        if isinstance(client_config, Mapping) and client_config.get("caBundle") == ca_bundle:
            continue
        operations.append({"op": "test", "path": f"/webhooks/{index}/name", "value": webhook.get("name")})
        if isinstance(client_config, Mapping):
            # `add` replaces a member that exists, so it covers a missing and a stale caBundle.
            operations.append({"op": "add", "path": f"/webhooks/{index}/clientConfig/caBundle", "value": ca_bundle})
        else:
            operations.append({"op": "add", "path": f"/webhooks/{index}/clientConfig", "value": {"caBundle": ca_bundle}})
    if not operations:
        return []
    resource_version = (configuration.get("metadata") or {}).get("resourceVersion")
    if resource_version is not None:
        operations.insert(0, {"op": "test", "path": "/metadata/resourceVersion", "value": resource_version})
    return operations


class WebhookCABundleUpdater:
    """Keeps the `caBundle` of MutatingWebhookConfiguration `name` current while `run` is running."""

    def __init__(
        self,
        configuration: kubernetes.client.Configuration,
        *,
        name: str,
        bundle_pem: Callable[[], str],
        resync_seconds: float = 60.0,
        retry_seconds: float = 10.0,
        bundle_check_seconds: float = 5.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        timeout: Timeout = DEFAULT_TIMEOUT,
    ) -> None:
        self._configuration = configuration
        self._name = name
        self._bundle_pem = bundle_pem
        self._resync_seconds = resync_seconds
        self._retry_seconds = retry_seconds
        self._bundle_check_seconds = bundle_check_seconds
        self._sleep = sleep
        self._timeout = timeout
        self._reported_missing = False
        # How many patches this updater has sent.
        self.writes = 0

    async def run(self) -> None:
        """Reconcile now, then again after each wait, until cancelled."""
        api_client = kubernetes.client.ApiClient(self._configuration)
        api = AdmissionregistrationV1Api(api_client)
        try:
            while True:
                bundle_pem = self._bundle_pem()
                delay = await self._reconcile_once(api, bundle_pem)
                await self._wait(delay, bundle_pem)
        finally:
            api_client.close()

    async def _reconcile_once(self, api: AdmissionregistrationV1Api, bundle_pem: str) -> float:
        """Reconcile once and return how long to wait before the next pass."""
        try:
            await asyncio.to_thread(self._reconcile, api, encode_ca_bundle(bundle_pem))
        except KubernetesApiError as exc:
            if exc.status == 404:
                if not self._reported_missing:
                    # meshctl install applies the webhook last, so the leader often starts first.
                    log.info("webhook_ca_bundle.configuration_missing", name=self._name,
                             retry_seconds=self._retry_seconds)
                    self._reported_missing = True
            else:
                log.warning("webhook_ca_bundle.update_failed", name=self._name, status=exc.status,
                            error=exc.message, retry_seconds=self._retry_seconds)
            return self._retry_seconds
        self._reported_missing = False
        return self._resync_seconds

    async def _wait(self, seconds: float, bundle_pem: str) -> None:
        """Sleep `seconds`, but return early once the provider's bundle differs from `bundle_pem`."""
        waited = 0.0
        while waited < seconds and self._bundle_pem() == bundle_pem:
            step = min(self._bundle_check_seconds, seconds - waited)
            await self._sleep(step)
            waited += step
        if self._bundle_pem() != bundle_pem:
            log.info("webhook_ca_bundle.bundle_changed", name=self._name)

    # Blocking requests, run in a worker thread.

    def _reconcile(self, api: AdmissionregistrationV1Api, ca_bundle: str) -> None:
        what = f"mutatingwebhookconfigurations {self._name}"
        current = call_json(api.read_mutating_webhook_configuration, self._name, what=f"GET {what}",
                            timeout=self._timeout)
        patch = ca_bundle_patch(current, ca_bundle)
        if not patch:
            return
        call_json(api.patch_mutating_webhook_configuration, self._name, patch, what=f"PATCH {what}",
                  timeout=self._timeout, _content_type=JSON_PATCH)
        self.writes += 1
        log.info("webhook_ca_bundle.updated", name=self._name,
                 resource_version=(current.get("metadata") or {}).get("resourceVersion"))
