"""The agent's key and CSR, and the checks it applies to the CA's response."""

from __future__ import annotations

import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from controlplane.agent.credentials import build_csr, generate_private_key, svid_from_response
from controlplane.errors import SvidError
from controlplane.identity.ca import CertificateAuthority
from controlplane.identity.pemfiles import certificate_to_pem
from controlplane.identity.spiffe_id import SpiffeId
from controlplane.identity.svid import format_serial

NOW = datetime.now(timezone.utc)
LEDGER = SpiffeId.parse("spiffe://example.org/ns/payments/sa/ledger")
SHOP = SpiffeId.parse("spiffe://example.org/ns/shop/sa/web")


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.create(tmp_path / "ca", trust_domain="example.org", now=NOW)


def roots_pem(ca: CertificateAuthority) -> list[str]:
    return [certificate_to_pem(root) for root in ca.trust_bundle().roots]


def test_key_is_ecdsa_p256() -> None:
    key = generate_private_key()

    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.curve.name == "secp256r1"


def test_csr_has_only_the_spiffe_id_uri_san() -> None:
    csr = x509.load_pem_x509_csr(build_csr(generate_private_key(), LEDGER).encode())

    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.UniformResourceIdentifier) == [str(LEDGER)]
    assert len(list(san.value)) == 1
    assert san.critical is True
    assert len(csr.subject) == 0
    assert csr.is_signature_valid


def test_csr_carries_the_agent_public_key() -> None:
    key = generate_private_key()
    csr = x509.load_pem_x509_csr(build_csr(key, LEDGER).encode())

    assert csr.public_key() == key.public_key()


def test_csr_verifies_with_openssl(tmp_path: Path) -> None:
    path = tmp_path / "request.pem"
    path.write_text(build_csr(generate_private_key(), LEDGER))

    result = subprocess.run(
        ["openssl", "req", "-in", str(path), "-noout", "-verify", "-text"],
        capture_output=True, text=True, timeout=30,
    )

    assert result.returncode == 0, result.stderr
    assert f"URI:{LEDGER}" in result.stdout
    assert "BEGIN PRIVATE KEY" not in result.stdout


def test_response_becomes_svid(ca: CertificateAuthority) -> None:
    key = generate_private_key()
    issued = ca.sign_csr(build_csr(key, LEDGER).encode(), identity=LEDGER, ttl=timedelta(hours=1), now=NOW)

    svid = svid_from_response(
        cert_chain=issued.cert_chain_pem, trust_bundle=roots_pem(ca), spiffe_id=str(LEDGER), key=key,
        expected_id=LEDGER,
    )

    assert svid.spiffe_id == LEDGER
    assert svid.serial == format_serial(issued.serial)
    assert svid.not_after == issued.not_after
    assert svid.trust_bundle == ca.trust_bundle().roots


def test_response_for_other_identity_is_rejected(ca: CertificateAuthority) -> None:
    key = generate_private_key()
    issued = ca.sign_csr(build_csr(key, SHOP).encode(), identity=SHOP, ttl=None, now=NOW)

    with pytest.raises(SvidError, match="requested 'spiffe://example.org/ns/payments/sa/ledger'"):
        svid_from_response(
            cert_chain=issued.cert_chain_pem, trust_bundle=roots_pem(ca), spiffe_id=str(SHOP), key=key,
            expected_id=LEDGER,
        )


def test_response_for_other_key_is_rejected(ca: CertificateAuthority) -> None:
    issued = ca.sign_csr(build_csr(generate_private_key(), LEDGER).encode(), identity=LEDGER, ttl=None, now=NOW)

    with pytest.raises(SvidError, match="public key"):
        svid_from_response(
            cert_chain=issued.cert_chain_pem, trust_bundle=roots_pem(ca), spiffe_id=str(LEDGER),
            key=generate_private_key(), expected_id=LEDGER,
        )


def test_response_from_untrusted_root_is_rejected(ca: CertificateAuthority, tmp_path: Path) -> None:
    other = CertificateAuthority.create(tmp_path / "other", trust_domain="example.org", now=NOW)
    key = generate_private_key()
    issued = other.sign_csr(build_csr(key, LEDGER).encode(), identity=LEDGER, ttl=None, now=NOW)

    with pytest.raises(SvidError, match="trust bundle roots"):
        svid_from_response(
            cert_chain=issued.cert_chain_pem, trust_bundle=roots_pem(ca), spiffe_id=str(LEDGER), key=key,
            expected_id=LEDGER,
        )


def test_response_without_certificates_is_rejected(ca: CertificateAuthority) -> None:
    with pytest.raises(SvidError, match="cert_chain contains no certificate"):
        svid_from_response(
            cert_chain=[], trust_bundle=roots_pem(ca), spiffe_id=str(LEDGER), key=generate_private_key(),
            expected_id=LEDGER,
        )


def test_svid_repr_leaves_out_the_key(ca: CertificateAuthority) -> None:
    key = generate_private_key()
    issued = ca.sign_csr(build_csr(key, LEDGER).encode(), identity=LEDGER, ttl=None, now=NOW)
    svid = svid_from_response(
        cert_chain=issued.cert_chain_pem, trust_bundle=roots_pem(ca), spiffe_id=str(LEDGER), key=key,
        expected_id=LEDGER,
    )

    text = repr(svid)

    assert "PRIVATE KEY" not in text
    assert svid.serial in text
    assert svid.key_pem().startswith(b"-----BEGIN PRIVATE KEY-----")
