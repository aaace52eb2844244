"""Regenerate the fixture certificates in this directory: `python tests/data/certs/make_fixtures.py`.

Each file is a leaf certificate named after its one defect against the X.509-SVID profile;
`valid-leaf.pem` has none. All are signed by a throwaway self-signed CA (`fixture-ca.pem`) and
are valid from 2020 to 2120, so that only the defect makes them fail. Keys are not kept.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

HERE = Path(__file__).parent
SPIFFE_ID = "spiffe://example.org/ns/payments/sa/ledger"
NOT_BEFORE = datetime(2020, 1, 1, tzinfo=timezone.utc)
NOT_AFTER = datetime(2120, 1, 1, tzinfo=timezone.utc)


def key_usage(*, digital_signature=True, key_encipherment=False, key_cert_sign=False, crl_sign=False):
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def make_ca() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "idmesh fixtures")])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOT_BEFORE)
        .not_valid_after(NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(key_usage(digital_signature=False, key_cert_sign=True, crl_sign=True), critical=True)
        .sign(key, hashes.SHA256())
    )
    return certificate, key


def make_leaf(ca, ca_key, *, public_key=None, subject=None, uris=(SPIFFE_ID,), san_critical=False,
              basic_constraints=x509.BasicConstraints(ca=False, path_length=None),
              usage=None, usage_critical=True,
              eku=(ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH)):
    public_key = public_key or ec.generate_private_key(ec.SECP256R1()).public_key()
    if subject is None:
        subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "idmesh")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOT_BEFORE)
        .not_valid_after(NOT_AFTER)
    )
    if basic_constraints is not None:
        builder = builder.add_extension(basic_constraints, critical=True)
    builder = builder.add_extension(usage or key_usage(), critical=usage_critical)
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    if uris:
        names = [x509.UniformResourceIdentifier(uri) for uri in uris]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=san_critical)
    return builder.sign(ca_key, hashes.SHA256())


def main() -> None:
    ca, ca_key = make_ca()
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    fixtures = {
        "valid-leaf.pem": make_leaf(ca, ca_key),
        "leaf-with-two-uri-sans.pem": make_leaf(ca, ca_key, uris=(SPIFFE_ID, "https://ledger.example.org/")),
        "leaf-with-no-uri-san.pem": make_leaf(ca, ca_key, uris=()),
        "leaf-with-https-uri-san.pem": make_leaf(ca, ca_key, uris=("https://ledger.example.org/",)),
        "leaf-with-trailing-slash-spiffe-id.pem": make_leaf(ca, ca_key, uris=(SPIFFE_ID + "/",)),
        "leaf-with-root-spiffe-id.pem": make_leaf(ca, ca_key, uris=("spiffe://example.org",)),
        "leaf-with-ca-true.pem": make_leaf(
            ca, ca_key, basic_constraints=x509.BasicConstraints(ca=True, path_length=None)
        ),
        "leaf-without-basic-constraints.pem": make_leaf(ca, ca_key, basic_constraints=None),
        "leaf-with-key-cert-sign.pem": make_leaf(ca, ca_key, usage=key_usage(key_cert_sign=True)),
        "leaf-with-crl-sign.pem": make_leaf(ca, ca_key, usage=key_usage(crl_sign=True)),
        "leaf-without-digital-signature.pem": make_leaf(
            ca, ca_key, usage=key_usage(digital_signature=False, key_encipherment=True)
        ),
        "leaf-with-non-critical-key-usage.pem": make_leaf(ca, ca_key, usage_critical=False),
        "leaf-without-client-auth.pem": make_leaf(ca, ca_key, eku=(ExtendedKeyUsageOID.SERVER_AUTH,)),
        "leaf-without-extended-key-usage.pem": make_leaf(ca, ca_key, eku=()),
        "leaf-rsa-without-key-encipherment.pem": make_leaf(ca, ca_key, public_key=rsa_key),
        "leaf-with-rsa-1024-key.pem": make_leaf(
            ca,
            ca_key,
            public_key=rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key(),
            usage=key_usage(key_encipherment=True),
        ),
        "leaf-with-p521-key.pem": make_leaf(ca, ca_key, public_key=ec.generate_private_key(ec.SECP521R1()).public_key()),
        "leaf-with-empty-subject-and-non-critical-san.pem": make_leaf(ca, ca_key, subject=x509.Name([])),
    }
    (HERE / "fixture-ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for name, certificate in fixtures.items():
        (HERE / name).write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


if __name__ == "__main__":
    main()
