"""CA and join token logs name principals, serials and token IDs, never keys, tokens or CSRs."""

from __future__ import annotations

import io
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from controlplane import log as mesh_log
from controlplane.errors import AttestationError, CSRRejected
from controlplane.identity.ca import CertificateAuthority
from controlplane.identity.svid import format_serial
from controlplane.identity.join_token import JoinTokenIssuer, load_join_token_key
from controlplane.identity.keys import generate_private_key
from controlplane.identity.spiffe_id import SpiffeId

NOW = datetime(2026, 6, 1, 12, 0, 0, tzinfo=timezone.utc)
LEDGER = SpiffeId.parse("spiffe://example.org/ns/payments/sa/ledger")


@pytest.fixture
def captured() -> io.StringIO:
    stream = io.StringIO()
    mesh_log.configure(level="debug", json=True, stream=stream)
    try:
        yield stream
    finally:
        structlog.reset_defaults()


def pem_body(pem: bytes) -> list[str]:
    """The base64 lines of a PEM block, each long enough to be a recognisable fragment."""
    return [line for line in pem.decode().splitlines() if line and not line.startswith("-----")]


def make_csr(key) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "workload")])
    )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def test_signing_and_redeeming_log_no_secrets(tmp_path: Path, captured: io.StringIO) -> None:
    ca_dir = tmp_path / "ca"
    ca = CertificateAuthority.create(ca_dir, trust_domain="example.org", intermediate=True, now=NOW)
    workload_key = generate_private_key()
    csr = make_csr(workload_key)
    issued = ca.sign_csr(csr, identity=LEDGER, ttl=None, now=NOW)
    with pytest.raises(CSRRejected):
        ca.sign_csr(make_csr(rsa.generate_private_key(public_exponent=65537, key_size=1024)),
                    identity=LEDGER, ttl=None, now=NOW)
    _served, served_key_pem = ca.issue(SpiffeId.parse("spiffe://example.org/ns/idmesh-system/sa/controlplane"),
                                       ttl=timedelta(hours=1), now=NOW)
    tokens = JoinTokenIssuer(load_join_token_key(ca_dir), trust_domain="example.org")
    token = tokens.mint(LEDGER, now=NOW)
    tokens.redeem(token, now=NOW)
    with pytest.raises(AttestationError):
        tokens.redeem(token, now=NOW)

    output = captured.getvalue()
    events = [json.loads(line) for line in output.splitlines()]

    # The events that should be there, with the facts an operator needs.
    signed = [e for e in events if e["event"] == "ca.csr.signed"]
    rejected = [e for e in events if e["event"] == "ca.csr.rejected"]
    assert len(signed) == 1
    assert signed[0]["principal"] == str(LEDGER)
    assert signed[0]["serial"] == format_serial(issued.serial)
    assert len(rejected) == 1
    assert rejected[0]["reason"] == "weak-key"
    assert rejected[0]["principal"] == str(LEDGER)
    redeemed = [e for e in events if e["event"] == "join_token.redeemed"]
    assert len(redeemed) == 1
    assert redeemed[0]["spiffe_id"] == str(LEDGER)
    assert len(redeemed[0]["token_id"]) == 32

    # No secret material anywhere in the output.
    assert "PRIVATE KEY" not in output
    assert "CERTIFICATE REQUEST" not in output
    secrets = [
        *pem_body((ca_dir / "root-key.pem").read_bytes()),
        *pem_body((ca_dir / "ca-key.pem").read_bytes()),
        *pem_body(served_key_pem),
        *pem_body(csr),
    ]
    assert secrets
    for fragment in secrets:
        assert fragment not in output
    assert token not in output
    for part in token.split(".")[1:]:
        assert part not in output
    assert (ca_dir / "join-token.key").read_bytes().hex() not in output
