"""How meshctl finds and reads the control plane's admin API, and how it reports failures."""

from __future__ import annotations

import argparse
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from kubernetes.client.exceptions import ApiException

from meshctl.client import (
    LOCAL_ADMIN_URL,
    AdminApiError,
    HttpAdminClient,
    KubernetesAdminClient,
    NotFoundError,
    add_connection_arguments,
    admin_client,
    split_workload,
    uses_kubernetes,
)


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_connection_arguments(parser)
    return parser.parse_args(argv)


def test_admin_url_flag_wins_over_environment() -> None:
    client = admin_client(parse("--admin-url", "http://127.0.0.1:1/"), {"IDMESH_ADMIN_URL": "http://127.0.0.2:2"})
    assert client.base_url == "http://127.0.0.1:1"


def test_environment_wins_over_local_default() -> None:
    client = admin_client(parse(), {"IDMESH_ADMIN_URL": "http://127.0.0.2:2"})
    assert client.base_url == "http://127.0.0.2:2"


def test_local_default_without_options() -> None:
    client = admin_client(parse(), {})
    assert client.base_url == LOCAL_ADMIN_URL == "http://127.10.0.1:15014"


@pytest.mark.parametrize("argv", [("--kubernetes",), ("--kubeconfig", "/nowhere"), ("--context", "kind")])
def test_kubernetes_options_select_the_service_proxy(argv) -> None:
    assert uses_kubernetes(parse(*argv), {}) is True


def test_admin_url_overrides_kubernetes_options() -> None:
    assert uses_kubernetes(parse("--kubernetes", "--admin-url", "http://127.0.0.1:1"), {}) is False


def test_admin_url_must_be_http() -> None:
    with pytest.raises(AdminApiError, match="'ftp://x' is not an http:// or https:// URL"):
        admin_client(parse("--admin-url", "ftp://x"), {})


@pytest.mark.parametrize(("text", "namespace", "expected"), [
    ("ledger", None, ("default", "ledger")),
    ("ledger", "payments", ("payments", "ledger")),
    ("payments/ledger", None, ("payments", "ledger")),
    ("payments/ledger", "payments", ("payments", "ledger")),
])
def test_split_workload_forms(text, namespace, expected) -> None:
    assert split_workload(text, namespace) == expected


@pytest.mark.parametrize(("text", "namespace", "message"), [
    ("payments/ledger", "shop", "names namespace 'payments' but -n is 'shop'; give one namespace"),
    ("a/b/c", None, "is not NAME or NAMESPACE/NAME"),
    ("/ledger", None, "is not NAME or NAMESPACE/NAME"),
])
def test_split_workload_rejects(text, namespace, message) -> None:
    with pytest.raises(ValueError, match=message):
        split_workload(text, namespace)


class Handler(BaseHTTPRequestHandler):
    routes: dict[str, tuple[int, bytes]] = {
        "/debug/syncz": (200, b'{"proxies": []}'),
        "/debug/workloads/payments/nope": (404, b'{"error": "workload payments/nope is not in the mesh state"}'),
        "/debug/broken": (500, b"internal failure"),
        "/debug/text": (200, b"not json"),
    }

    def do_GET(self) -> None:  # noqa: N802 - name fixed by BaseHTTPRequestHandler
        status, body = self.routes.get(self.path, (404, b"404: Not Found"))
        self.send_response(status)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def admin_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield HttpAdminClient(f"http://127.0.0.1:{server.server_address[1]}", timeout=5)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_http_client_reads_json(admin_server) -> None:
    assert admin_server.get_json("/debug/syncz") == {"proxies": []}


def test_http_404_carries_server_error_message(admin_server) -> None:
    with pytest.raises(NotFoundError) as caught:
        admin_server.get_json("/debug/workloads/payments/nope")
    assert str(caught.value) == "workload payments/nope is not in the mesh state"
    assert caught.value.status == 404


def test_http_500_names_url_and_status(admin_server) -> None:
    with pytest.raises(AdminApiError) as caught:
        admin_server.get_json("/debug/broken")
    assert str(caught.value) == f"{admin_server.base_url}/debug/broken returned HTTP 500: internal failure"


def test_http_body_that_is_not_json(admin_server) -> None:
    with pytest.raises(AdminApiError, match="returned a body that is not JSON: b'not json'"):
        admin_server.get_json("/debug/text")


def test_unreachable_admin_api_says_how_to_point_elsewhere() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    closed = HttpAdminClient(url, timeout=2)
    with pytest.raises(AdminApiError) as caught:
        closed.get_json("/debug/syncz")
    message = str(caught.value)
    assert message.startswith(f"cannot reach the control plane admin API at {url}: ")
    assert message.endswith("pass --admin-url URL, set IDMESH_ADMIN_URL, or use --kubernetes for a cluster")


class FakeResponse:
    def __init__(self, body: bytes) -> None:
        self.data = body


class FakeCoreApi:
    """Records service proxy calls the way CoreV1Api receives them."""

    def __init__(self, *, status: int = 200, body: bytes = b"{}") -> None:
        self.calls: list[dict] = []
        self.status = status
        self.body = body

    def connect_get_namespaced_service_proxy_with_path(self, **kwargs):
        self.calls.append(kwargs)
        if self.status != 200:
            raise ApiException(status=self.status, reason="Not Found")
        return FakeResponse(self.body)


def test_kubernetes_client_uses_the_service_proxy_path() -> None:
    core = FakeCoreApi(body=b'{"proxies": [1]}')
    client = KubernetesAdminClient(core, namespace="idmesh-system")

    assert client.get_json("/debug/syncz") == {"proxies": [1]}
    [call] = core.calls
    assert call["name"] == "idmesh-controlplane:15014"
    assert call["namespace"] == "idmesh-system"
    assert call["path"] == "debug/syncz"
    assert call["_preload_content"] is False


def test_kubernetes_404_becomes_not_found() -> None:
    client = KubernetesAdminClient(FakeCoreApi(status=404), namespace="idmesh-system")
    with pytest.raises(NotFoundError):
        client.get_json("/debug/workloads/a/b")


def test_kubernetes_envoy_admin_needs_port_forward() -> None:
    client = KubernetesAdminClient(FakeCoreApi(), namespace="idmesh-system")
    with pytest.raises(AdminApiError, match=r"kubectl port-forward -n payments <pod> 15000"):
        client.envoy_admin_url({"workload": "payments/ledger", "address": "10.0.0.5"})

