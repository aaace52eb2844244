"""The mesh certificate authority: creates or loads CA material and signs X.509-SVIDs.

A CA directory contains:

| file | content |
| --- | --- |
| `ca.yaml` | `trust_domain` (required), `default_ttl_seconds` and `max_ttl_seconds` (optional) |
| `root-cert.pem` | the root certificate(s) that verify every SVID; two during a root rotation |
| `root-key.pem` | the root's private key, only when the root signs leaves itself |
| `ca-cert.pem`, `ca-key.pem` | the intermediate that signs leaves, when there is one |
| `cert-chain.pem` | `ca-cert.pem` first, then each issuer up to the root (the root may be left out) |
| `join-token.key` | the HMAC key for join tokens (see `join_token`) |

When `ca-cert.pem` exists the intermediate signs; otherwise the root does. An admin can plug in
an existing PKI by writing `ca.yaml`, `ca-cert.pem`, `ca-key.pem`, `cert-chain.pem` and
`root-cert.pem` themselves. Key files must be mode 0600 or stricter.

The identity written into a certificate always comes from the caller, which has attested the
workload. The CSR contributes its public key and nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import yaml
from cryptography import x509

from controlplane.errors import CAError, CSRRejected, SpiffeIdError, UnsupportedKeyError
from controlplane.identity import certificates, join_token
from controlplane.identity.svid import format_serial
from controlplane.identity.bundle import TrustBundle
from controlplane.identity.ca_chain import check_signing_chain, find_root_for_key
from controlplane.identity.csr import public_key_from_csr
from controlplane.identity.keys import DEFAULT_KEY_TYPE, PrivateKey, PublicKey, check_public_key, generate_private_key, private_key_to_pem
from controlplane.identity.pemfiles import (
    PUBLIC_FILE_MODE,
    certificate_to_pem,
    load_certificates,
    load_private_key,
    write_file,
    write_secret_file,
)
from controlplane.identity.spiffe_id import SpiffeId, validate_trust_domain
from controlplane.log import get_logger

CA_CONFIG = "ca.yaml"
ROOT_CERT = "root-cert.pem"
ROOT_KEY = "root-key.pem"
CA_CERT = "ca-cert.pem"
CA_KEY = "ca-key.pem"
CERT_CHAIN = "cert-chain.pem"
CA_FILES = (CA_CONFIG, ROOT_CERT, ROOT_KEY, CA_CERT, CA_KEY, CERT_CHAIN, join_token.JOIN_TOKEN_KEY)

DEFAULT_TTL = timedelta(hours=24)
MAX_TTL = timedelta(days=7)
DEFAULT_ROOT_TTL = timedelta(days=3650)
DEFAULT_INTERMEDIATE_TTL = timedelta(days=365)

log = get_logger("ca")


@dataclass(frozen=True)
class IssuedSvid:
    """A signed X.509-SVID: the leaf and the PEM chain to hand to the workload."""

    spiffe_id: SpiffeId
    serial: int
    not_before: datetime
    not_after: datetime
    certificate: x509.Certificate
    # The leaf first, then the intermediates; never the root, which comes from the trust bundle.
    cert_chain_pem: list[str] = field(default_factory=list)

    @property
    def leaf_pem(self) -> str:
        return self.cert_chain_pem[0]


class CertificateAuthority:
    """Signs X.509-SVIDs for one trust domain with a signing key and certificate chain."""

    def __init__(
        self,
        *,
        trust_domain: str,
        signing_key: PrivateKey,
        chain: tuple[x509.Certificate, ...],
        roots: tuple[x509.Certificate, ...],
        default_ttl: timedelta = DEFAULT_TTL,
        max_ttl: timedelta = MAX_TTL,
    ) -> None:
        """Wrap loaded CA material; `chain` is the signing certificate first, up to its root."""
        if not timedelta(0) < default_ttl <= max_ttl:
            raise CAError(
                f"default TTL {default_ttl} must be positive and at most the maximum TTL {max_ttl}",
                default_ttl=default_ttl,
                max_ttl=max_ttl,
            )
        self.trust_domain = trust_domain
        self.default_ttl = default_ttl
        self.max_ttl = max_ttl
        self._signing_key = signing_key
        self._chain = chain
        self._roots = roots
        # Intermediates sent with every leaf: the chain without its root.
        self._intermediates_pem = [certificate_to_pem(c) for c in chain if c not in roots]

    @property
    def signing_certificate(self) -> x509.Certificate:
        return self._chain[0]

    @property
    def roots(self) -> tuple[x509.Certificate, ...]:
        return self._roots

    def trust_bundle(self) -> TrustBundle:
        """Return the roots that verify this CA's certificates."""
        return TrustBundle(trust_domain=self.trust_domain, roots=self._roots)

    @classmethod
    def create(
        cls,
        ca_dir: Path,
        *,
        trust_domain: str,
        key_type: str = DEFAULT_KEY_TYPE,
        intermediate: bool = False,
        root_ttl: timedelta = DEFAULT_ROOT_TTL,
        intermediate_ttl: timedelta = DEFAULT_INTERMEDIATE_TTL,
        default_ttl: timedelta = DEFAULT_TTL,
        max_ttl: timedelta = MAX_TTL,
        now: datetime,
    ) -> CertificateAuthority:
        """Create a new root (and optionally an intermediate) in `ca_dir` and return the CA.

        Raise `CAError` if `ca_dir` already contains any CA file, so an existing CA is never replaced.
        """
        validate_trust_domain(trust_domain)
        if not timedelta(0) < default_ttl <= max_ttl:
            raise CAError(f"default TTL {default_ttl} must be positive and at most the maximum TTL {max_ttl}")
        ca_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        existing = [name for name in CA_FILES if (ca_dir / name).exists()]
        if existing:
            raise CAError(
                f"{ca_dir} already contains a CA ({', '.join(existing)}); refusing to overwrite it",
                path=str(ca_dir),
            )

        root_key = generate_private_key(key_type)
        root = certificates.build_root(
            key=root_key,
            trust_domain=trust_domain,
            ttl=root_ttl,
            now=now,
            path_length=1 if intermediate else 0,
        )
        signing_key, chain = root_key, (root,)
        if intermediate:
            signing_key = generate_private_key(key_type)
            ca_cert = certificates.build_intermediate(
                key=signing_key.public_key(),
                trust_domain=trust_domain,
                issuer=root,
                issuer_key=root_key,
                ttl=intermediate_ttl,
                now=now,
            )
            chain = (ca_cert, root)

        write_secret_file(ca_dir / ROOT_KEY, private_key_to_pem(root_key))
        write_file(ca_dir / ROOT_CERT, certificate_to_pem(root).encode(), mode=PUBLIC_FILE_MODE)
        if intermediate:
            write_secret_file(ca_dir / CA_KEY, private_key_to_pem(signing_key))
            write_file(ca_dir / CA_CERT, certificate_to_pem(chain[0]).encode(), mode=PUBLIC_FILE_MODE)
            chain_pem = "".join(certificate_to_pem(c) for c in chain)
            write_file(ca_dir / CERT_CHAIN, chain_pem.encode(), mode=PUBLIC_FILE_MODE)
        join_token.create_join_token_key(ca_dir)
        # ca.yaml goes last: a directory without it is an unfinished CA that load() rejects.
        settings = {
            "trust_domain": trust_domain,
            "default_ttl_seconds": int(default_ttl.total_seconds()),
            "max_ttl_seconds": int(max_ttl.total_seconds()),
        }
        write_file(ca_dir / CA_CONFIG, yaml.safe_dump(settings, sort_keys=False).encode(), mode=PUBLIC_FILE_MODE)
        log.info("ca.created", trust_domain=trust_domain, key_type=key_type, intermediate=intermediate,
                 root_serial=format_serial(root.serial_number))
        return cls(
            trust_domain=trust_domain,
            signing_key=signing_key,
            chain=chain,
            roots=(root,),
            default_ttl=default_ttl,
            max_ttl=max_ttl,
        )

    @classmethod
    def load(cls, ca_dir: Path, *, now: datetime | None = None) -> CertificateAuthority:
        """Load a CA written by `create` or plugged in by an admin; raise `CAError` naming the fault.

        With `now`, the signing certificate must also be valid at that time.
        """
        if not ca_dir.is_dir():
            raise CAError(f"CA directory {ca_dir} does not exist", path=str(ca_dir))
        trust_domain, default_ttl, max_ttl = _read_settings(ca_dir / CA_CONFIG)
        roots = tuple(load_certificates(ca_dir / ROOT_CERT))
        if (ca_dir / CA_CERT).exists():
            signing_cert = _single_certificate(ca_dir / CA_CERT)
            signing_key = load_private_key(ca_dir / CA_KEY)
            key_file = ca_dir / CA_KEY
            chain_file = load_certificates(ca_dir / CERT_CHAIN)
        else:
            signing_key = load_private_key(ca_dir / ROOT_KEY)
            key_file = ca_dir / ROOT_KEY
            signing_cert = find_root_for_key(roots, signing_key, key_file=key_file, cert_file=ca_dir / ROOT_CERT)
            chain_file = [signing_cert]
        try:
            check_public_key(signing_key.public_key())
        except UnsupportedKeyError as exc:
            raise CAError(f"{key_file}: {exc}", path=str(key_file)) from exc
        chain = check_signing_chain(
            signing_cert=signing_cert,
            signing_key=signing_key,
            chain=chain_file,
            roots=roots,
            ca_dir=ca_dir,
        )
        if now is not None:
            _check_signing_validity(signing_cert, now)
        return cls(
            trust_domain=trust_domain,
            signing_key=signing_key,
            chain=chain,
            roots=roots,
            default_ttl=default_ttl,
            max_ttl=max_ttl,
        )

    def sign_csr(
        self,
        csr_pem: bytes,
        *,
        identity: SpiffeId,
        ttl: timedelta | None,
        now: datetime,
    ) -> IssuedSvid:
        """Sign the key in `csr_pem` as an X.509-SVID for `identity`, the attested caller.

        `ttl` None means the default TTL; a larger one is capped at `max_ttl`. Raise
        `CSRRejected` with `reason` one of `malformed`, `bad-signature`, `weak-key`,
        `unsupported-curve`, `unsupported-key-type`, `unsupported-key-size`,
        `identity-mismatch`, `other-trust-domain`, `no-workload-path` or `invalid-ttl`.
        """
        try:
            self._check_identity(identity)
            lifetime = self._lifetime(ttl)
            public_key = public_key_from_csr(csr_pem, identity=identity)
        except CSRRejected as exc:
            log.warning("ca.csr.rejected", principal=str(identity), reason=exc.reason, detail=exc.message)
            raise
        issued = self._sign(public_key, identity=identity, ttl=lifetime, now=now)
        log.info("ca.csr.signed", principal=str(identity), serial=format_serial(issued.serial),
                 not_after=issued.not_after.isoformat())
        return issued

    def issue(
        self,
        identity: SpiffeId,
        *,
        ttl: timedelta | None,
        now: datetime,
        key_type: str = DEFAULT_KEY_TYPE,
        dns_names: Sequence[str] = (),
    ) -> tuple[IssuedSvid, bytes]:
        """Generate a key here and sign an SVID for it; return the SVID and the PKCS#8 key PEM.

        Only for the control plane's own serving certificate and for developer tooling: a
        workload generates its key itself and sends a CSR.
        """
        try:
            self._check_identity(identity)
            lifetime = self._lifetime(ttl)
        except CSRRejected as exc:
            raise CAError(f"cannot issue an SVID for {identity}: {exc.message}", reason=exc.reason) from exc
        key = generate_private_key(key_type)
        issued = self._sign(key.public_key(), identity=identity, ttl=lifetime, now=now, dns_names=dns_names)
        log.info("ca.svid.issued", principal=str(identity), serial=format_serial(issued.serial),
                 not_after=issued.not_after.isoformat())
        return issued, private_key_to_pem(key)

    def _check_identity(self, identity: SpiffeId) -> None:
        if not identity.member_of(self.trust_domain):
            raise CSRRejected(
                f"identity {identity} is outside trust domain {self.trust_domain!r}",
                reason="other-trust-domain",
                identity=str(identity),
            )
        if not identity.path:
            raise CSRRejected(
                f"identity {identity} has no path; a leaf SVID must name a workload",
                reason="no-workload-path",
                identity=str(identity),
            )

    def _lifetime(self, ttl: timedelta | None) -> timedelta:
        if ttl is None:
            return self.default_ttl
        if ttl <= timedelta(0):
            raise CSRRejected(
                f"requested TTL {ttl.total_seconds():g}s is not positive; omit it for the default "
                f"of {self.default_ttl.total_seconds():g}s",
                reason="invalid-ttl",
            )
        return min(ttl, self.max_ttl)

    def _sign(
        self,
        public_key: PublicKey,
        *,
        identity: SpiffeId,
        ttl: timedelta,
        now: datetime,
        dns_names: Sequence[str] = (),
    ) -> IssuedSvid:
        if now.tzinfo is None:
            raise TypeError("now must be a timezone-aware datetime, such as datetime.now(timezone.utc)")
        signing_cert = self.signing_certificate
        _check_signing_validity(signing_cert, now)
        leaf = certificates.build_leaf(
            key=public_key,
            identity=identity,
            issuer=signing_cert,
            issuer_key=self._signing_key,
            ttl=ttl,
            now=now,
            dns_names=dns_names,
        )
        return IssuedSvid(
            spiffe_id=identity,
            serial=leaf.serial_number,
            not_before=leaf.not_valid_before_utc,
            not_after=leaf.not_valid_after_utc,
            certificate=leaf,
            cert_chain_pem=[certificate_to_pem(leaf), *self._intermediates_pem],
        )


def _check_signing_validity(signing_cert: x509.Certificate, now: datetime) -> None:
    if now >= signing_cert.not_valid_after_utc:
        raise CAError(
            f"the CA signing certificate expired at {signing_cert.not_valid_after_utc.isoformat()}; "
            "rotate the CA before issuing",
            not_after=signing_cert.not_valid_after_utc,
        )
    if now < signing_cert.not_valid_before_utc:
        raise CAError(
            f"the CA signing certificate is not valid before {signing_cert.not_valid_before_utc.isoformat()}; "
            "check the system clock",
            not_before=signing_cert.not_valid_before_utc,
        )


def _single_certificate(path: Path) -> x509.Certificate:
    found = load_certificates(path)
    if len(found) != 1:
        raise CAError(f"{path} must hold exactly one certificate, found {len(found)}", path=str(path))
    return found[0]


def _read_settings(path: Path) -> tuple[str, timedelta, timedelta]:
    if not path.is_file():
        raise CAError(
            f"{path} is missing; write it with at least `trust_domain: <name>`", path=str(path)
        )
    try:
        settings = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise CAError(f"{path} is not valid YAML: {exc}", path=str(path)) from exc
    if not isinstance(settings, dict) or not isinstance(settings.get("trust_domain"), str):
        raise CAError(f"{path} must be a mapping with a string `trust_domain`", path=str(path))
    trust_domain = settings["trust_domain"]
    try:
        validate_trust_domain(trust_domain)
    except SpiffeIdError as exc:
        raise CAError(f"{path}: trust_domain {trust_domain!r} is invalid: {exc}", path=str(path)) from exc
    ttls = []
    for key, default in (("default_ttl_seconds", DEFAULT_TTL), ("max_ttl_seconds", MAX_TTL)):
        value = settings.get(key, int(default.total_seconds()))
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise CAError(f"{path}: {key} must be a positive integer, not {value!r}", path=str(path), field=key)
        ttls.append(timedelta(seconds=value))
    return trust_domain, ttls[0], ttls[1]
