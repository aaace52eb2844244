"""Certificate templates: the root, the intermediate and the leaf X.509-SVID the CA signs.

Every certificate's NotBefore is backdated by `CLOCK_SKEW_GRACE`, so that a verifier whose clock
runs up to that much behind the CA's already accepts it. NotAfter is never padded: a certificate
asked for `ttl` expires at `now + ttl`, or earlier if its issuer expires first.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from controlplane.identity.keys import PrivateKey, PublicKey, signature_hash
from controlplane.identity.spiffe_id import SpiffeId

CLOCK_SKEW_GRACE = timedelta(seconds=60)
ORGANIZATION = "idmesh"


def _subject(common_name: str | None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION)]
    if common_name:
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


def _authority_key_identifier(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    # Reuse the issuer's own SKI when it has one, so AKI matches it byte for byte even when the
    # issuer (a plug-in CA) computed its SKI with another method.
    try:
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key())  # type: ignore[arg-type]
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _ca_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def build_root(
    *,
    key: PrivateKey,
    trust_domain: str,
    ttl: timedelta,
    now: datetime,
    path_length: int,
) -> x509.Certificate:
    """Build a self-signed root whose URI SAN is the trust domain's SPIFFE ID `spiffe://<td>`."""
    subject = _subject(f"idmesh root CA {trust_domain}")
    public_key = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW_GRACE)
        .not_valid_after(now + ttl)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(_ca_key_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key), critical=False)
        .add_extension(_trust_domain_san(trust_domain), critical=False)
    )
    return builder.sign(key, signature_hash(key))


def build_intermediate(
    *,
    key: PublicKey,
    trust_domain: str,
    issuer: x509.Certificate,
    issuer_key: PrivateKey,
    ttl: timedelta,
    now: datetime,
) -> x509.Certificate:
    """Build an intermediate CA that may sign leaves only (path length 0)."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(_subject(f"idmesh intermediate CA {trust_domain}"))
        .issuer_name(issuer.subject)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW_GRACE)
        .not_valid_after(min(now + ttl, issuer.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_ca_key_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key), critical=False)
        .add_extension(_authority_key_identifier(issuer), critical=False)
        .add_extension(_trust_domain_san(trust_domain), critical=False)
    )
    return builder.sign(issuer_key, signature_hash(issuer_key))


def build_leaf(
    *,
    key: PublicKey,
    identity: SpiffeId,
    issuer: x509.Certificate,
    issuer_key: PrivateKey,
    ttl: timedelta,
    now: datetime,
    dns_names: Sequence[str] = (),
) -> x509.Certificate:
    """Build a leaf X.509-SVID for `identity` and `key`, signed by `issuer`.

    The subject carries only O=idmesh: a CN holding the SPIFFE ID could exceed the 64-character
    limit of X.520, and nothing in the mesh reads the CN. `dns_names` become DNS SANs next to
    the URI SAN, for a server that clients verify by host name (the control plane itself).
    """
    usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=isinstance(key, rsa.RSAPublicKey),
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(_subject(None))
        .issuer_name(issuer.subject)
        .public_key(key)
        # 159 random bits from os.urandom, positive and within RFC 5280's 20-octet limit.
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW_GRACE)
        .not_valid_after(min(now + ttl, issuer.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key), critical=False)
        .add_extension(_authority_key_identifier(issuer), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(str(identity)), *(x509.DNSName(name) for name in dns_names)]
            ),
            critical=False,
        )
    )
    return builder.sign(issuer_key, signature_hash(issuer_key))


def _trust_domain_san(trust_domain: str) -> x509.SubjectAlternativeName:
    # A signing certificate should itself be an SVID whose SPIFFE ID has no path.
    return x509.SubjectAlternativeName(
        [x509.UniformResourceIdentifier(str(SpiffeId(trust_domain=trust_domain)))]
    )
