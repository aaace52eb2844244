"""Clients for the control plane's debug API and for each sidecar's admin endpoints.

The control plane admin API is found, in this order:

1. `--admin-url URL`;
2. the environment variable `IDMESH_ADMIN_URL`;
3. with `--kubernetes`, `--kubeconfig` or `--context`: the Kubernetes API server's service
   proxy to `idmesh-controlplane:15014` in `--control-plane-namespace` (default idmesh-system);
4. the control plane of a local mesh started by `meshctl up` with its default subnet,
   `http://127.10.0.1:15014`.

A sidecar is reached at the address the control plane reports for it (its `INSTANCE_IP`): the
agent's status at `ADDRESS:15020/healthz/ready` and, in local mode, Envoy's admin at
`ADDRESS:15000`. In a cluster the agent status goes through the API server's pod proxy; Envoy's
admin listens on the pod's 127.0.0.1 only, so it needs `kubectl port-forward` and
`--envoy-admin-url`.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, TypeVar

from controlplane.errors import MeshError
from controlplane.model.types import DEFAULT_ROOT_NAMESPACE
from controlplane.translate.resources import ADMIN_PORT, AGENT_HEALTH_PORT, ENVOY_ADMIN_PORT

ADMIN_URL_ENV = "IDMESH_ADMIN_URL"
LOCAL_ADMIN_URL = f"http://127.10.0.1:{ADMIN_PORT}"
CONTROL_PLANE_SERVICE = "idmesh-controlplane"
# Seconds to wait for the control plane, and for each sidecar endpoint.
ADMIN_TIMEOUT_SECONDS = 10.0
SIDECAR_TIMEOUT_SECONDS = 3.0
HOW_TO_POINT = f"pass --admin-url URL, set {ADMIN_URL_ENV}, or use --kubernetes for a cluster"

T = TypeVar("T")


class AdminApiError(MeshError):
    """The admin API or a sidecar endpoint could not be reached, or returned an error."""


class NotFoundError(AdminApiError):
    """The endpoint returned 404: the workload or proxy asked for does not exist."""


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options that choose how to reach the control plane."""
    group = parser.add_argument_group("control plane connection")
    group.add_argument("--admin-url", metavar="URL", default=None,
                       help=f"control plane admin API base URL (default: ${ADMIN_URL_ENV}, else {LOCAL_ADMIN_URL})")
    group.add_argument("--kubernetes", action="store_true",
                       help="reach the control plane through the Kubernetes API server's service proxy")
    group.add_argument("--kubeconfig", metavar="PATH", default=None, help="kubeconfig file; implies --kubernetes")
    group.add_argument("--context", metavar="NAME", default=None, help="kubeconfig context; implies --kubernetes")
    group.add_argument("--control-plane-namespace", metavar="NAMESPACE", default=DEFAULT_ROOT_NAMESPACE,
                       help="namespace of the idmesh-controlplane Service (default: %(default)s)")


def uses_kubernetes(args: argparse.Namespace, environ: dict[str, str]) -> bool:
    """Return whether the connection options pick the Kubernetes API server over a plain URL."""
    if args.admin_url or environ.get(ADMIN_URL_ENV):
        return False
    return bool(args.kubernetes or args.kubeconfig or args.context)


def admin_client(args: argparse.Namespace, environ: dict[str, str] | None = None) -> AdminClient:
    """Build the client that the connection options in `args` select."""
    environ = dict(os.environ) if environ is None else environ
    if uses_kubernetes(args, environ):
        return KubernetesAdminClient.connect(
            kubeconfig=args.kubeconfig, context=args.context, namespace=args.control_plane_namespace
        )
    url = args.admin_url or environ.get(ADMIN_URL_ENV) or LOCAL_ADMIN_URL
    if not url.startswith(("http://", "https://")):
        raise AdminApiError(f"admin URL {url!r} is not an http:// or https:// URL", url=url)
    return HttpAdminClient(url)


# ----- plain HTTP ----------------------------------------------------------------------------


def http_get(url: str, *, timeout: float) -> tuple[int, bytes]:
    """GET `url` and return (status, body); an HTTP error status is returned, not raised."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - http(s) only
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError, socket.timeout) as exc:
        reason = str(getattr(exc, "reason", exc))
        raise AdminApiError(f"cannot reach {url}: {reason}", url=url, reason=reason) from exc


def decode_json(body: bytes, *, where: str) -> Any:
    try:
        return json.loads(body)
    except ValueError as exc:
        raise AdminApiError(f"{where} returned a body that is not JSON: {body[:80]!r}", url=where) from exc


def error_from_status(status: int, body: bytes, *, where: str) -> AdminApiError:
    """Turn an error status into an exception carrying the server's `error` message if any."""
    try:
        message = json.loads(body).get("error") or ""
    except (ValueError, AttributeError):
        message = ""
    if not message:
        message = body.decode(errors="replace").strip()[:200]
    if status == 404:
        return NotFoundError(message or f"{where} was not found", url=where, status=status)
    return AdminApiError(f"{where} returned HTTP {status}: {message}", url=where, status=status)


class AdminClient:
    """Read JSON documents from the control plane's admin API."""

    description = ""

    def get_json(self, path: str) -> Any:
        raise NotImplementedError

    def agent_status(self, proxy: dict[str, Any]) -> dict[str, Any]:
        """Fetch the agent's `/healthz/ready` document for a proxy from the debug API."""
        raise NotImplementedError

    def envoy_admin_url(self, proxy: dict[str, Any]) -> str:
        """Return the base URL of the proxy's Envoy admin interface."""
        raise NotImplementedError


class HttpAdminClient(AdminClient):
    """The admin API at a base URL; sidecars at their own addresses (local mode)."""

    def __init__(self, base_url: str, *, timeout: float = ADMIN_TIMEOUT_SECONDS) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.description = self.base_url

    def get_json(self, path: str) -> Any:
        url = f"{self.base_url}{path}"
        try:
            status, body = http_get(url, timeout=self.timeout)
        except AdminApiError as exc:
            raise AdminApiError(
                f"cannot reach the control plane admin API at {self.base_url}: {exc.fields()['reason']}; "
                f"{HOW_TO_POINT}",
                url=self.base_url,
            ) from exc
        if status != 200:
            raise error_from_status(status, body, where=url)
        return decode_json(body, where=url)

    def agent_status(self, proxy: dict[str, Any]) -> dict[str, Any]:
        url = f"http://{proxy['address']}:{AGENT_HEALTH_PORT}/healthz/ready"
        # The agent returns 503 with the same document while it is not ready.
        status, body = http_get(url, timeout=SIDECAR_TIMEOUT_SECONDS)
        if status not in (200, 503):
            raise error_from_status(status, body, where=url)
        return decode_json(body, where=url)

    def envoy_admin_url(self, proxy: dict[str, Any]) -> str:
        return f"http://{proxy['address']}:{ENVOY_ADMIN_PORT}"


class KubernetesAdminClient(AdminClient):
    """The admin API through the API server's service proxy; agents through its pod proxy.

    NOTE: tests run this class only against a fake CoreV1Api, never a real API server.
    """

    def __init__(self, core_api: Any, *, namespace: str) -> None:
        self.core = core_api
        self.namespace = namespace
        self.service = f"{CONTROL_PLANE_SERVICE}:{ADMIN_PORT}"
        self.description = f"service {namespace}/{self.service} through the Kubernetes API server"

    @classmethod
    def connect(cls, *, kubeconfig: str | None, context: str | None, namespace: str) -> KubernetesAdminClient:
        import kubernetes

        from controlplane.sources.kubernetes import load_client_configuration

        configuration = load_client_configuration(kubeconfig=kubeconfig, context=context)
        api = kubernetes.client.CoreV1Api(kubernetes.client.ApiClient(configuration))
        return cls(api, namespace=namespace)

    def _call(self, what: str, function: Callable[..., Any], **kwargs: Any) -> Any:
        from kubernetes.client.exceptions import ApiException

        try:
            response = function(_preload_content=False, _request_timeout=ADMIN_TIMEOUT_SECONDS, **kwargs)
        except ApiException as exc:
            body = exc.body.encode() if isinstance(exc.body, str) else (exc.body or b"")
            raise error_from_status(exc.status or 0, body, where=what) from exc
        except OSError as exc:
            raise AdminApiError(f"cannot reach the Kubernetes API server for {what}: {exc}; {HOW_TO_POINT}",
                                url=what) from exc
        body = response.data if hasattr(response, "data") else response.read()
        return decode_json(body, where=what)

    def get_json(self, path: str) -> Any:
        return self._call(
            f"{self.description}{path}",
            self.core.connect_get_namespaced_service_proxy_with_path,
            name=self.service, namespace=self.namespace, path=path.lstrip("/"),
        )

    def _pod_name(self, proxy: dict[str, Any]) -> str:
        namespace = proxy["workload"].partition("/")[0]
        pods = self.core.list_namespaced_pod(namespace, field_selector=f"status.podIP={proxy['address']}")
        if not pods.items:
            raise NotFoundError(f"no pod in namespace {namespace} has IP {proxy['address']}",
                                namespace=namespace, address=proxy["address"])
        return pods.items[0].metadata.name

    def agent_status(self, proxy: dict[str, Any]) -> dict[str, Any]:
        namespace = proxy["workload"].partition("/")[0]
        pod = self._pod_name(proxy)
        return self._call(
            f"pod {namespace}/{pod} port {AGENT_HEALTH_PORT}",
            self.core.connect_get_namespaced_pod_proxy_with_path,
            name=f"{pod}:{AGENT_HEALTH_PORT}", namespace=namespace, path="healthz/ready",
        )

    def envoy_admin_url(self, proxy: dict[str, Any]) -> str:
        namespace = proxy["workload"].partition("/")[0]
        raise AdminApiError(
            f"Envoy's admin interface listens on 127.0.0.1 inside the pod; run "
            f"`kubectl port-forward -n {namespace} <pod> {ENVOY_ADMIN_PORT}` and pass "
            f"--envoy-admin-url http://127.0.0.1:{ENVOY_ADMIN_PORT}",
            workload=proxy["workload"],
        )


def envoy_get_json(base_url: str, path: str) -> Any:
    """GET a JSON document from an Envoy admin interface."""
    url = f"{base_url.rstrip('/')}{path}"
    status, body = http_get(url, timeout=SIDECAR_TIMEOUT_SECONDS)
    if status != 200:
        raise error_from_status(status, body, where=url)
    return decode_json(body, where=url)


def gather(function: Callable[[Any], T], items: Iterable[Any]) -> list[T | AdminApiError]:
    """Call `function` on every item in parallel threads; an AdminApiError is returned in place."""

    def guarded(item: Any) -> T | AdminApiError:
        try:
            return function(item)
        except AdminApiError as exc:
            return exc

    items = list(items)
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=min(16, len(items))) as pool:
        return list(pool.map(guarded, items))


def split_workload(text: str, namespace: str | None) -> tuple[str, str]:
    """Read WORKLOAD as `name` (in `namespace`, default "default") or `namespace/name`."""
    if "/" in text:
        ns, _, name = text.partition("/")
        if namespace is not None and namespace != ns:
            raise ValueError(f"workload {text!r} names namespace {ns!r} but -n is {namespace!r}; give one namespace")
    else:
        ns, name = namespace or "default", text
    if not ns or not name or "/" in name:
        raise ValueError(f"workload {text!r} is not NAME or NAMESPACE/NAME")
    return ns, name
