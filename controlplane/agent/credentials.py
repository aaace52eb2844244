"""The workload's key, its certificate signing request, and the X.509-SVID the CA returns.

The private key is generated here, in the agent's memory, and never leaves the process: the CA
receives only the CSR, and Envoy receives the key over the SDS Unix socket. Nothing in this module
logs or writes the key.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from controlplane.errors import SvidError
from controlplane.identity.spiffe_id import SpiffeId
from controlplane.identity.svid import format_serial, validate_svid


def generate_private_key() -> ec.EllipticCurvePrivateKey:
    """Generate a fresh ECDSA P-256 private key."""
    return ec.generate_private_key(ec.SECP256R1())


def build_csr(key: ec.EllipticCurvePrivateKey, spiffe_id: SpiffeId) -> str:
    """Return a PEM PKCS#10 request for `key` whose only SAN is the URI `spiffe_id`.

    The subject is left empty, as the X.509-SVID profile puts the identity in the URI SAN only.
    The CA decides the identity from the credential and checks the SAN against it.
    """
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(spiffe_id))]),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return request.public_bytes(serialization.Encoding.PEM).decode()


def private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """Return `key` as unencrypted PKCS#8 PEM, the form Envoy reads from an SDS secret."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@dataclass(frozen=True, slots=True, repr=False)
class Svid:
    """An X.509-SVID with its private key and the trust bundle that came with it.

    `chain` is leaf first, without the root. `repr` leaves the key out so that a stray
    `print(svid)` or a log of the object cannot show it.
    """

    spiffe_id: SpiffeId
    chain: tuple[x509.Certificate, ...]
    key: ec.EllipticCurvePrivateKey
    trust_bundle: tuple[x509.Certificate, ...]

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]

    @property
    def serial(self) -> str:
        """The leaf's serial number in lower-case hex of whole bytes, as Envoy's `/certs` prints it."""
        return format_serial(self.leaf.serial_number)

    @property
    def not_before(self) -> datetime:
        return self.leaf.not_valid_before_utc

    @property
    def not_after(self) -> datetime:
        return self.leaf.not_valid_after_utc

    def chain_pem(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.chain)

    def key_pem(self) -> bytes:
        return private_key_pem(self.key)

    def bundle_pem(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.trust_bundle)

    def __repr__(self) -> str:
        return f"Svid(spiffe_id={str(self.spiffe_id)!r}, serial={self.serial!r}, not_after={self.not_after.isoformat()!r})"


def load_pem_certificates(pems: Sequence[str] | str | bytes, *, what: str) -> tuple[x509.Certificate, ...]:
    """Parse one or more PEM certificates; raise `SvidError` naming `what` when none parse."""
    if isinstance(pems, (str, bytes)):
        pems = [pems]
    certificates: list[x509.Certificate] = []
    for pem in pems:
        data = pem.encode() if isinstance(pem, str) else pem
        try:
            certificates.extend(x509.load_pem_x509_certificates(data))
        except ValueError as exc:
            raise SvidError(f"{what} is not valid PEM: {exc}", what=what) from exc
    if not certificates:
        raise SvidError(f"{what} contains no certificate", what=what)
    return tuple(certificates)


def _check_signed_by_bundle(chain: Sequence[x509.Certificate], bundle: Sequence[x509.Certificate]) -> None:
    for child, parent in zip(chain, chain[1:]):
        try:
            child.verify_directly_issued_by(parent)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise SvidError(
                f"certificate chain is broken: {child.subject.rfc4514_string()!r} is not issued by "
                f"{parent.subject.rfc4514_string()!r}",
            ) from exc
    top = chain[-1]
    for root in bundle:
        try:
            top.verify_directly_issued_by(root)
            return
        except (ValueError, TypeError, InvalidSignature):
            continue
    raise SvidError(
        f"certificate chain does not lead to any of the {len(bundle)} trust bundle roots "
        f"(top issuer {top.issuer.rfc4514_string()!r})",
    )


def svid_from_response(
    *,
    cert_chain: Sequence[str],
    trust_bundle: Sequence[str],
    spiffe_id: str,
    key: ec.EllipticCurvePrivateKey,
    expected_id: SpiffeId,
) -> Svid:
    """Check a CA response against the request and return the `Svid` it grants.

    The leaf must be a valid X.509-SVID (`validate_svid`) for `expected_id`, agree with the
    `spiffe_id` field, hold the public half of `key` and chain up to a root of `trust_bundle`.
    Raise `SvidError` naming the first check that fails.
    """
    chain = load_pem_certificates(list(cert_chain), what="cert_chain")
    bundle = load_pem_certificates(list(trust_bundle), what="trust_bundle")
    leaf = chain[0]

    issued = validate_svid(leaf, trust_domain=expected_id.trust_domain)
    if issued != expected_id or spiffe_id != str(expected_id):
        raise SvidError(
            f"the CA issued {str(issued)!r} (response field {spiffe_id!r}) but the agent requested {str(expected_id)!r}",
            issued=str(issued),
            expected=str(expected_id),
        )

    public = serialization.PublicFormat.SubjectPublicKeyInfo
    leaf_key = leaf.public_key().public_bytes(serialization.Encoding.DER, public)
    own_key = key.public_key().public_bytes(serialization.Encoding.DER, public)
    if leaf_key != own_key:
        raise SvidError("the issued leaf does not hold the public key of the agent's CSR")

    _check_signed_by_bundle(chain, bundle)
    return Svid(spiffe_id=expected_id, chain=chain, key=key, trust_bundle=bundle)
