"""The ADS servicer over real grpc.aio on loopback: authentication, NACK reporting, sync state."""

from __future__ import annotations

import asyncio
import contextlib
import json

import grpc
import pytest
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.rpc import status_pb2
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from controlplane.model.types import MeshState
from controlplane.translate.resources import CLUSTER
from controlplane.xds.cache import SnapshotCache
from controlplane.xds.metrics import XdsMetrics
from controlplane.xds.server import AggregatedDiscoveryServer
from controlplane.xds.testing import FakeTranslator, TestAuthority, eds_cluster, proxy_config

WAIT = 10.0


@pytest.fixture(scope="module")
def authority() -> TestAuthority:
    return TestAuthority()


@contextlib.asynccontextmanager
async def serving(authority: TestAuthority, *, tls: bool = True):
    registry = CollectorRegistry()
    cache = SnapshotCache(
        FakeTranslator(proxy_config(clusters={"c1": eds_cluster("c1")})),
        trust_bundle=lambda: authority.bundle_pem,
        state=MeshState(),
    )
    ads = AggregatedDiscoveryServer(cache, metrics=XdsMetrics(registry))
    server = grpc.aio.server()
    ads.add_to(server)
    if tls:
        credential = authority.issue("spiffe://cluster.local/ns/idmesh-system/sa/controlplane", ip_loopback=True)
        creds = grpc.ssl_server_credentials(
            [(credential.key_pem, credential.cert_pem)], root_certificates=authority.bundle_pem, require_client_auth=True
        )
        port = server.add_secure_port("127.0.0.1:0", creds)
    else:
        port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield ads, registry, port
    finally:
        await server.stop(grace=0)
        await cache.close()


class Client:
    """A hand-driven ADS client: put requests, read responses, each with a timeout."""

    def __init__(self, channel: grpc.aio.Channel, *, delta: bool = False) -> None:
        self._outbox: asyncio.Queue = asyncio.Queue()
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        method = stub.DeltaAggregatedResources if delta else stub.StreamAggregatedResources
        self.call = method(self._requests())

    async def _requests(self):
        while (request := await self._outbox.get()) is not None:
            yield request

    def send(self, request) -> None:
        self._outbox.put_nowait(request)

    async def read(self):
        return await asyncio.wait_for(self.call.read(), WAIT)

    def close(self) -> None:
        self._outbox.put_nowait(None)


def tls_channel(authority: TestAuthority, port: int, spiffe_id: str) -> grpc.aio.Channel:
    credential = authority.issue(spiffe_id)
    creds = grpc.ssl_channel_credentials(authority.bundle_pem, credential.key_pem, credential.cert_pem)
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", creds)


def cds_request(*, namespace="payments", service_account="ledger", nonce="", version="", error=None):
    request = discovery_pb2.DiscoveryRequest(type_url=CLUSTER, response_nonce=nonce, version_info=version)
    request.node.id = "ledger-1"
    request.node.metadata.fields["NAMESPACE"].string_value = namespace
    request.node.metadata.fields["SERVICE_ACCOUNT"].string_value = service_account
    if error:
        request.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
    return request


async def test_stream_without_client_certificate_is_unauthenticated(authority):
    async with serving(authority, tls=False) as (_, registry, port):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            client = Client(channel)
            client.send(cds_request())

            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await client.read()

    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "no verified client X.509-SVID" in caught.value.details()
    assert registry.get_sample_value("idmesh_xds_rejected_streams_total", {"code": "UNAUTHENTICATED"}) == 1


async def test_service_account_claim_must_match_the_certificate(authority):
    async with serving(authority) as (ads, _, port):
        async with tls_channel(authority, port, "spiffe://cluster.local/ns/payments/sa/ledger") as channel:
            client = Client(channel)
            client.send(cds_request(service_account="admin"))

            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await client.read()

        assert ads.sync_status() == []
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "metadata SERVICE_ACCOUNT is 'admin'" in caught.value.details()


async def test_nack_logged_once_and_counted(authority):
    async with serving(authority) as (ads, registry, port):
        async with tls_channel(authority, port, "spiffe://cluster.local/ns/payments/sa/ledger") as channel:
            client = Client(channel)
            with capture_logs() as logs:
                client.send(cds_request())
                response = await client.read()
                nack = cds_request(nonce=response.nonce, version="", error="cluster c1: bad timeout")
                client.send(nack)
                client.send(nack)  # the same NACK again must not be reported twice
                for _ in range(100):
                    if ads.sync_status() and ads.sync_status()[0]["types"]["CDS"]["status"] == "NACKED":
                        break
                    await asyncio.sleep(0.02)
                await asyncio.sleep(0.1)
                (status,) = ads.sync_status()
            client.close()

    nacks = [entry for entry in logs if entry["event"] == "xds.nack"]
    assert nacks == [
        {
            "event": "xds.nack",
            "log_level": "warning",
            "component": "xds.server",
            "node_id": "ledger-1",
            "type": "CDS",
            "version": response.version_info,
            "kept_version": "",
            "error": "cluster c1: bad timeout",
        }
    ]
    assert registry.get_sample_value("idmesh_xds_nacks_total", {"type": "CDS"}) == 1
    assert status["types"]["CDS"] == {
        "version_sent": response.version_info,
        "version_acked": "",
        "status": "NACKED",
        "error": "cluster c1: bad timeout",
    }
    assert status["identity"] == "spiffe://cluster.local/ns/payments/sa/ledger"
    json.dumps(status)


async def test_ack_counts_push_and_latency_metrics(authority):
    async with serving(authority) as (ads, registry, port):
        async with tls_channel(authority, port, "spiffe://cluster.local/ns/payments/sa/ledger") as channel:
            client = Client(channel)
            client.send(cds_request())
            response = await client.read()
            client.send(cds_request(nonce=response.nonce, version=response.version_info))
            for _ in range(100):
                if registry.get_sample_value("idmesh_xds_push_latency_seconds_count", {"type": "CDS"}):
                    break
                await asyncio.sleep(0.02)
            connected = registry.get_sample_value("idmesh_xds_connected_proxies")
            client.close()

    assert connected == 1
    assert registry.get_sample_value("idmesh_xds_pushes_total", {"type": "CDS"}) == 1
    assert registry.get_sample_value("idmesh_xds_push_latency_seconds_count", {"type": "CDS"}) == 1
    assert registry.get_sample_value("idmesh_xds_resource_bytes_total", {"type": "CDS"}) == len(
        response.resources[0].value
    )


async def test_protocol_error_ends_the_stream_with_invalid_argument(authority):
    async with serving(authority) as (_, _, port):
        async with tls_channel(authority, port, "spiffe://cluster.local/ns/payments/sa/ledger") as channel:
            client = Client(channel, delta=True)
            request = discovery_pb2.DeltaDiscoveryRequest(type_url="type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig")
            request.node.id = "ledger-1"
            request.node.metadata.fields["NAMESPACE"].string_value = "payments"
            request.node.metadata.fields["SERVICE_ACCOUNT"].string_value = "ledger"
            client.send(request)

            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await client.read()

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "is not served" in caught.value.details()
