"""The agent's CA client against the real control plane gRPC server on loopback."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from controlplane.agent.ca_client import CAClient, RetryPolicy
from controlplane.agent.errors import CAClientError
from controlplane.identity.join_token import JoinTokenIssuer, load_join_token_key
from controlplane.identity.spiffe_id import SpiffeId
from controlplane.model.types import DEFAULT_ROOT_NAMESPACE
from controlplane.server.serve import ServeOptions, build_control_plane, load_or_create_ca
from controlplane.server.tls import control_plane_dns_names, control_plane_spiffe_id

LEDGER = SpiffeId.parse("spiffe://example.org/ns/payments/sa/ledger")
FAST = RetryPolicy(max_attempts=2, base=0.05, cap=0.1, timeout=5.0)


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


@pytest.fixture
async def control_plane(tmp_path: Path):
    ca_dir = tmp_path / "ca"
    ca, _ = load_or_create_ca(ca_dir, trust_domain="example.org", now=utc_now())
    options = ServeOptions(
        ca_dir=ca_dir, trust_domain="example.org", grpc_address="127.0.0.1:0",
        bootstrap_address="127.0.0.1:0", admin_address="127.0.0.1:0",
    )
    plane = build_control_plane(options, ca, clock=utc_now)
    await plane.start()
    try:
        yield plane, ca_dir
    finally:
        await plane.stop()


def mint(ca_dir: Path, identity: SpiffeId = LEDGER) -> str:
    issuer = JoinTokenIssuer(load_join_token_key(ca_dir), trust_domain="example.org")
    return issuer.mint(identity, ttl=timedelta(minutes=5), now=utc_now())


def client(ca_dir: Path, port: int, token: str | None, *, server_id: SpiffeId | None = None, ttl: int = 0) -> CAClient:
    return CAClient(
        address=f"127.0.0.1:{port}",
        root_pem=(ca_dir / "root-cert.pem").read_bytes(),
        server_id=server_id or control_plane_spiffe_id("example.org", DEFAULT_ROOT_NAMESPACE),
        server_name=control_plane_dns_names(DEFAULT_ROOT_NAMESPACE)[0],
        token_source=lambda: token,
        ttl_seconds=ttl,
        retry=FAST,
    )


async def test_join_token_gets_svid(control_plane) -> None:
    plane, ca_dir = control_plane

    svid = await client(ca_dir, plane.grpc.bootstrap_port, mint(ca_dir), ttl=600).issue(LEDGER)

    assert svid.spiffe_id == LEDGER
    assert timedelta(seconds=599) <= svid.not_after - utc_now() <= timedelta(seconds=601)
    assert svid.trust_bundle == plane.ca.trust_bundle().roots


async def test_renewal_with_svid_gets_new_key_and_serial(control_plane) -> None:
    plane, ca_dir = control_plane
    first = await client(ca_dir, plane.grpc.bootstrap_port, mint(ca_dir)).issue(LEDGER)

    renewed = await client(ca_dir, plane.grpc.mtls_port, None).issue(LEDGER, first)

    assert renewed.spiffe_id == LEDGER
    assert renewed.serial != first.serial
    assert renewed.key_pem() != first.key_pem()


async def test_reused_join_token_is_not_retried(control_plane) -> None:
    plane, ca_dir = control_plane
    token = mint(ca_dir)
    await client(ca_dir, plane.grpc.bootstrap_port, token).issue(LEDGER)

    with pytest.raises(CAClientError) as caught:
        await client(ca_dir, plane.grpc.bootstrap_port, token).issue(LEDGER)

    assert caught.value.code == "UNAUTHENTICATED"
    assert caught.value.retryable is False


async def test_token_for_other_identity_is_refused(control_plane) -> None:
    plane, ca_dir = control_plane
    token = mint(ca_dir, SpiffeId.parse("spiffe://example.org/ns/shop/sa/web"))

    with pytest.raises(CAClientError) as caught:
        await client(ca_dir, plane.grpc.bootstrap_port, token).issue(LEDGER)

    assert caught.value.code == "PERMISSION_DENIED"


async def test_missing_token_is_clear_error(control_plane) -> None:
    plane, ca_dir = control_plane

    with pytest.raises(CAClientError, match="no credential for the CA") as caught:
        await client(ca_dir, plane.grpc.bootstrap_port, None).issue(LEDGER)

    assert caught.value.code == "NO_CREDENTIAL"


async def test_server_with_other_spiffe_id_is_refused(control_plane) -> None:
    plane, ca_dir = control_plane
    impostor_check = SpiffeId.parse("spiffe://example.org/ns/idmesh-system/sa/someone-else")

    with pytest.raises(CAClientError, match="not the control plane") as caught:
        await client(ca_dir, plane.grpc.bootstrap_port, mint(ca_dir), server_id=impostor_check).issue(LEDGER)

    assert caught.value.code == "UNTRUSTED_SERVER"
    assert caught.value.retryable is False


async def test_server_from_other_root_is_refused(control_plane, tmp_path: Path) -> None:
    plane, ca_dir = control_plane
    other_dir = tmp_path / "other"
    load_or_create_ca(other_dir, trust_domain="example.org", now=utc_now())

    with pytest.raises(CAClientError, match="TLS connection to the CA") as caught:
        await client(other_dir, plane.grpc.bootstrap_port, mint(ca_dir)).issue(LEDGER)

    assert caught.value.code == "UNTRUSTED_SERVER"


async def test_unreachable_server_is_retried_then_fails(tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    load_or_create_ca(ca_dir, trust_domain="example.org", now=utc_now())
    import socket

    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]
        with pytest.raises(CAClientError) as caught:
            await client(ca_dir, port, "token").issue(LEDGER)

    assert caught.value.code == "UNAVAILABLE"
    assert caught.value.retryable is True
