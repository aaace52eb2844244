"""TLS of the gRPC server: verified peer identity, serving certificate and its replacement."""

from __future__ import annotations

import asyncio
import socket
import ssl
from datetime import datetime, timedelta

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from controlplane.api import ca_pb2, ca_pb2_grpc
from controlplane.errors import CAError, SvidError
from controlplane.identity import certificates
from controlplane.identity.ca import CertificateAuthority
from controlplane.identity.keys import private_key_to_pem
from controlplane.identity.pemfiles import certificate_to_pem
from controlplane.identity.spiffe_id import SpiffeId
from controlplane.server.grpc_server import GrpcServer
from controlplane.server.serve import serving_material_issuer
from controlplane.server.tls import (
    ServingCredentials,
    control_plane_spiffe_id,
    keep_serving_certificate_fresh,
    peer_spiffe_id,
)
from tests.integration.test_ca_grpc import LEDGER, SERVER_NAME, TRUST_DOMAIN, utc_now

CALL_TIMEOUT = 10


class EchoPeerServicer(ca_pb2_grpc.CertificateServiceServicer):
    """Returns the caller's verified SPIFFE ID (or an error naming why there is none)."""

    async def CreateCertificate(self, request, context):  # noqa: N802
        try:
            peer = peer_spiffe_id(context)
        except SvidError as exc:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, exc.message)
        return ca_pb2.CreateCertificateResponse(spiffe_id=str(peer) if peer else "none")


@pytest.fixture
def ca(tmp_path):
    return CertificateAuthority.create(tmp_path / "ca", trust_domain=TRUST_DOMAIN, now=utc_now())


@pytest.fixture
async def echo_server(ca):
    issue = serving_material_issuer(ca, root_namespace="idmesh-system")
    credentials = ServingCredentials(issue(utc_now()))
    server = GrpcServer(credentials, mtls_address="127.0.0.1:0", bootstrap_address="127.0.0.1:0")
    server.add_service(ca_pb2_grpc.add_CertificateServiceServicer_to_server, EchoPeerServicer())
    await server.start()
    try:
        yield server, credentials, issue
    finally:
        await server.stop(0.5)


async def echo_peer(port: int, roots_pem: bytes, key_pem: bytes | None = None, chain_pem: bytes | None = None) -> str:
    channel_credentials = grpc.ssl_channel_credentials(roots_pem, key_pem, chain_pem)
    options = [("grpc.ssl_target_name_override", SERVER_NAME)]
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", channel_credentials, options=options) as channel:
        stub = ca_pb2_grpc.CertificateServiceStub(channel)
        response = await stub.CreateCertificate(ca_pb2.CreateCertificateRequest(), timeout=CALL_TIMEOUT)
    return response.spiffe_id


async def test_peer_spiffe_id_on_mtls_port_is_client_svid(ca, echo_server):
    server, credentials, _ = echo_server
    issued, key_pem = ca.issue(LEDGER, ttl=None, now=utc_now())

    chain_pem = "".join(issued.cert_chain_pem).encode()

    seen = await echo_peer(server.mtls_port, credentials.material.roots_pem, key_pem, chain_pem)

    assert seen == str(LEDGER)


async def test_peer_spiffe_id_on_bootstrap_port_is_none(ca, echo_server):
    server, credentials, _ = echo_server
    issued, key_pem = ca.issue(LEDGER, ttl=None, now=utc_now())

    chain_pem = "".join(issued.cert_chain_pem).encode()

    # The bootstrap port never requests a certificate, so one offered by the client is not sent.
    seen = await echo_peer(server.bootstrap_port, credentials.material.roots_pem, key_pem, chain_pem)

    assert seen == "none"


async def test_peer_with_two_uri_sans_is_rejected(ca, echo_server, tmp_path):
    server, credentials, _ = echo_server
    # Sign a certificate with two URI SANs under the CA's own root, so TLS accepts it.
    root_key = serialization.load_pem_private_key((tmp_path / "ca" / "root-key.pem").read_bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = certificates.build_leaf(
        key=key.public_key(), identity=LEDGER, issuer=ca.roots[0], issuer_key=root_key,
        ttl=timedelta(hours=1), now=utc_now(),
    )
    two_uris = (
        x509.CertificateBuilder()
        .subject_name(leaf.subject)
        .issuer_name(leaf.issuer)
        .public_key(key.public_key())
        .serial_number(leaf.serial_number)
        .not_valid_before(leaf.not_valid_before_utc)
        .not_valid_after(leaf.not_valid_after_utc)
    )
    for extension in leaf.extensions:
        if isinstance(extension.value, x509.SubjectAlternativeName):
            continue
        two_uris = two_uris.add_extension(extension.value, critical=extension.critical)
    san = x509.SubjectAlternativeName(
        [x509.UniformResourceIdentifier(str(LEDGER)), x509.UniformResourceIdentifier("https://ledger.example.org")]
    )
    certificate = two_uris.add_extension(san, critical=False).sign(root_key, leaf.signature_hash_algorithm)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await echo_peer(
            server.mtls_port,
            credentials.material.roots_pem,
            private_key_to_pem(key),
            certificate_to_pem(certificate).encode(),
        )

    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert caught.value.details() == (
        f"certificate serial {certificate.serial_number:x} is not a valid X.509-SVID: it must have exactly "
        f"one URI SAN (the SPIFFE ID) but has 2: {LEDGER}, https://ledger.example.org"
    )


def served_certificate(port: int, roots_pem: bytes) -> x509.Certificate:
    context = ssl.create_default_context(cadata=roots_pem.decode())
    with socket.create_connection(("127.0.0.1", port), timeout=CALL_TIMEOUT) as raw:
        with context.wrap_socket(raw, server_hostname=SERVER_NAME) as tls:
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


async def test_serving_certificate_names_control_plane(echo_server):
    server, credentials, _ = echo_server

    certificate = await asyncio.to_thread(served_certificate, server.bootstrap_port, credentials.material.roots_pem)

    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://example.org/ns/idmesh-system/sa/idmesh-controlplane"
    ]
    assert san.get_values_for_type(x509.DNSName) == ["idmesh-controlplane.idmesh-system.svc", "localhost"]


async def test_replaced_certificate_serves_new_connections(echo_server):
    server, credentials, issue = echo_server
    before = await asyncio.to_thread(served_certificate, server.bootstrap_port, credentials.material.roots_pem)

    credentials.replace(issue(utc_now()))
    after = await asyncio.to_thread(served_certificate, server.bootstrap_port, credentials.material.roots_pem)

    assert before.serial_number != after.serial_number
    assert after.serial_number == credentials.material.serial


async def test_renewal_loop_replaces_certificate_at_half_life(ca):
    issue = serving_material_issuer(ca, root_namespace="idmesh-system")
    credentials = ServingCredentials(issue(utc_now()))
    first = credentials.material
    renewed = asyncio.Event()

    def issue_and_signal(now: datetime):
        material = issue(utc_now())
        renewed.set()
        return material

    # A clock just past the first half-life: the loop renews once, then waits for the next one.
    task = asyncio.create_task(
        keep_serving_certificate_fresh(
            credentials, issue_and_signal, clock=lambda: first.renew_at() + timedelta(seconds=1)
        )
    )
    try:
        await asyncio.wait_for(renewed.wait(), timeout=10)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    assert credentials.material.serial != first.serial
    assert first.renew_at() == first.not_before + (first.not_after - first.not_before) / 2


async def test_renewal_failure_keeps_old_certificate(ca, monkeypatch):
    issue = serving_material_issuer(ca, root_namespace="idmesh-system")
    credentials = ServingCredentials(issue(utc_now()))
    first_serial = credentials.material.serial
    attempts = []

    def failing_issue(now: datetime):
        attempts.append(now)
        raise CAError("the CA signing certificate expired")

    monkeypatch.setattr("controlplane.server.tls.RENEWAL_RETRY", timedelta(seconds=0.01))
    clock = lambda: credentials.material.renew_at() + timedelta(seconds=1)  # noqa: E731
    task = asyncio.create_task(keep_serving_certificate_fresh(credentials, failing_issue, clock=clock))
    try:
        for _ in range(500):
            if len(attempts) >= 2:
                break
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    assert len(attempts) >= 2
    assert credentials.material.serial == first_serial


def test_control_plane_spiffe_id_uses_root_namespace():
    assert control_plane_spiffe_id("example.org", "mesh-system") == SpiffeId.parse(
        "spiffe://example.org/ns/mesh-system/sa/idmesh-controlplane"
    )
