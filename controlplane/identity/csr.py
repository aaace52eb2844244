"""Checks on a PKCS#10 certificate signing request before the CA signs its key.

The CA takes only the public key from a CSR. The CSR's subject, DNS and IP SANs and requested
extensions are ignored, because the leaf is built from the attested identity alone. A URI SAN
is the one thing checked against that identity. A CSR that requests another SPIFFE ID comes
from a confused or hostile client, and signing it anyway would hide the problem.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm

from controlplane.errors import CSRRejected, UnsupportedKeyError
from controlplane.identity.keys import PublicKey, check_public_key
from controlplane.identity.spiffe_id import SpiffeId


def public_key_from_csr(csr_pem: bytes, *, identity: SpiffeId) -> PublicKey:
    """Return the public key of `csr_pem` after checking it may be signed for `identity`.

    Raise `CSRRejected` with `reason` `malformed`, `bad-signature`, `identity-mismatch`, or the
    `reason` of `keys.check_public_key` (`weak-key`, `unsupported-curve`, ...).
    """
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except (ValueError, TypeError) as exc:
        raise CSRRejected(f"the CSR is not a valid PEM PKCS#10 request: {exc}", reason="malformed") from exc

    public_key = _checked_public_key(csr)
    # Proof of possession: only the holder of the private key can produce this signature.
    try:
        signature_valid = csr.is_signature_valid
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CSRRejected(f"the CSR signature cannot be checked: {exc}", reason="malformed") from exc
    if not signature_valid:
        raise CSRRejected(
            "the CSR self-signature does not verify with its public key; the request was altered "
            "or signed with another key",
            reason="bad-signature",
        )
    _check_uri_sans(csr, identity)
    return public_key


def _checked_public_key(csr: x509.CertificateSigningRequest) -> PublicKey:
    try:
        public_key = csr.public_key()
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise CSRRejected(f"the CSR public key cannot be read: {exc}", reason="malformed") from exc
    try:
        check_public_key(public_key)
    except UnsupportedKeyError as exc:
        raise CSRRejected(
            f"the CSR key is not accepted: {exc}", reason=exc.reason, key_type=exc.key_type
        ) from exc
    return public_key  # type: ignore[return-value]


def _check_uri_sans(csr: x509.CertificateSigningRequest, identity: SpiffeId) -> None:
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return
    except ValueError as exc:
        raise CSRRejected(f"the CSR extensions cannot be parsed: {exc}", reason="malformed") from exc
    expected = str(identity)
    for uri in san.value.get_values_for_type(x509.UniformResourceIdentifier):
        if uri != expected:
            raise CSRRejected(
                f"the CSR asks for URI SAN {uri!r} but the caller proved {expected}; "
                "send a CSR with no URI SAN or with exactly that SPIFFE ID",
                reason="identity-mismatch",
                requested=uri,
                identity=expected,
            )
