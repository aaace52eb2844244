"""Private key generation and the public key rules every certificate and CSR must meet.

The mesh accepts ECDSA on P-256 or P-384 and RSA from 2048 to 8192 bits, a set that every common
TLS stack verifies. secp256k1 is not a TLS curve, P-521 and Ed25519 certificates are not
supported everywhere, and NIST SP 800-131A disallows RSA below 2048 bits.
"""

from __future__ import annotations

from typing import Union

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from controlplane.errors import UnsupportedKeyError

PrivateKey = Union[ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey]
PublicKey = Union[ec.EllipticCurvePublicKey, rsa.RSAPublicKey]

DEFAULT_KEY_TYPE = "ec-p256"
KEY_TYPES = ("ec-p256", "ec-p384", "rsa-2048", "rsa-3072")

MIN_RSA_BITS = 2048
# Larger RSA keys add verification cost on every handshake and buy nothing at these lifetimes.
MAX_RSA_BITS = 8192
RSA_PUBLIC_EXPONENT = 65537

_CURVES: dict[str, type[ec.EllipticCurve]] = {"ec-p256": ec.SECP256R1, "ec-p384": ec.SECP384R1}
_CURVE_KEY_TYPES = {"secp256r1": "ec-p256", "secp384r1": "ec-p384"}


def generate_private_key(key_type: str = DEFAULT_KEY_TYPE) -> PrivateKey:
    """Generate a private key of `key_type`, one of `KEY_TYPES`."""
    if key_type in _CURVES:
        return ec.generate_private_key(_CURVES[key_type]())
    if key_type.startswith("rsa-") and key_type in KEY_TYPES:
        bits = int(key_type.removeprefix("rsa-"))
        return rsa.generate_private_key(public_exponent=RSA_PUBLIC_EXPONENT, key_size=bits)
    raise UnsupportedKeyError(
        f"unknown key type {key_type!r}; use one of {', '.join(KEY_TYPES)}",
        key_type=key_type,
        reason="unknown-key-type",
    )


def describe_public_key(key: object) -> str:
    """Return a short name for `key` such as `ec-p256`, `rsa-1024` or `ec-secp521r1`."""
    if isinstance(key, rsa.RSAPublicKey):
        return f"rsa-{key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return _CURVE_KEY_TYPES.get(key.curve.name, f"ec-{key.curve.name}")
    return type(key).__name__


def check_public_key(key: object) -> str:
    """Raise `UnsupportedKeyError` unless `key` is an accepted public key; return its short name.

    The error's `reason` is `weak-key` for RSA below 2048 bits, `unsupported-curve` for curves
    other than P-256 and P-384, and `unsupported-key-type` for anything that is neither EC nor RSA.
    """
    name = describe_public_key(key)
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise UnsupportedKeyError(
                f"RSA key of {key.key_size} bits is too weak; use at least {MIN_RSA_BITS} bits",
                key_type=name,
                reason="weak-key",
            )
        if key.key_size > MAX_RSA_BITS:
            raise UnsupportedKeyError(
                f"RSA key of {key.key_size} bits is larger than the maximum of {MAX_RSA_BITS} bits",
                key_type=name,
                reason="unsupported-key-size",
            )
        return name
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in _CURVE_KEY_TYPES:
            raise UnsupportedKeyError(
                f"elliptic curve {key.curve.name} is not supported; use P-256 (secp256r1) or P-384 (secp384r1)",
                key_type=name,
                reason="unsupported-curve",
            )
        return name
    raise UnsupportedKeyError(
        f"{name} keys are not supported; use ECDSA P-256, ECDSA P-384 or RSA of at least {MIN_RSA_BITS} bits",
        key_type=name,
        reason="unsupported-key-type",
    )


def signature_hash(signing_key: PrivateKey) -> hashes.HashAlgorithm:
    """Return the digest to sign with: SHA-384 for a P-384 key, SHA-256 otherwise."""
    if isinstance(signing_key, ec.EllipticCurvePrivateKey) and signing_key.curve.name == "secp384r1":
        return hashes.SHA384()
    return hashes.SHA256()


def private_key_to_pem(key: PrivateKey) -> bytes:
    """Serialize `key` as unencrypted PKCS#8 PEM; the caller must store it with mode 0600."""
    return key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )


def public_key_der(key: PublicKey) -> bytes:
    """Return the DER SubjectPublicKeyInfo of `key`, for comparing two keys."""
    return key.public_bytes(
        encoding=serialization.Encoding.DER,
        format=serialization.PublicFormat.SubjectPublicKeyInfo,
    )
