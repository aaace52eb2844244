"""The injection webhook of `controlplane serve --webhook-address`: mesh CA certificate, labels from the API."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import ssl
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from controlplane.errors import ConfigError
from controlplane.injector.settings import InjectionSettings
from controlplane.server.kubernetes_mode import WebhookServer
from tests.kubernetes.conftest import wait_until
from tests.kubernetes.k8s_extras import api_server  # noqa: F401 - fixture
from tests.kubernetes.test_serve_kubernetes_harness import (  # noqa: F401 - fixture
    ROOT_NAMESPACE,
    TRUST_DOMAIN,
    control_plane,
    utc_now,
)

ADMISSION = Path(__file__).resolve().parents[1] / "data" / "admission"
SERVICE_NAME = f"idmesh-controlplane.{ROOT_NAMESPACE}.svc"
PROXY_IMAGE = "registry.example/idmesh/proxy:9.9"


@pytest.fixture()
def serve_overrides() -> dict[str, Any]:
    return {"webhook_address": "127.0.0.1:0", "proxy_image": PROXY_IMAGE}


def client_context(plane) -> ssl.SSLContext:
    """Trust only the mesh roots, as the API server does with the webhook's caBundle."""
    return ssl.create_default_context(cadata=plane.ca.trust_bundle().to_pem())


async def review(plane, body: dict[str, Any]) -> dict[str, Any]:
    url = f"https://127.0.0.1:{plane.kubernetes.webhook.port}/inject"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        async with session.post(url, json=body, ssl=client_context(plane), server_hostname=SERVICE_NAME) as response:
            assert response.status == 200
            return await response.json()


def pod_review() -> dict[str, Any]:
    """A CREATE review of a pod without annotations in namespace shop."""
    return json.loads((ADMISSION / "pod-without-annotations.json").read_text())


def injected_proxy(response: dict[str, Any]) -> dict[str, Any]:
    patch = json.loads(base64.b64decode(response["response"]["patch"]))
    containers = [op["value"] for op in patch if op["path"].startswith("/spec/initContainers")]
    flattened = [item for value in containers for item in (value if isinstance(value, list) else [value])]
    [proxy] = [container for container in flattened if container["name"] == "idmesh-proxy"]
    return proxy


async def test_pod_in_enabled_namespace_is_injected(control_plane, kube):
    await kube(kube.core.create_namespace,
               {"metadata": {"name": "shop", "labels": {"idmesh.io/injection": "enabled"}}})
    source = control_plane.mesh.kubernetes_source
    await wait_until(lambda: source.get(("v1/Namespace", "", "shop")) is not None, what="namespace shop in the store")

    response = await review(control_plane, pod_review())

    proxy = injected_proxy(response)
    assert proxy["image"] == PROXY_IMAGE
    args = proxy["args"]
    assert args[args.index("--control-plane") + 1] == f"{SERVICE_NAME}:15012"
    assert args[args.index("--trust-domain") + 1] == TRUST_DOMAIN


async def test_pod_in_unknown_namespace_is_left_unchanged(control_plane):
    response = await review(control_plane, pod_review())

    assert "patch" not in response["response"]
    assert response["response"]["warnings"] == ["idmesh does not know namespace 'shop' yet, pod left unchanged"]


async def test_webhook_certificate_names_the_service(control_plane, tmp_path):
    host, port = "127.0.0.1", control_plane.kubernetes.webhook.port
    context = client_context(control_plane)
    for name in (SERVICE_NAME, f"{SERVICE_NAME}.cluster.local"):
        # The handshake verifies the chain against the mesh roots and the host name against the DNS SANs.
        _reader, writer = await asyncio.open_connection(host, port, ssl=context, server_hostname=name)
        leaf = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.close()
        await writer.wait_closed()

    (tmp_path / "leaf.der").write_bytes(leaf)
    text = subprocess.run(
        ["openssl", "x509", "-inform", "DER", "-in", str(tmp_path / "leaf.der"), "-noout", "-ext", "subjectAltName"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout
    heading, names = text.strip().splitlines()
    assert heading.strip() == "X509v3 Subject Alternative Name:"
    assert names.strip().split(", ") == [
        f"URI:spiffe://{TRUST_DOMAIN}/ns/{ROOT_NAMESPACE}/sa/idmesh-controlplane",
        f"DNS:{SERVICE_NAME}",
        f"DNS:{SERVICE_NAME}.cluster.local",
    ]


async def test_webhook_port_in_use_is_config_error(control_plane):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        webhook = WebhookServer(ca=control_plane.ca, root_namespace=ROOT_NAMESPACE,
                                settings=InjectionSettings(), labels_of=lambda _name: None,
                                address=f"127.0.0.1:{port}", clock=utc_now)

        with pytest.raises(ConfigError) as caught:
            await webhook.start()

    assert str(caught.value) == f"cannot listen on 127.0.0.1:{port} for the webhook: Address already in use"
