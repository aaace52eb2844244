"""Trust bundles: PEM and SPIFFE bundle JSON forms, two roots during rotation, chain verification."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from controlplane.errors import BundleError, SvidError
from controlplane.identity import certificates
from controlplane.identity.bundle import TrustBundle
from controlplane.identity.ca import CertificateAuthority
from controlplane.identity.keys import generate_private_key
from controlplane.identity.pemfiles import load_private_key
from controlplane.identity.spiffe_id import SpiffeId

NOW = datetime(2026, 6, 1, 12, 0, 0, tzinfo=timezone.utc)
LEDGER = SpiffeId.parse("spiffe://example.org/ns/payments/sa/ledger")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def chain_of(pems: list[str]) -> list[x509.Certificate]:
    return [x509.load_pem_x509_certificate(p.encode()) for p in pems]


@pytest.fixture
def current(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.create(tmp_path / "current", trust_domain="example.org", now=NOW)


@pytest.fixture
def following(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.create(tmp_path / "next", trust_domain="example.org", intermediate=True, now=NOW)


def test_pem_round_trip_keeps_roots_in_order(current, following) -> None:
    bundle = TrustBundle("example.org", roots=(current.roots[0], following.roots[0]))

    parsed = TrustBundle.from_pem("example.org", bundle.to_pem())

    assert parsed.roots == bundle.roots
    assert bundle.to_pem().count("-----BEGIN CERTIFICATE-----") == 2


def test_spiffe_bundle_json_ec_root(current: CertificateAuthority) -> None:
    root = current.roots[0]
    document = TrustBundle("example.org", roots=(root,), sequence=7).to_spiffe_bundle_json()

    assert set(document) == {"keys", "spiffe_sequence"}
    assert document["spiffe_sequence"] == 7
    [entry] = document["keys"]
    assert set(entry) == {"use", "kty", "crv", "x", "y", "x5c"}
    assert entry["use"] == "x509-svid"
    assert entry["kty"] == "EC"
    assert entry["crv"] == "P-256"
    assert len(entry["x5c"]) == 1
    assert base64.b64decode(entry["x5c"][0]) == root.public_bytes(serialization.Encoding.DER)
    numbers = root.public_key().public_numbers()
    assert b64url_decode(entry["x"]) == numbers.x.to_bytes(32, "big")
    assert b64url_decode(entry["y"]) == numbers.y.to_bytes(32, "big")
    json.dumps(document)


def test_spiffe_bundle_json_rsa_root_and_refresh_hint(tmp_path: Path) -> None:
    ca = CertificateAuthority.create(tmp_path / "ca", trust_domain="example.org", key_type="rsa-2048", now=NOW)

    document = ca.trust_bundle().to_spiffe_bundle_json(refresh_hint_seconds=300)

    [entry] = document["keys"]
    assert document["spiffe_refresh_hint"] == 300
    assert entry["kty"] == "RSA"
    assert entry["e"] == "AQAB"
    assert int.from_bytes(b64url_decode(entry["n"]), "big") == ca.roots[0].public_key().public_numbers().n
    assert "kid" not in entry


def test_spiffe_bundle_json_round_trip_ignores_other_uses(current, following) -> None:
    document = TrustBundle("example.org", roots=(current.roots[0], following.roots[0]), sequence=3).to_spiffe_bundle_json()
    document["keys"].append({"use": "jwt-svid", "kty": "EC", "kid": "abc", "crv": "P-256", "x": "", "y": ""})
    document["keys"].append({"use": "x509-svid", "kty": "EC"})

    parsed = TrustBundle.from_spiffe_bundle_json("example.org", document)

    assert parsed.roots == (current.roots[0], following.roots[0])
    assert parsed.sequence == 3


def test_bundle_without_roots_is_rejected() -> None:
    with pytest.raises(BundleError, match="the trust bundle for 'example.org' has no root certificate"):
        TrustBundle("example.org", roots=())


def test_two_root_bundle_verifies_leaves_of_both(current, following) -> None:
    bundle = TrustBundle("example.org", roots=(current.roots[0], following.roots[0]))
    old, _ = current.issue(LEDGER, ttl=None, now=NOW)
    new, _ = following.issue(LEDGER, ttl=None, now=NOW)

    assert bundle.verify_chain(chain_of(old.cert_chain_pem), NOW) == LEDGER
    assert bundle.verify_chain(chain_of(new.cert_chain_pem), NOW) == LEDGER


def test_leaf_of_unknown_root_fails_path_validation(current, following) -> None:
    issued, _ = following.issue(LEDGER, ttl=None, now=NOW)

    with pytest.raises(SvidError) as caught:
        current.trust_bundle().verify_chain(chain_of(issued.cert_chain_pem), NOW)

    assert caught.value.defect == "path-validation"
    assert "does not chain to a root of trust domain 'example.org'" in str(caught.value)


def test_leaf_without_its_intermediate_fails(following: CertificateAuthority) -> None:
    issued, _ = following.issue(LEDGER, ttl=None, now=NOW)

    with pytest.raises(SvidError) as caught:
        following.trust_bundle().verify_chain([issued.certificate], NOW)

    assert caught.value.defect == "path-validation"


def test_expired_leaf_fails(current: CertificateAuthority) -> None:
    issued, _ = current.issue(LEDGER, ttl=timedelta(hours=1), now=NOW)

    with pytest.raises(SvidError) as caught:
        current.trust_bundle().verify_chain([issued.certificate], NOW + timedelta(hours=2))

    assert caught.value.defect == "path-validation"


def test_signed_leaf_of_other_trust_domain_fails(current: CertificateAuthority, tmp_path: Path) -> None:
    # Build by hand what the CA would never issue: a leaf for another trust domain under this root.
    ca_dir = tmp_path / "current"
    key = generate_private_key()
    leaf = certificates.build_leaf(
        key=key.public_key(),
        identity=SpiffeId.parse("spiffe://other.org/ns/payments/sa/ledger"),
        issuer=current.signing_certificate,
        issuer_key=load_private_key(ca_dir / "root-key.pem"),
        ttl=timedelta(hours=1),
        now=NOW,
    )

    with pytest.raises(SvidError) as caught:
        current.trust_bundle().verify_chain([leaf], NOW)

    assert caught.value.defect == "other-trust-domain"


def test_empty_chain_is_rejected(current: CertificateAuthority) -> None:
    with pytest.raises(SvidError, match="the certificate chain is empty"):
        current.trust_bundle().verify_chain([], NOW)
