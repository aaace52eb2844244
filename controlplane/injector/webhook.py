"""The mutating admission webhook: HTTPS, `POST /inject`, one AdmissionReview per request.

The caller supplies the TLS context (the serving certificate comes from the mesh CA) and a
lookup for namespace labels (the control plane's namespace informer). `GET /healthz` returns
200 for the Service's readiness probe.
"""

from __future__ import annotations

import inspect
import ssl
from pathlib import Path
from typing import Any, Awaitable, Callable, Mapping

from aiohttp import web

from controlplane.injector.review import (
    AdmissionReviewError,
    PodRequest,
    parse_review,
    pod_request,
    review_response,
)
from controlplane.injector.settings import InjectionSettings
from controlplane.injector.template import inject_pod
from controlplane.log import get_logger
from controlplane.translate.resources import WEBHOOK_PORT

log = get_logger("injector")

INJECT_PATH = "/inject"
HEALTH_PATH = "/healthz"
# An AdmissionReview carries the pod twice at most (object, oldObject); etcd caps objects at 1.5 MiB.
MAX_BODY_BYTES = 4 * 1024 * 1024

# Namespace name to its labels, or None when the namespace is not known (yet).
NamespaceLabels = Callable[[str], "Mapping[str, str] | None | Awaitable[Mapping[str, str] | None]"]


def server_ssl_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """Build a TLS 1.2+ server context from PEM files.

    Calling `load_cert_chain` again on the returned context replaces the certificate for new
    connections, which is how a caller rotates it without restarting the server.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile=str(cert_file), keyfile=str(key_file))
    return context


class InjectorWebhook:
    """The webhook server; `start()` binds and returns the port, `stop()` closes it."""

    def __init__(
        self,
        *,
        settings: InjectionSettings,
        namespace_labels: NamespaceLabels,
        ssl_context: ssl.SSLContext,
        host: str = "0.0.0.0",
        port: int = WEBHOOK_PORT,
    ) -> None:
        self.settings = settings
        self._namespace_labels = namespace_labels
        self._ssl_context = ssl_context
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_post(INJECT_PATH, self._handle_inject)
        app.router.add_get(HEALTH_PATH, self._handle_health)
        return app

    async def start(self) -> int:
        """Start serving; return the bound port (useful with port 0)."""
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port, ssl_context=self._ssl_context)
        await site.start()
        port = int(self._runner.addresses[0][1])
        log.info("injector.webhook.started", host=self._host, port=port)
        return port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            log.info("injector.webhook.stopped")

    async def _handle_health(self, _request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _handle_inject(self, request: web.Request) -> web.Response:
        try:
            admission = parse_review(await request.read())
        except AdmissionReviewError as exc:
            log.warning("injector.review.rejected", error=str(exc), remote=request.remote)
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(await self.review(admission))

    async def review(self, admission: Mapping[str, Any]) -> dict[str, Any]:
        """Build the response to one parsed admission request.

        Never raises, because every failure admits the pod unchanged.
        """
        uid = str(admission["uid"])
        parsed = pod_request(admission)
        if isinstance(parsed, str):
            log.warning("injector.review.ignored", uid=uid, reason=parsed)
            return review_response(uid, warnings=[parsed])
        labels, problem = await self._lookup_labels(parsed)
        if labels is None:
            return review_response(uid, warnings=[problem])
        try:
            result = inject_pod(parsed.pod, namespace_labels=labels, settings=self.settings)
        # A fault in the template must not block pod creation, so it is logged with its
        # traceback and the pod is admitted unchanged.
        except Exception as exc:  # noqa: BLE001
            log.error("injector.pod.failed", uid=uid, namespace=parsed.namespace, pod=parsed.pod_name,
                      error=repr(exc), exc_info=True)
            return review_response(uid, warnings=[f"idmesh sidecar injection failed, pod left unchanged: {exc!r}"])

        fields = {"uid": uid, "namespace": parsed.namespace, "pod": parsed.pod_name, "reason": result.reason}
        if result.injected:
            log.info("injector.pod.injected", **fields, warnings=list(result.warnings))
        elif result.warnings:
            log.warning("injector.pod.skipped", **fields, warnings=list(result.warnings))
        else:
            log.info("injector.pod.skipped", **fields)
        return review_response(uid, patch=result.patch, warnings=result.warnings)

    async def _lookup_labels(self, parsed: PodRequest) -> tuple[Mapping[str, str] | None, str]:
        try:
            labels = self._namespace_labels(parsed.namespace)
            if inspect.isawaitable(labels):
                labels = await labels
        except Exception as exc:  # noqa: BLE001 - the lookup belongs to the caller; see review()
            log.error("injector.namespace.failed", namespace=parsed.namespace, error=repr(exc), exc_info=True)
            return None, f"idmesh could not read the labels of namespace {parsed.namespace!r}, pod left unchanged: {exc!r}"
        if labels is None:
            # Injecting without the labels could override a namespace's explicit opt-out.
            problem = f"idmesh does not know namespace {parsed.namespace!r} yet, pod left unchanged"
            log.warning("injector.namespace.unknown", namespace=parsed.namespace, pod=parsed.pod_name)
            return None, problem
        return labels, ""
