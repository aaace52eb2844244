"""CSR signing: the identity comes from the caller, bad CSRs are rejected with a precise reason,
and the leaf follows the profile (validity, serial, key identifiers, TTL caps)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from controlplane.errors import CAError, CSRRejected, SvidError
from controlplane.identity.ca import CertificateAuthority
from controlplane.identity.spiffe_id import SpiffeId
from controlplane.identity.svid import validate_svid

NOW = datetime(2026, 6, 1, 12, 0, 0, tzinfo=timezone.utc)
LEDGER = SpiffeId.parse("spiffe://example.org/ns/payments/sa/ledger")


def make_csr(key=None, *, uris=(), dns=(), common_name="workload") -> bytes:
    key = key or ec.generate_private_key(ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    )
    names = [x509.UniformResourceIdentifier(u) for u in uris] + [x509.DNSName(d) for d in dns]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.PEM)


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.create(tmp_path / "ca", trust_domain="example.org", now=NOW)


def reject(ca: CertificateAuthority, csr: bytes, *, identity=LEDGER, ttl=None) -> CSRRejected:
    with pytest.raises(CSRRejected) as caught:
        ca.sign_csr(csr, identity=identity, ttl=ttl, now=NOW)
    return caught.value


def uri_sans(certificate: x509.Certificate) -> list[str]:
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.UniformResourceIdentifier)


def test_leaf_identity_comes_from_caller_not_csr(ca: CertificateAuthority) -> None:
    csr = make_csr(dns=["evil.example.com"], common_name="spiffe://example.org/ns/kube-system/sa/admin")

    issued = ca.sign_csr(csr, identity=LEDGER, ttl=None, now=NOW)

    san = issued.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert uri_sans(issued.certificate) == [str(LEDGER)]
    assert san.get_values_for_type(x509.DNSName) == []
    assert issued.certificate.subject.rfc4514_string() == "O=idmesh"
    assert issued.spiffe_id == LEDGER
    assert validate_svid(issued.certificate, trust_domain="example.org", now=NOW) == LEDGER


def test_csr_with_same_uri_san_is_signed(ca: CertificateAuthority) -> None:
    issued = ca.sign_csr(make_csr(uris=[str(LEDGER)]), identity=LEDGER, ttl=None, now=NOW)

    assert uri_sans(issued.certificate) == [str(LEDGER)]


def test_csr_asking_for_other_identity_is_rejected(ca: CertificateAuthority) -> None:
    error = reject(ca, make_csr(uris=["spiffe://example.org/ns/kube-system/sa/admin"]))

    assert error.reason == "identity-mismatch"
    assert str(error) == (
        "the CSR asks for URI SAN 'spiffe://example.org/ns/kube-system/sa/admin' but the caller "
        "proved spiffe://example.org/ns/payments/sa/ledger; send a CSR with no URI SAN or with "
        "exactly that SPIFFE ID"
    )


def test_csr_with_extra_https_uri_is_rejected(ca: CertificateAuthority) -> None:
    error = reject(ca, make_csr(uris=[str(LEDGER), "https://ledger.example.org/"]))

    assert error.reason == "identity-mismatch"
    assert error.requested == "https://ledger.example.org/"


def test_rsa_1024_csr_is_rejected_as_weak(ca: CertificateAuthority) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)

    error = reject(ca, make_csr(key))

    assert error.reason == "weak-key"
    assert error.key_type == "rsa-1024"
    assert str(error) == "the CSR key is not accepted: RSA key of 1024 bits is too weak; use at least 2048 bits"


@pytest.mark.parametrize("curve", [ec.SECP521R1(), ec.SECP256K1()], ids=["p521", "secp256k1"])
def test_csr_on_unsupported_curve_is_rejected(ca: CertificateAuthority, curve: ec.EllipticCurve) -> None:
    error = reject(ca, make_csr(ec.generate_private_key(curve)))

    assert error.reason == "unsupported-curve"
    assert str(error) == (
        f"the CSR key is not accepted: elliptic curve {curve.name} is not supported; "
        "use P-256 (secp256r1) or P-384 (secp384r1)"
    )


def test_ed25519_csr_is_rejected(ca: CertificateAuthority) -> None:
    error = reject(ca, make_csr(ed25519.Ed25519PrivateKey.generate()))

    assert error.reason == "unsupported-key-type"


def test_tampered_csr_fails_self_signature(ca: CertificateAuthority) -> None:
    csr = x509.load_pem_x509_csr(make_csr(common_name="tamper-me-please"))
    der = csr.public_bytes(serialization.Encoding.DER)
    assert der.count(b"tamper-me-please") == 1
    tampered = x509.load_der_x509_csr(der.replace(b"tamper-me-please", b"tamper-me-pleasf"))

    error = reject(ca, tampered.public_bytes(serialization.Encoding.PEM))

    assert error.reason == "bad-signature"
    assert str(error).startswith("the CSR self-signature does not verify with its public key")


def test_csr_that_is_not_pem_is_malformed(ca: CertificateAuthority) -> None:
    error = reject(ca, b"-----BEGIN CERTIFICATE REQUEST-----\nnot base64\n-----END CERTIFICATE REQUEST-----\n")

    assert error.reason == "malformed"


def test_identity_in_other_trust_domain_is_rejected(ca: CertificateAuthority) -> None:
    other = SpiffeId.parse("spiffe://other.org/ns/payments/sa/ledger")

    error = reject(ca, make_csr(uris=[str(other)]), identity=other)

    assert error.reason == "other-trust-domain"
    assert str(error) == "identity spiffe://other.org/ns/payments/sa/ledger is outside trust domain 'example.org'"


def test_trust_domain_identity_without_path_is_rejected(ca: CertificateAuthority) -> None:
    error = reject(ca, make_csr(), identity=SpiffeId.parse("spiffe://example.org"))

    assert error.reason == "no-workload-path"


@pytest.mark.parametrize("ttl", [timedelta(0), timedelta(seconds=-5)], ids=["zero", "negative"])
def test_non_positive_ttl_is_rejected(ca: CertificateAuthority, ttl: timedelta) -> None:
    error = reject(ca, make_csr(), ttl=ttl)

    assert error.reason == "invalid-ttl"
    assert f"requested TTL {ttl.total_seconds():g}s is not positive" in str(error)


def test_default_ttl_is_24_hours(ca: CertificateAuthority) -> None:
    issued = ca.sign_csr(make_csr(), identity=LEDGER, ttl=None, now=NOW)

    assert issued.not_after == NOW + timedelta(hours=24)


def test_ttl_capped_at_max_ttl(tmp_path: Path) -> None:
    ca = CertificateAuthority.create(tmp_path / "ca", trust_domain="example.org", max_ttl=timedelta(days=2), now=NOW)

    issued = ca.sign_csr(make_csr(), identity=LEDGER, ttl=timedelta(days=30), now=NOW)

    assert ca.max_ttl == timedelta(days=2)
    assert issued.not_after == NOW + timedelta(days=2)


def test_leaf_never_outlives_signing_certificate(tmp_path: Path) -> None:
    ca = CertificateAuthority.create(tmp_path / "ca", trust_domain="example.org", root_ttl=timedelta(hours=2), now=NOW)

    issued = ca.sign_csr(make_csr(), identity=LEDGER, ttl=timedelta(hours=24), now=NOW)

    assert issued.not_after == ca.signing_certificate.not_valid_after_utc == NOW + timedelta(hours=2)


def test_expired_signing_certificate_refuses_to_sign(tmp_path: Path) -> None:
    ca = CertificateAuthority.create(tmp_path / "ca", trust_domain="example.org", root_ttl=timedelta(hours=2), now=NOW)

    with pytest.raises(CAError, match="the CA signing certificate expired at"):
        ca.sign_csr(make_csr(), identity=LEDGER, ttl=None, now=NOW + timedelta(hours=3))


def test_clock_skew_leaf_valid_for_verifier_behind(ca: CertificateAuthority) -> None:
    verifier_now = NOW + timedelta(minutes=5)
    ca_now = verifier_now + timedelta(seconds=30)

    issued = ca.sign_csr(make_csr(), identity=LEDGER, ttl=timedelta(hours=1), now=ca_now)

    # A verifier whose clock is 30 s behind the CA accepts the certificate at once.
    assert ca.trust_bundle().verify_chain([issued.certificate], verifier_now) == LEDGER
    assert issued.not_before == ca_now - timedelta(seconds=60)
    assert issued.not_after == ca_now + timedelta(hours=1)


def test_clock_skew_grace_is_about_a_minute(ca: CertificateAuthority) -> None:
    issued = ca.sign_csr(make_csr(), identity=LEDGER, ttl=timedelta(hours=1), now=NOW)

    bundle = ca.trust_bundle()

    assert bundle.verify_chain([issued.certificate], NOW - timedelta(seconds=59)) == LEDGER
    with pytest.raises(SvidError) as caught:
        bundle.verify_chain([issued.certificate], NOW - timedelta(seconds=61))
    assert caught.value.defect == "path-validation"


def test_serials_are_random_positive_and_fit_20_octets(ca: CertificateAuthority) -> None:
    serials = {ca.sign_csr(make_csr(), identity=LEDGER, ttl=None, now=NOW).serial for _ in range(3)}

    assert len(serials) == 3
    for serial in serials:
        assert 0 < serial < 2**159


def test_leaf_key_identifiers_link_to_issuer(ca: CertificateAuthority) -> None:
    issued = ca.sign_csr(make_csr(), identity=LEDGER, ttl=None, now=NOW)

    aki = issued.certificate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    issuer_ski = ca.signing_certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    leaf_ski = issued.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == issuer_ski.digest
    assert leaf_ski.digest == x509.SubjectKeyIdentifier.from_public_key(issued.certificate.public_key()).digest


def test_key_encipherment_only_for_rsa_leaf(ca: CertificateAuthority) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    rsa_leaf = ca.sign_csr(make_csr(rsa_key), identity=LEDGER, ttl=None, now=NOW).certificate
    ec_leaf = ca.sign_csr(make_csr(), identity=LEDGER, ttl=None, now=NOW).certificate

    rsa_usage = rsa_leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    ec_usage = ec_leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    assert rsa_usage.digital_signature
    assert rsa_usage.key_encipherment
    assert ec_usage.digital_signature
    assert not ec_usage.key_encipherment


def test_chain_pem_lists_leaf_then_intermediate(tmp_path: Path) -> None:
    ca = CertificateAuthority.create(tmp_path / "ca", trust_domain="example.org", intermediate=True, now=NOW)

    issued = ca.sign_csr(make_csr(), identity=LEDGER, ttl=None, now=NOW)

    chain = [x509.load_pem_x509_certificate(pem.encode()) for pem in issued.cert_chain_pem]
    assert chain == [issued.certificate, ca.signing_certificate]
    assert issued.leaf_pem == issued.cert_chain_pem[0]
    assert ca.signing_certificate not in ca.roots


def test_issue_returns_svid_and_matching_key(ca: CertificateAuthority) -> None:
    issued, key_pem = ca.issue(LEDGER, ttl=timedelta(hours=1), now=NOW, key_type="ec-p384")

    key = serialization.load_pem_private_key(key_pem, password=None)
    assert key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert key.public_key() == issued.certificate.public_key()
    assert issued.not_after == NOW + timedelta(hours=1)


def test_issue_outside_trust_domain_raises(ca: CertificateAuthority) -> None:
    with pytest.raises(CAError, match="outside trust domain 'example.org'") as caught:
        ca.issue(SpiffeId.parse("spiffe://other.org/ns/a/sa/b"), ttl=None, now=NOW)

    assert caught.value.reason == "other-trust-domain"
