"""Checks on CA material at load time, so a bad plug-in CA fails at start-up with a clear error
rather than later as TLS handshake failures across the mesh.
"""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from controlplane.errors import CAError
from controlplane.identity.keys import PrivateKey, public_key_der


def _name(certificate: x509.Certificate) -> str:
    return f"{certificate.subject.rfc4514_string() or '(empty subject)'} (serial {certificate.serial_number:x})"


def find_root_for_key(
    roots: tuple[x509.Certificate, ...], key: PrivateKey, *, key_file: Path, cert_file: Path
) -> x509.Certificate:
    """Return the root in `roots` whose public key is `key`; raise `CAError` if there is none."""
    wanted = public_key_der(key.public_key())
    for root in roots:
        if public_key_der(root.public_key()) == wanted:  # type: ignore[arg-type]
            return root
    raise CAError(
        f"{key_file} does not match the public key of any certificate in {cert_file}",
        path=str(key_file),
    )


def check_is_ca(certificate: x509.Certificate, *, role: str) -> None:
    """Raise `CAError` unless `certificate` has CA=true and keyCertSign; `role` names it in errors."""
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise CAError(f"the {role} {_name(certificate)} is not a CA certificate: basic constraints lack CA=true")
    try:
        usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        # RFC 5280 allows a CA without key usage; then every usage is permitted.
        return
    if not usage.key_cert_sign:
        raise CAError(f"the {role} {_name(certificate)} may not sign certificates: key usage lacks keyCertSign")


def _check_issued_by(child: x509.Certificate, issuer: x509.Certificate, *, ca_dir: Path) -> None:
    try:
        child.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise CAError(
            f"broken certificate chain in {ca_dir}: {_name(child)} is not signed by {_name(issuer)} "
            f"({type(exc).__name__}: {exc}); cert-chain.pem must list the signing certificate "
            "first and then each issuer up to the root",
            path=str(ca_dir),
        ) from exc


def check_signing_chain(
    *,
    signing_cert: x509.Certificate,
    signing_key: PrivateKey,
    chain: list[x509.Certificate],
    roots: tuple[x509.Certificate, ...],
    ca_dir: Path,
) -> tuple[x509.Certificate, ...]:
    """Check the signing key, certificate and chain; return the chain ending at its root.

    The key must match `signing_cert`, and `chain` must start with `signing_cert`. Every
    certificate must be signed by the next one, and every issuer must be a CA. The chain must
    end at one of `roots`, which `chain` may include or leave out.
    """
    if public_key_der(signing_key.public_key()) != public_key_der(signing_cert.public_key()):  # type: ignore[arg-type]
        raise CAError(
            f"the signing key in {ca_dir} does not match the public key of the signing certificate "
            f"{_name(signing_cert)}",
            path=str(ca_dir),
        )
    check_is_ca(signing_cert, role="signing certificate")
    if not chain or chain[0] != signing_cert:
        raise CAError(
            f"cert-chain.pem in {ca_dir} must start with the signing certificate {_name(signing_cert)}",
            path=str(ca_dir),
        )

    full = list(chain)
    if full[-1] not in roots:
        issuer = next((root for root in roots if root.subject == full[-1].issuer), None)
        if issuer is None:
            raise CAError(
                f"broken certificate chain in {ca_dir}: no certificate in root-cert.pem issued "
                f"{_name(full[-1])}, whose issuer is {full[-1].issuer.rfc4514_string()}",
                path=str(ca_dir),
            )
        full.append(issuer)

    for child, issuer in zip(full, full[1:]):
        check_is_ca(issuer, role="issuer")
        _check_issued_by(child, issuer, ca_dir=ca_dir)
    root = full[-1]
    check_is_ca(root, role="root")
    _check_issued_by(root, root, ca_dir=ca_dir)
    return tuple(full)
