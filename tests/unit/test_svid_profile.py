"""The X.509-SVID profile: each fixture certificate breaks exactly the rule in its file name."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest
from cryptography import x509

from controlplane.errors import SvidError
from controlplane.identity.spiffe_id import SpiffeId
from controlplane.identity.svid import format_serial, spiffe_id_from_certificate, validate_svid

CERTS = Path(__file__).parent.parent / "data" / "certs"


def load(name: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate((CERTS / name).read_bytes())


INVALID = [
    # (fixture, defect, words the message must contain)
    ("leaf-with-two-uri-sans.pem", "uri-san-count",
     "must have exactly one URI SAN (the SPIFFE ID) but has 2: "
     "spiffe://example.org/ns/payments/sa/ledger, https://ledger.example.org/"),
    ("leaf-with-no-uri-san.pem", "no-uri-san", "has no subject alternative name extension"),
    ("leaf-with-https-uri-san.pem", "invalid-spiffe-id", "the ID must start with 'spiffe://'"),
    ("leaf-with-trailing-slash-spiffe-id.pem", "invalid-spiffe-id", "the path ends with '/'"),
    ("leaf-with-root-spiffe-id.pem", "root-spiffe-id", "has no path"),
    ("leaf-with-ca-true.pem", "leaf-is-ca", "CA=true"),
    ("leaf-without-basic-constraints.pem", "no-basic-constraints", "has no basic constraints extension"),
    ("leaf-with-key-cert-sign.pem", "leaf-can-sign-certificates", "keyCertSign or cRLSign"),
    ("leaf-with-crl-sign.pem", "leaf-can-sign-certificates", "keyCertSign or cRLSign"),
    ("leaf-without-digital-signature.pem", "no-digital-signature", "lacks digitalSignature"),
    ("leaf-with-non-critical-key-usage.pem", "key-usage-not-critical", "must be critical"),
    ("leaf-without-client-auth.pem", "extended-key-usage", "missing clientAuth"),
    ("leaf-without-extended-key-usage.pem", "extended-key-usage", "missing serverAuth, clientAuth"),
    ("leaf-rsa-without-key-encipherment.pem", "rsa-without-key-encipherment", "keyEncipherment"),
    ("leaf-with-rsa-1024-key.pem", "unsupported-key", "RSA key of 1024 bits is too weak"),
    ("leaf-with-p521-key.pem", "unsupported-key", "elliptic curve secp521r1 is not supported"),
    ("leaf-with-empty-subject-and-non-critical-san.pem", "empty-subject-san-not-critical",
     "subject alternative name extension must be critical"),
]


@pytest.mark.parametrize(("fixture", "defect", "words"), INVALID, ids=[case[0] for case in INVALID])
def test_invalid_svid_is_rejected_naming_defect(fixture: str, defect: str, words: str) -> None:
    certificate = load(fixture)

    with pytest.raises(SvidError) as caught:
        validate_svid(certificate)

    assert caught.value.defect == defect
    assert caught.value.serial == certificate.serial_number
    assert words in str(caught.value)
    assert str(caught.value).startswith(f"certificate serial {certificate.serial_number:x} is not a valid X.509-SVID: ")


def test_valid_fixture_passes_profile() -> None:
    assert validate_svid(load("valid-leaf.pem")) == SpiffeId.parse("spiffe://example.org/ns/payments/sa/ledger")


def test_spiffe_id_read_from_single_uri_san() -> None:
    assert str(spiffe_id_from_certificate(load("valid-leaf.pem"))) == "spiffe://example.org/ns/payments/sa/ledger"


def test_spiffe_id_helper_rejects_two_uri_sans() -> None:
    with pytest.raises(SvidError) as caught:
        spiffe_id_from_certificate(load("leaf-with-two-uri-sans.pem"))

    assert caught.value.defect == "uri-san-count"


def test_svid_outside_expected_trust_domain_is_rejected() -> None:
    with pytest.raises(SvidError) as caught:
        validate_svid(load("valid-leaf.pem"), trust_domain="other.org")

    assert caught.value.defect == "other-trust-domain"
    assert "spiffe://example.org/ns/payments/sa/ledger is not in trust domain 'other.org'" in str(caught.value)


def test_svid_validity_period_checked_when_now_given() -> None:
    certificate = load("valid-leaf.pem")

    with pytest.raises(SvidError) as early:
        validate_svid(certificate, now=datetime(2019, 12, 31, tzinfo=timezone.utc))
    with pytest.raises(SvidError) as late:
        validate_svid(certificate, now=datetime(2120, 1, 2, tzinfo=timezone.utc))

    assert early.value.defect == "not-yet-valid"
    assert late.value.defect == "expired"
    assert validate_svid(certificate, now=datetime(2030, 1, 1, tzinfo=timezone.utc)).trust_domain == "example.org"


@pytest.mark.parametrize(("serial", "text"), [(0x0EFB42, "0efb42"), (0xEFB42A, "efb42a"), (0x1, "01")])
def test_serial_keeps_whole_bytes_like_envoy(serial: int, text: str) -> None:
    assert format_serial(serial) == text
