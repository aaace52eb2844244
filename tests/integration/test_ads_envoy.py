"""The ADS server against the real Envoy binary, over mTLS, for SotW (GRPC) and Delta (DELTA_GRPC).

Each test starts its own grpc.aio server on a loopback port and its own Envoy with
--disable-hot-restart, an ephemeral admin port and an SVID made for the test. On a failed wait the
assertion message carries the tail of Envoy's log.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
import yaml
from prometheus_client import CollectorRegistry

from controlplane.model.types import MeshState
from controlplane.xds.cache import SnapshotCache
from controlplane.xds.debounce import DebounceSettings
from controlplane.xds.metrics import XdsMetrics
from controlplane.xds.server import AggregatedDiscoveryServer
from controlplane.xds.testing import (
    FakeTranslator,
    TestAuthority,
    direct_response_route,
    eds_cluster,
    http_listener,
    load_assignment,
    proxy_config,
)

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

CONTROL_PLANE_ID = "spiffe://cluster.local/ns/idmesh-system/sa/controlplane"
WORKLOAD_ID = "spiffe://cluster.local/ns/payments/sa/ledger"
WAIT_SECONDS = 30.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def config(listener_port: int, body: str, *, timeout_ms: int = 1000, bad_listener_port: int = 0):
    listeners = {"inbound-http": http_listener("inbound-http", port=listener_port, route_name="local")}
    if bad_listener_port:
        # Two filter chains with the same (empty) match: Envoy rejects this listener.
        listeners["broken"] = http_listener("broken", port=bad_listener_port, route_name="local", chains=2)
    return proxy_config(
        listeners=listeners,
        routes={"local": direct_response_route("local", body, cluster="backend")},
        clusters={"backend": eds_cluster("backend", connect_timeout_ms=timeout_ms)},
        endpoints={"backend": load_assignment("backend", ("127.0.0.1", 9))},
    )


class ControlPlane:
    """An ADS server on loopback with a fake translator, restartable on the same port."""

    def __init__(self, authority: TestAuthority, translator: FakeTranslator) -> None:
        self.authority = authority
        self.translator = translator
        self.credential = authority.issue(CONTROL_PLANE_ID, dns_names=("localhost",), ip_loopback=True)
        self.port = 0
        self.server: grpc.aio.Server | None = None

    async def start(self) -> None:
        self.registry = CollectorRegistry()
        self.cache = SnapshotCache(
            self.translator,
            trust_bundle=lambda: self.authority.bundle_pem,
            state=MeshState(),
            debounce=DebounceSettings(quiet=0.05, max_delay=0.2),
        )
        self.ads = AggregatedDiscoveryServer(self.cache, metrics=XdsMetrics(self.registry))
        self.server = grpc.aio.server()
        self.ads.add_to(self.server)
        credentials = grpc.ssl_server_credentials(
            [(self.credential.key_pem, self.credential.cert_pem)],
            root_certificates=self.authority.bundle_pem,
            require_client_auth=True,
        )
        self.port = self.server.add_secure_port(f"127.0.0.1:{self.port}", credentials)
        await self.server.start()

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(grace=0)
            await self.cache.close()
            self.server = None

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


class Envoy:
    """One Envoy process with an ADS bootstrap pointing at `port`."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.log_path = workdir / "envoy.log"
        self.process: subprocess.Popen | None = None
        self.admin = ""

    def start(self, *, ads_port: int, api_type: str, authority: TestAuthority, namespace: str) -> None:
        cert, key = authority.issue(WORKLOAD_ID).write(self.workdir, "svid")
        bundle = self.workdir / "bundle.pem"
        bundle.write_bytes(authority.bundle_pem)
        bootstrap = self.workdir / "bootstrap.yaml"
        bootstrap.write_text(yaml.safe_dump(self._bootstrap(ads_port, api_type, cert, key, bundle, namespace)))
        address_file = self.workdir / "admin-address"
        self.process = subprocess.Popen(
            [self.binary, "-c", str(bootstrap), "--disable-hot-restart", "--concurrency", "1",
             "--log-level", "info", "--log-path", str(self.log_path), "--file-flush-interval-msec", "100",
             "--admin-address-path", str(address_file)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + WAIT_SECONDS
        while not address_file.exists() or not address_file.read_text().strip():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"Envoy did not start its admin listener\n{self.log_tail()}")
            time.sleep(0.05)
        self.admin = address_file.read_text().strip()

    @staticmethod
    def _bootstrap(ads_port, api_type, cert, key, bundle, namespace) -> dict:
        ads = {"ads": {}, "resource_api_version": "V3"}
        tls = {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "common_tls_context": {
                "tls_certificates": [
                    {"certificate_chain": {"filename": str(cert)}, "private_key": {"filename": str(key)}}
                ],
                "validation_context": {
                    "trusted_ca": {"filename": str(bundle)},
                    "match_typed_subject_alt_names": [
                        {"san_type": "URI", "matcher": {"exact": CONTROL_PLANE_ID}}
                    ],
                },
            },
        }
        address = {"socket_address": {"address": "127.0.0.1", "port_value": ads_port}}
        return {
            "node": {
                "id": "sidecar~127.0.0.1~ledger-1.payments",
                "cluster": "ledger.payments",
                "metadata": {
                    "NAMESPACE": namespace,
                    "SERVICE_ACCOUNT": "ledger",
                    "WORKLOAD_NAME": "ledger-1",
                    "INSTANCE_IP": "127.0.0.1",
                    "PROXY_MODE": "local",
                },
            },
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
            "dynamic_resources": {
                "ads_config": {
                    "api_type": api_type,
                    "transport_api_version": "V3",
                    "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}],
                },
                "cds_config": ads,
                "lds_config": ads,
            },
            "static_resources": {
                "clusters": [
                    {
                        "name": "xds-grpc",
                        "type": "STATIC",
                        "connect_timeout": "1s",
                        "load_assignment": {
                            "cluster_name": "xds-grpc",
                            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
                        },
                        "typed_extension_protocol_options": {
                            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                                "explicit_http_config": {"http2_protocol_options": {}},
                            }
                        },
                        "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": tls},
                    }
                ]
            },
        }

    def log_tail(self, lines: int = 60) -> str:
        if not self.log_path.exists():
            return "(no Envoy log)"
        text = self.log_path.read_text(errors="replace").splitlines()
        return "Envoy log (last lines):\n" + "\n".join(text[-lines:])

    def get(self, url: str) -> str:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return response.read().decode()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return ""

    def config_dump(self) -> dict:
        text = self.get(f"http://{self.admin}/config_dump?include_eds")
        return json.loads(text) if text else {}

    def stat(self, name: str) -> int:
        text = self.get(f"http://{self.admin}/stats?filter=^{name}$")
        for line in text.splitlines():
            key, _, value = line.partition(": ")
            if key == name:
                return int(value)
        return 0

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


async def eventually(check, envoy: Envoy, what: str, timeout: float = WAIT_SECONDS):
    """Poll the blocking `check` in a thread until it returns a truthy value; fail with Envoy's log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await asyncio.to_thread(check)
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{envoy.log_tail()}")


def dump_section(dump: dict, key: str) -> list:
    """Return the list under `key` (such as dynamic_active_clusters) in a config dump."""
    for config in dump.get("configs", []):
        if key in config:
            return config[key]
    return []


def active_cluster(dump: dict, name: str) -> dict | None:
    for entry in dump_section(dump, "dynamic_active_clusters"):
        if entry["cluster"]["name"] == name:
            return entry["cluster"]
    return None


def warming_clusters(dump: dict) -> list:
    return dump_section(dump, "dynamic_warming_clusters")


@pytest.fixture
def authority() -> TestAuthority:
    return TestAuthority()


@pytest.fixture
async def control_plane(authority):
    translator = FakeTranslator()
    plane = ControlPlane(authority, translator)
    try:
        yield plane
    finally:
        await plane.stop()


@pytest.fixture
def envoy(envoy_binary, tmp_path):
    proxy = Envoy(envoy_binary, tmp_path)
    try:
        yield proxy
    finally:
        proxy.stop()
        print(proxy.log_tail())


API_TYPES = ["GRPC", "DELTA_GRPC"]


@pytest.mark.parametrize("api_type", API_TYPES)
async def test_envoy_receives_config_and_changes(control_plane, envoy, authority, api_type):
    listener_port = free_port()
    control_plane.translator.config = config(listener_port, "v1")
    await control_plane.start()
    envoy.start(ads_port=control_plane.port, api_type=api_type, authority=authority, namespace="payments")
    url = f"http://127.0.0.1:{listener_port}/"

    await eventually(lambda: envoy.get(url) == "v1", envoy, "the listener to answer v1")
    dump = await asyncio.to_thread(envoy.config_dump)
    assert active_cluster(dump, "backend")["connect_timeout"] == "1s"

    # The route body and a cluster setting change, but the endpoints do not. The cluster leaves
    # warming only if the server sends a fresh load assignment after CDS.
    control_plane.translator.config = config(listener_port, "v2", timeout_ms=2000)
    control_plane.cache.update(MeshState())

    await eventually(lambda: envoy.get(url) == "v2", envoy, "the listener to answer v2")

    def cluster_updated():
        dump = envoy.config_dump()
        cluster = active_cluster(dump, "backend")
        return cluster and cluster["connect_timeout"] == "2s" and not warming_clusters(dump)

    await eventually(cluster_updated, envoy, "the changed cluster to leave warming")

    def all_synced():
        (status,) = control_plane.ads.sync_status()
        return all(t["status"] == "SYNCED" for t in status["types"].values()) and status

    status = await eventually(all_synced, envoy, "every type to be ACKed")
    assert status["identity"] == WORKLOAD_ID
    assert status["protocol"] == ("delta" if api_type == "DELTA_GRPC" else "sotw")
    assert set(status["types"]) == {"SDS", "CDS", "EDS", "LDS", "RDS"} - {"SDS"}


@pytest.mark.parametrize("api_type", API_TYPES)
async def test_bad_listener_nacked_old_one_serves(control_plane, envoy, authority, api_type):
    listener_port = free_port()
    control_plane.translator.config = config(listener_port, "v1")
    await control_plane.start()
    envoy.start(ads_port=control_plane.port, api_type=api_type, authority=authority, namespace="payments")
    url = f"http://127.0.0.1:{listener_port}/"
    await eventually(lambda: envoy.get(url) == "v1", envoy, "the listener to answer v1")
    pushes_before = control_plane.metric("idmesh_xds_pushes_total", type="LDS")

    control_plane.translator.config = config(listener_port, "v1", bad_listener_port=free_port())
    control_plane.cache.update(MeshState())

    def lds_nacked():
        (status,) = control_plane.ads.sync_status()
        return status["types"]["LDS"]["status"] == "NACKED" and status["types"]["LDS"]

    lds = await eventually(lds_nacked, envoy, "the LDS NACK")
    assert "broken" in lds["error"]
    assert control_plane.metric("idmesh_xds_nacks_total", type="LDS") == 1
    assert await asyncio.to_thread(envoy.get, url) == "v1"

    # No resend loop: the rejected listeners are not pushed again while nothing changes.
    await asyncio.sleep(1.0)
    assert control_plane.metric("idmesh_xds_pushes_total", type="LDS") == pushes_before + 1
    assert control_plane.metric("idmesh_xds_nacks_total", type="LDS") == 1
    assert await asyncio.to_thread(envoy.get, url) == "v1"


@pytest.mark.parametrize("api_type", API_TYPES)
async def test_node_claiming_another_namespace_is_refused(control_plane, envoy, authority, api_type):
    listener_port = free_port()
    control_plane.translator.config = config(listener_port, "v1")
    await control_plane.start()
    envoy.start(ads_port=control_plane.port, api_type=api_type, authority=authority, namespace="shop")

    await eventually(
        lambda: control_plane.metric("idmesh_xds_rejected_streams_total", code="PERMISSION_DENIED") >= 1,
        envoy,
        "the server to refuse the stream",
    )
    await eventually(
        lambda: "metadata NAMESPACE is 'shop'" in envoy.log_path.read_text(errors="replace"),
        envoy,
        "Envoy to log the PERMISSION_DENIED message",
    )
    dump = await asyncio.to_thread(envoy.config_dump)
    assert dump_section(dump, "dynamic_listeners") == []
    assert control_plane.ads.sync_status() == []
    assert control_plane.translator.calls == []


@pytest.mark.parametrize("api_type", API_TYPES)
async def test_envoy_resyncs_after_server_restart(control_plane, envoy, authority, api_type):
    listener_port = free_port()
    control_plane.translator.config = config(listener_port, "v1")
    await control_plane.start()
    envoy.start(ads_port=control_plane.port, api_type=api_type, authority=authority, namespace="payments")
    url = f"http://127.0.0.1:{listener_port}/"
    await eventually(lambda: envoy.get(url) == "v1", envoy, "the listener to answer v1")

    await control_plane.stop()
    control_plane.translator.config = config(listener_port, "after-restart")
    await control_plane.start()

    await eventually(lambda: envoy.get(url) == "after-restart", envoy, "the listener to answer after-restart")
    await eventually(lambda: control_plane.ads.sync_status(), envoy, "the reconnected stream")
