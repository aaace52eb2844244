"""The X.509-SVID profile: what a leaf certificate must contain to carry a SPIFFE identity.

The rules come from the SPIFFE X.509-SVID specification (sections 2 to 5) and the mesh's own
profile on top of it:

- exactly one URI SAN, which is a valid SPIFFE ID with a non-root path (other SAN types such
  as DNS names are allowed);
- basic constraints are present with `CA=false`;
- key usage is present, critical, has digitalSignature, has keyEncipherment for an RSA key
  (TLS 1.2 RSA key exchange needs it), and has neither keyCertSign nor cRLSign;
- extended key usage contains both serverAuth and clientAuth, because every sidecar is both
  a TLS server and a TLS client;
- the public key is one that `keys.check_public_key` accepts;
- with an empty subject, the SAN extension is critical (RFC 5280, section 4.1.2.6).

Path validation (signatures, validity dates, CA flags of the issuers) is `bundle.TrustBundle`'s job.
"""

from __future__ import annotations

from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from controlplane.errors import SpiffeIdError, SvidError, UnsupportedKeyError
from controlplane.identity.keys import check_public_key
from controlplane.identity.spiffe_id import SpiffeId

REQUIRED_EXTENDED_KEY_USAGES = {
    ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
    ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
}


def _defect(certificate: x509.Certificate, defect: str, message: str) -> SvidError:
    serial = certificate.serial_number
    return SvidError(
        f"certificate serial {serial:x} is not a valid X.509-SVID: {message}",
        defect=defect,
        serial=serial,
    )


def _extension(certificate: x509.Certificate, extension_type: type) -> x509.Extension | None:
    try:
        return certificate.extensions.get_extension_for_class(extension_type)
    except x509.ExtensionNotFound:
        return None
    except ValueError as exc:
        # cryptography raises ValueError for malformed or duplicated extensions.
        raise _defect(certificate, "malformed-extensions", f"its extensions cannot be parsed: {exc}") from exc


def spiffe_id_from_certificate(certificate: x509.Certificate) -> SpiffeId:
    """Return the SPIFFE ID in the single URI SAN of `certificate`.

    Raise `SvidError` when there is no SAN extension, not exactly one URI SAN, or the URI is not
    a valid SPIFFE ID. This checks only the identity; `validate_svid` checks the whole profile.
    """
    san = _extension(certificate, x509.SubjectAlternativeName)
    if san is None:
        raise _defect(certificate, "no-uri-san", "it has no subject alternative name extension")
    uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1:
        listed = ", ".join(uris) if uris else "none"
        raise _defect(
            certificate,
            "uri-san-count",
            f"it must have exactly one URI SAN (the SPIFFE ID) but has {len(uris)}: {listed}",
        )
    try:
        return SpiffeId.parse(uris[0])
    except SpiffeIdError as exc:
        raise _defect(certificate, "invalid-spiffe-id", f"its URI SAN is not a valid SPIFFE ID: {exc}") from exc


def validate_svid(
    certificate: x509.Certificate,
    *,
    trust_domain: str | None = None,
    now: datetime | None = None,
) -> SpiffeId:
    """Check that `certificate` is a leaf X.509-SVID and return its SPIFFE ID.

    With `trust_domain`, the SPIFFE ID must belong to it. With `now` (timezone-aware), the
    certificate must be within its validity period. Raise `SvidError` whose `defect` names the
    first rule broken.
    """
    spiffe_id = spiffe_id_from_certificate(certificate)
    if not spiffe_id.path:
        raise _defect(
            certificate,
            "root-spiffe-id",
            f"the leaf SPIFFE ID {spiffe_id} has no path; leaf SVIDs must name a workload",
        )
    if trust_domain is not None and not spiffe_id.member_of(trust_domain):
        raise _defect(
            certificate,
            "other-trust-domain",
            f"the SPIFFE ID {spiffe_id} is not in trust domain {trust_domain!r}",
        )
    _check_subject(certificate)
    _check_basic_constraints(certificate)
    _check_key_usage(certificate)
    _check_extended_key_usage(certificate)
    try:
        check_public_key(certificate.public_key())
    except UnsupportedKeyError as exc:
        raise _defect(certificate, "unsupported-key", str(exc)) from exc
    if now is not None:
        _check_validity(certificate, now)
    return spiffe_id


def _check_subject(certificate: x509.Certificate) -> None:
    if len(certificate.subject) == 0:
        san = _extension(certificate, x509.SubjectAlternativeName)
        if san is not None and not san.critical:
            raise _defect(
                certificate,
                "empty-subject-san-not-critical",
                "the subject is empty, so the subject alternative name extension must be critical",
            )


def _check_basic_constraints(certificate: x509.Certificate) -> None:
    constraints = _extension(certificate, x509.BasicConstraints)
    if constraints is None:
        raise _defect(certificate, "no-basic-constraints", "it has no basic constraints extension; a leaf SVID must set CA=false")
    if constraints.value.ca:
        raise _defect(certificate, "leaf-is-ca", "basic constraints set CA=true; a leaf SVID must have CA=false")


def _check_key_usage(certificate: x509.Certificate) -> None:
    extension = _extension(certificate, x509.KeyUsage)
    if extension is None:
        raise _defect(certificate, "no-key-usage", "it has no key usage extension")
    if not extension.critical:
        raise _defect(certificate, "key-usage-not-critical", "the key usage extension must be critical")
    usage: x509.KeyUsage = extension.value
    if not usage.digital_signature:
        raise _defect(certificate, "no-digital-signature", "key usage lacks digitalSignature")
    if usage.key_cert_sign or usage.crl_sign:
        raise _defect(
            certificate,
            "leaf-can-sign-certificates",
            "key usage has keyCertSign or cRLSign, which only signing certificates may have",
        )
    if isinstance(certificate.public_key(), rsa.RSAPublicKey) and not usage.key_encipherment:
        raise _defect(certificate, "rsa-without-key-encipherment", "an RSA leaf must have keyEncipherment in key usage")


def _check_extended_key_usage(certificate: x509.Certificate) -> None:
    extension = _extension(certificate, x509.ExtendedKeyUsage)
    present = set(extension.value) if extension is not None else set()
    missing = [name for oid, name in REQUIRED_EXTENDED_KEY_USAGES.items() if oid not in present]
    if missing:
        raise _defect(
            certificate,
            "extended-key-usage",
            f"extended key usage must contain serverAuth and clientAuth; missing {', '.join(missing)}",
        )


def _check_validity(certificate: x509.Certificate, now: datetime) -> None:
    not_before = certificate.not_valid_before_utc
    not_after = certificate.not_valid_after_utc
    if now < not_before:
        raise _defect(certificate, "not-yet-valid", f"it is not valid before {not_before.isoformat()}")
    if now > not_after:
        raise _defect(certificate, "expired", f"it expired at {not_after.isoformat()}")


def format_serial(serial: int) -> str:
    """Format a certificate serial as lower-case hex of whole bytes, as Envoy prints it.

    Envoy's `/certs` and the `%DOWNSTREAM_PEER_SERIAL%` access log field print every byte of the
    DER integer, so a serial whose first byte is below 0x10 keeps its leading zero. Using the same
    form everywhere lets a serial from our logs be found in Envoy's.
    """
    digits = format(serial, "x")
    return digits if len(digits) % 2 == 0 else "0" + digits
