"""The CertificateService over real gRPC with TLS on loopback: attestation, signing, status codes."""

from __future__ import annotations

import io
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import grpc
import prometheus_client
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from controlplane import log as logging_setup
from controlplane.api import ca_pb2, ca_pb2_grpc
from controlplane.identity.ca import CertificateAuthority
from controlplane.identity.join_token import JoinTokenIssuer, load_join_token_key
from controlplane.identity.spiffe_id import SpiffeId
from controlplane.server.serve import ControlPlane, ServeOptions, build_control_plane

TRUST_DOMAIN = "example.org"
LEDGER = SpiffeId.parse("spiffe://example.org/ns/payments/sa/ledger")
SHOP = SpiffeId.parse("spiffe://example.org/ns/shop/sa/web")
SERVER_NAME = "localhost"
CALL_TIMEOUT = 10


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def private_key_pem(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def build_csr(key, uri: SpiffeId | str | None = None) -> str:
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    if uri is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(uri))]), critical=False
        )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


@dataclass
class RunningControlPlane:
    control_plane: ControlPlane
    ca: CertificateAuthority
    ca_dir: Path
    tokens: JoinTokenIssuer

    @property
    def roots_pem(self) -> bytes:
        return self.control_plane.credentials.material.roots_pem

    def channel(self, *, mtls: bool, client_key_pem: bytes | None = None, client_chain_pem: bytes | None = None):
        port = self.control_plane.grpc.mtls_port if mtls else self.control_plane.grpc.bootstrap_port
        credentials = grpc.ssl_channel_credentials(self.roots_pem, client_key_pem, client_chain_pem)
        return grpc.aio.secure_channel(
            f"127.0.0.1:{port}", credentials, options=[("grpc.ssl_target_name_override", SERVER_NAME)]
        )

    def mint(self, identity: SpiffeId, *, ttl: timedelta = timedelta(minutes=10), now: datetime | None = None) -> str:
        return self.tokens.mint(identity, ttl=ttl, now=now or utc_now())


async def start_control_plane(ca_dir: Path, *, intermediate: bool = False) -> RunningControlPlane:
    ca = CertificateAuthority.create(ca_dir, trust_domain=TRUST_DOMAIN, intermediate=intermediate, now=utc_now())
    options = ServeOptions(
        ca_dir=ca_dir,
        trust_domain=TRUST_DOMAIN,
        grpc_address="127.0.0.1:0",
        bootstrap_address="127.0.0.1:0",
        admin_address="127.0.0.1:0",
        shutdown_grace_seconds=0.5,
    )
    control_plane = build_control_plane(options, ca, clock=utc_now)
    await control_plane.start()
    # The CLI mints tokens the same way: with the key from the CA directory.
    tokens = JoinTokenIssuer(load_join_token_key(ca_dir, create=False), trust_domain=TRUST_DOMAIN)
    return RunningControlPlane(control_plane, ca, ca_dir, tokens)


@pytest.fixture
async def server(tmp_path):
    running = await start_control_plane(tmp_path / "ca")
    try:
        yield running
    finally:
        await running.control_plane.stop()


async def create_certificate(channel, csr: str, *, token: str | None = None, validity_seconds: int = 0):
    metadata = (("authorization", f"Bearer {token}"),) if token is not None else None
    stub = ca_pb2_grpc.CertificateServiceStub(channel)
    request = ca_pb2.CreateCertificateRequest(csr=csr, validity_seconds=validity_seconds)
    return await stub.CreateCertificate(request, metadata=metadata, timeout=CALL_TIMEOUT)


async def rejection(channel, csr: str, **kwargs) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await create_certificate(channel, csr, **kwargs)
    return caught.value


def openssl_verify(tmp_path: Path, response: ca_pb2.CreateCertificateResponse) -> subprocess.CompletedProcess:
    (tmp_path / "bundle.pem").write_text("".join(response.trust_bundle))
    (tmp_path / "leaf.pem").write_text(response.cert_chain[0])
    (tmp_path / "untrusted.pem").write_text("".join(response.cert_chain[1:]))
    command = ["openssl", "verify", "-CAfile", str(tmp_path / "bundle.pem")]
    if len(response.cert_chain) > 1:
        command += ["-untrusted", str(tmp_path / "untrusted.pem")]
    command.append(str(tmp_path / "leaf.pem"))
    return subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)


async def issue_with_token(server: RunningControlPlane, identity: SpiffeId):
    """Get an SVID for `identity` through the bootstrap port; return (response, key PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    async with server.channel(mtls=False) as channel:
        response = await create_certificate(channel, build_csr(key, identity), token=server.mint(identity))
    return response, private_key_pem(key)


@pytest.mark.parametrize("intermediate", [False, True], ids=["root-signs", "intermediate-signs"])
async def test_join_token_csr_gets_chain_openssl_verifies(tmp_path, intermediate):
    running = await start_control_plane(tmp_path / "ca", intermediate=intermediate)
    try:
        key = ec.generate_private_key(ec.SECP256R1())
        async with running.channel(mtls=False) as channel:
            response = await create_certificate(channel, build_csr(key, LEDGER), token=running.mint(LEDGER))
    finally:
        await running.control_plane.stop()

    result = openssl_verify(tmp_path, response)
    assert result.returncode == 0, result.stdout + result.stderr
    assert response.spiffe_id == str(LEDGER)
    assert len(response.cert_chain) == (2 if intermediate else 1)
    leaf = x509.load_pem_x509_certificate(response.cert_chain[0].encode())
    uris = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier
    )
    assert uris == [str(LEDGER)]
    assert leaf.public_key().public_numbers() == key.public_key().public_numbers()


async def test_csr_without_uri_san_gets_token_identity(server):
    key = ec.generate_private_key(ec.SECP256R1())
    async with server.channel(mtls=False) as channel:
        response = await create_certificate(channel, build_csr(key), token=server.mint(LEDGER))

    assert response.spiffe_id == str(LEDGER)


async def test_validity_seconds_sets_certificate_lifetime(server):
    key = ec.generate_private_key(ec.SECP256R1())
    async with server.channel(mtls=False) as channel:
        response = await create_certificate(
            channel, build_csr(key, LEDGER), token=server.mint(LEDGER), validity_seconds=3600
        )

    leaf = x509.load_pem_x509_certificate(response.cert_chain[0].encode())
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == timedelta(hours=1, minutes=1)


async def test_reused_token_is_unauthenticated(server):
    token = server.mint(LEDGER)
    async with server.channel(mtls=False) as channel:
        await create_certificate(channel, build_csr(ec.generate_private_key(ec.SECP256R1()), LEDGER), token=token)
        error = await rejection(channel, build_csr(ec.generate_private_key(ec.SECP256R1()), LEDGER), token=token)

    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error.details() == "join token rejected: it was already used; a join token is valid once"


async def test_expired_token_is_unauthenticated(server):
    minted_at = utc_now() - timedelta(hours=1)
    token = server.mint(LEDGER, ttl=timedelta(minutes=10), now=minted_at)
    expired_at = datetime.fromtimestamp(int((minted_at + timedelta(minutes=10)).timestamp()), tz=timezone.utc)
    async with server.channel(mtls=False) as channel:
        error = await rejection(channel, build_csr(ec.generate_private_key(ec.SECP256R1()), LEDGER), token=token)

    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error.details() == f"join token rejected: it expired at {expired_at.isoformat()}; mint a new one"


async def test_forged_token_is_unauthenticated(server):
    forger = JoinTokenIssuer(b"k" * 32, trust_domain=TRUST_DOMAIN)
    token = forger.mint(LEDGER, ttl=timedelta(minutes=10), now=utc_now())
    async with server.channel(mtls=False) as channel:
        error = await rejection(channel, build_csr(ec.generate_private_key(ec.SECP256R1()), LEDGER), token=token)

    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error.details() == (
        "join token rejected: the signature does not match; the token is forged or from another control plane"
    )


async def test_token_with_changed_payload_is_unauthenticated(server):
    prefix, payload, mac = server.mint(LEDGER).split(".")
    token = ".".join([prefix, payload[:-2] + ("AA" if payload[-2:] != "AA" else "BB"), mac])
    async with server.channel(mtls=False) as channel:
        error = await rejection(channel, build_csr(ec.generate_private_key(ec.SECP256R1()), LEDGER), token=token)

    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error.details().startswith("join token rejected: the signature does not match")


async def test_token_for_other_identity_is_permission_denied(server):
    token = server.mint(SHOP)
    async with server.channel(mtls=False) as channel:
        error = await rejection(channel, build_csr(ec.generate_private_key(ec.SECP256R1()), LEDGER), token=token)

    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error.details() == (
        f"the CSR asks for URI SAN '{LEDGER}' but the caller proved {SHOP}; "
        "send a CSR with no URI SAN or with exactly that SPIFFE ID"
    )


async def test_missing_credential_is_unauthenticated(server):
    async with server.channel(mtls=False) as channel:
        error = await rejection(channel, build_csr(ec.generate_private_key(ec.SECP256R1()), LEDGER))

    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error.details() == (
        "no credential: send 'authorization: Bearer <join token>' metadata, or present "
        "your current SVID as the TLS client certificate on the mutual TLS port"
    )


async def test_basic_authorization_scheme_is_unauthenticated(server):
    stub_metadata = (("authorization", "Basic dXNlcjpwYXNz"),)
    async with server.channel(mtls=False) as channel:
        stub = ca_pb2_grpc.CertificateServiceStub(channel)
        request = ca_pb2.CreateCertificateRequest(csr=build_csr(ec.generate_private_key(ec.SECP256R1()), LEDGER))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.CreateCertificate(request, metadata=stub_metadata, timeout=CALL_TIMEOUT)

    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert caught.value.details() == "unsupported authorization scheme 'Basic'; send 'authorization: Bearer <token>'"


async def test_rsa_1024_csr_is_invalid_argument(server):
    weak_key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    async with server.channel(mtls=False) as channel:
        error = await rejection(channel, build_csr(weak_key, LEDGER), token=server.mint(LEDGER))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "the CSR key is not accepted: RSA key of 1024 bits is too weak; use at least 2048 bits"


async def test_malformed_csr_is_invalid_argument(server):
    async with server.channel(mtls=False) as channel:
        error = await rejection(channel, "not a CSR", token=server.mint(LEDGER))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("the CSR is not a valid PEM PKCS#10 request: ")


async def test_negative_validity_is_invalid_argument(server):
    async with server.channel(mtls=False) as channel:
        error = await rejection(
            channel,
            build_csr(ec.generate_private_key(ec.SECP256R1()), LEDGER),
            token=server.mint(LEDGER),
            validity_seconds=-5,
        )

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "validity_seconds -5 is negative; send 0 for the CA's default"


async def test_renewal_with_client_svid_issues_same_identity(server):
    first, key_pem = await issue_with_token(server, LEDGER)
    new_key = ec.generate_private_key(ec.SECP256R1())
    chain_pem = "".join(first.cert_chain).encode()

    async with server.channel(mtls=True, client_key_pem=key_pem, client_chain_pem=chain_pem) as channel:
        renewed = await create_certificate(channel, build_csr(new_key, LEDGER))

    assert renewed.spiffe_id == str(LEDGER)
    old_leaf = x509.load_pem_x509_certificate(first.cert_chain[0].encode())
    new_leaf = x509.load_pem_x509_certificate(renewed.cert_chain[0].encode())
    assert new_leaf.serial_number != old_leaf.serial_number
    assert new_leaf.public_key().public_numbers() == new_key.public_key().public_numbers()


async def test_renewal_csr_for_other_identity_is_permission_denied(server):
    first, key_pem = await issue_with_token(server, LEDGER)
    chain_pem = "".join(first.cert_chain).encode()

    async with server.channel(mtls=True, client_key_pem=key_pem, client_chain_pem=chain_pem) as channel:
        error = await rejection(channel, build_csr(ec.generate_private_key(ec.SECP256R1()), SHOP))

    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error.details() == (
        f"the CSR asks for URI SAN '{SHOP}' but the caller proved {LEDGER}; "
        "send a CSR with no URI SAN or with exactly that SPIFFE ID"
    )


async def test_client_svid_from_other_ca_fails_handshake(server, tmp_path):
    other_ca = CertificateAuthority.create(tmp_path / "other-ca", trust_domain=TRUST_DOMAIN, now=utc_now())
    foreign, foreign_key = other_ca.issue(LEDGER, ttl=None, now=utc_now())
    chain_pem = "".join(foreign.cert_chain_pem).encode()

    async with server.channel(mtls=True, client_key_pem=foreign_key, client_chain_pem=chain_pem) as channel:
        error = await rejection(channel, build_csr(ec.generate_private_key(ec.SECP256R1()), LEDGER))

    assert error.code() == grpc.StatusCode.UNAVAILABLE


async def test_mtls_port_without_client_certificate_fails_handshake(server):
    async with server.channel(mtls=True) as channel:
        csr = build_csr(ec.generate_private_key(ec.SECP256R1()), LEDGER)
        error = await rejection(channel, csr, token=server.mint(LEDGER))

    assert error.code() == grpc.StatusCode.UNAVAILABLE


def sample(result: str) -> float:
    value = prometheus_client.REGISTRY.get_sample_value("idmesh_ca_certificates_issued_total", {"result": result})
    return value or 0.0


async def test_metrics_count_issued_and_rejected_calls(server):
    issued_before = sample("issued")
    unauthenticated_before = sample("unauthenticated")
    signs_before = prometheus_client.REGISTRY.get_sample_value("idmesh_ca_sign_seconds_count") or 0.0

    await issue_with_token(server, LEDGER)
    async with server.channel(mtls=False) as channel:
        await rejection(channel, build_csr(ec.generate_private_key(ec.SECP256R1()), LEDGER))

    assert sample("issued") == issued_before + 1
    assert sample("unauthenticated") == unauthenticated_before + 1
    assert prometheus_client.REGISTRY.get_sample_value("idmesh_ca_sign_seconds_count") == signs_before + 1


async def exercise_every_outcome(running: RunningControlPlane) -> list[str]:
    """Issue, renew and get rejected in each way; return the tokens used."""
    ledger_token, shop_token, weak_key_token = running.mint(LEDGER), running.mint(SHOP), running.mint(LEDGER)
    new_key = ec.generate_private_key(ec.SECP256R1())
    weak_key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    first, key_pem = await issue_with_token(running, LEDGER)

    async with running.channel(mtls=False) as channel:
        await create_certificate(channel, build_csr(new_key, LEDGER), token=ledger_token)
        await rejection(channel, build_csr(new_key, LEDGER), token=ledger_token)
        await rejection(channel, build_csr(new_key, LEDGER), token=shop_token)
        await rejection(channel, build_csr(weak_key, LEDGER), token=weak_key_token)
        await rejection(channel, build_csr(new_key, LEDGER))

    chain_pem = "".join(first.cert_chain).encode()
    async with running.channel(mtls=True, client_key_pem=key_pem, client_chain_pem=chain_pem) as channel:
        await create_certificate(channel, build_csr(new_key))
    return [ledger_token, shop_token, weak_key_token]


async def test_server_logs_contain_no_private_key_or_token(tmp_path):
    stream = io.StringIO()
    logging_setup.configure(level="debug", stream=stream)
    try:
        running = await start_control_plane(tmp_path / "ca")
        try:
            tokens = await exercise_every_outcome(running)
        finally:
            await running.control_plane.stop()
    finally:
        logging_setup.configure(level="info", stream=sys.stderr)

    output = stream.getvalue()
    assert "ca.csr.signed" in output
    assert "ca.csr.rejected" in output
    assert "join_token.rejected" in output
    assert "ca.caller.rejected" in output
    assert "PRIVATE KEY" not in output
    for token in tokens:
        assert token not in output
        # The token's MAC part is what a thief would need with the payload; it must not leak alone either.
        assert token.rsplit(".", 1)[1] not in output
