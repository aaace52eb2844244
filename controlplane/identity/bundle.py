"""Trust bundles: the root certificates that verify X.509-SVIDs of one trust domain.

A bundle normally contains one root. During a root rotation it contains two (the current root
and the next one), so that certificates chaining to either verify while workloads move over.

`to_spiffe_bundle_json` renders the SPIFFE bundle format (SPIFFE Trust Domain and Bundle
specification, section 4, and X.509-SVID specification, section 6.1): a JWK Set whose `keys`
entries each carry `use: "x509-svid"`, the key parameters of RFC 7518 section 6, no `kid`, and an
`x5c` with exactly one base64 DER root; `spiffe_sequence` is the bundle's revision number.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import verification

from controlplane.errors import BundleError, SvidError
from controlplane.identity.spiffe_id import SpiffeId, validate_trust_domain
from controlplane.identity.svid import validate_svid

X509_SVID_USE = "x509-svid"
# Room for the leaf, one intermediate and the root, and a little more for plug-in hierarchies.
MAX_CHAIN_DEPTH = 4

_JWK_CURVES = {"secp256r1": ("P-256", 32), "secp384r1": ("P-384", 48)}


def _base64url_uint(value: int, length: int | None = None) -> str:
    size = length if length is not None else max(1, (value.bit_length() + 7) // 8)
    return base64.urlsafe_b64encode(value.to_bytes(size, "big")).rstrip(b"=").decode("ascii")


def _jwk_key_parameters(certificate: x509.Certificate) -> dict[str, str]:
    key = certificate.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        numbers = key.public_numbers()
        return {"kty": "RSA", "n": _base64url_uint(numbers.n), "e": _base64url_uint(numbers.e)}
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in _JWK_CURVES:
        curve, size = _JWK_CURVES[key.curve.name]
        numbers = key.public_numbers()
        return {
            "kty": "EC",
            "crv": curve,
            "x": _base64url_uint(numbers.x, size),
            "y": _base64url_uint(numbers.y, size),
        }
    raise BundleError(
        f"root certificate serial {certificate.serial_number:x} has a key that cannot be "
        "written as a JWK; use ECDSA P-256, P-384 or RSA",
        serial=certificate.serial_number,
    )


@dataclass(frozen=True, slots=True)
class TrustBundle:
    """The roots of `trust_domain`, with the bundle revision `sequence`."""

    trust_domain: str
    roots: tuple[x509.Certificate, ...]
    sequence: int = 1

    def __post_init__(self) -> None:
        validate_trust_domain(self.trust_domain)
        if not self.roots:
            raise BundleError(
                f"the trust bundle for {self.trust_domain!r} has no root certificate",
                trust_domain=self.trust_domain,
            )
        if self.sequence < 0:
            raise BundleError(f"bundle sequence {self.sequence} is negative", sequence=self.sequence)

    @classmethod
    def from_pem(cls, trust_domain: str, pem: str | bytes, *, sequence: int = 1) -> TrustBundle:
        """Parse one or more concatenated PEM root certificates."""
        data = pem.encode("ascii") if isinstance(pem, str) else pem
        try:
            roots = x509.load_pem_x509_certificates(data)
        except ValueError as exc:
            raise BundleError(
                f"the trust bundle for {trust_domain!r} is not valid PEM: {exc}", trust_domain=trust_domain
            ) from exc
        return cls(trust_domain=trust_domain, roots=tuple(roots), sequence=sequence)

    @classmethod
    def from_spiffe_bundle_json(cls, trust_domain: str, document: dict[str, Any]) -> TrustBundle:
        """Read the X.509 roots from a SPIFFE bundle document (X.509-SVID spec, section 6.2).

        Entries whose `use` is not `x509-svid` or that have no `x5c` are ignored, and only the
        first `x5c` value of an entry counts, as the specification requires.
        """
        roots = []
        for entry in document.get("keys", []):
            if entry.get("use") != X509_SVID_USE or not entry.get("x5c"):
                continue
            try:
                roots.append(x509.load_der_x509_certificate(base64.b64decode(entry["x5c"][0])))
            except ValueError as exc:
                raise BundleError(
                    f"an x509-svid entry of the bundle for {trust_domain!r} contains no valid certificate: {exc}",
                    trust_domain=trust_domain,
                ) from exc
        return cls(trust_domain=trust_domain, roots=tuple(roots), sequence=int(document.get("spiffe_sequence", 0)))

    def to_pem(self) -> str:
        """Return the roots as concatenated PEM, in bundle order."""
        return "".join(root.public_bytes(serialization.Encoding.PEM).decode("ascii") for root in self.roots)

    def to_spiffe_bundle_json(self, *, refresh_hint_seconds: int | None = None) -> dict[str, Any]:
        """Return the bundle as a SPIFFE bundle document (a JSON-ready dict)."""
        keys = []
        for root in self.roots:
            entry: dict[str, Any] = {"use": X509_SVID_USE, **_jwk_key_parameters(root)}
            der = root.public_bytes(serialization.Encoding.DER)
            entry["x5c"] = [base64.b64encode(der).decode("ascii")]
            keys.append(entry)
        document: dict[str, Any] = {"keys": keys, "spiffe_sequence": self.sequence}
        if refresh_hint_seconds is not None:
            document["spiffe_refresh_hint"] = refresh_hint_seconds
        return document

    def verify_chain(self, chain: Sequence[x509.Certificate], now: datetime) -> SpiffeId:
        """Verify a leaf X.509-SVID and its intermediates against the roots; return its SPIFFE ID.

        `chain` is the leaf first, then intermediates; a root included at the end is harmless.
        Path validation follows RFC 5280 (signatures, validity at `now`, CA flags, path length)
        through cryptography's verifier, and then the leaf must pass `validate_svid` in this
        bundle's trust domain. Raise `SvidError` naming what failed.
        """
        if not chain:
            raise SvidError("the certificate chain is empty", defect="empty-chain", serial=None)
        leaf, intermediates = chain[0], list(chain[1:])
        validate_svid(leaf, trust_domain=self.trust_domain)
        verifier = (
            verification.PolicyBuilder()
            .store(verification.Store(list(self.roots)))
            .time(now)
            .max_chain_depth(MAX_CHAIN_DEPTH)
            # validate_svid above already checked the leaf's extensions. The Web PKI defaults
            # would also require a DNS or IP SAN, which an SVID need not have.
            .extension_policies(
                ca_policy=verification.ExtensionPolicy.webpki_defaults_ca(),
                ee_policy=verification.ExtensionPolicy.permit_all(),
            )
            .build_client_verifier()
        )
        try:
            verifier.verify(leaf, intermediates)
        except verification.VerificationError as exc:
            raise SvidError(
                f"certificate serial {leaf.serial_number:x} does not chain to a root of trust "
                f"domain {self.trust_domain!r} at {now.isoformat()}: {exc}",
                defect="path-validation",
                serial=leaf.serial_number,
            ) from exc
        return validate_svid(leaf, trust_domain=self.trust_domain, now=now)
