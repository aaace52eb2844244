"""Join tokens: short-lived, single-use credentials bound to one SPIFFE ID, for local mode and tests.

A token is `idmesh-jt1.<payload>.<mac>`, where `payload` is base64url JSON
`{"jti": <128-bit hex ID>, "sub": <SPIFFE ID>, "exp": <Unix seconds>}` and `mac` is the
base64url HMAC-SHA256 of `idmesh-jt1.<payload>` under a key kept in the CA directory
(`join-token.key`, mode 0600). Only the control plane has the key, so only it can mint tokens.

Known limit: used token IDs are remembered in memory until their expiry. A restarted control
plane forgets them, so a token used just before a restart can be redeemed once more within
its remaining lifetime (at most the 10 minute default). Several control plane replicas do not
share the set either; use ServiceAccount tokens where that matters.

Logs name the token ID and the SPIFFE ID, never the token itself.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import threading
from datetime import datetime, timedelta
from pathlib import Path

from controlplane.errors import AttestationError, ConfigError, SpiffeIdError
from controlplane.identity.pemfiles import read_secret_file, write_secret_file
from controlplane.identity.spiffe_id import SpiffeId
from controlplane.log import get_logger

JOIN_TOKEN_KEY = "join-token.key"
TOKEN_PREFIX = "idmesh-jt1"
KEY_BYTES = 32
DEFAULT_TTL = timedelta(minutes=10)
MAX_TTL = timedelta(hours=24)
# Longer input is rejected before any decoding; a real token is a few hundred bytes.
MAX_TOKEN_CHARS = 4096

log = get_logger("join_token")


def create_join_token_key(ca_dir: Path) -> bytes:
    """Create `join-token.key` in `ca_dir` with mode 0600 and return the key."""
    key = secrets.token_bytes(KEY_BYTES)
    write_secret_file(ca_dir / JOIN_TOKEN_KEY, key)
    return key


def load_join_token_key(ca_dir: Path, *, create: bool = True) -> bytes:
    """Return the join token key from `ca_dir`, creating it first if missing and `create` is set."""
    path = ca_dir / JOIN_TOKEN_KEY
    if create and not path.exists():
        return create_join_token_key(ca_dir)
    key = read_secret_file(path)
    if len(key) < KEY_BYTES:
        raise ConfigError(f"{path} contains {len(key)} bytes, but a join token key needs at least {KEY_BYTES}", path=str(path))
    return key


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    # validate=True rejects characters outside the alphabet instead of skipping them.
    return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)


def _rejected(message: str, reason: str, token_id: str | None = None, spiffe_id: str | None = None) -> AttestationError:
    log.warning("join_token.rejected", reason=reason, token_id=token_id, spiffe_id=spiffe_id)
    return AttestationError(f"join token rejected: {message}", reason=reason, token_id=token_id)


class JoinTokenIssuer:
    """Mints and redeems join tokens for one trust domain."""

    def __init__(self, key: bytes, *, trust_domain: str) -> None:
        if len(key) < KEY_BYTES:
            raise ConfigError(f"a join token key needs at least {KEY_BYTES} bytes, got {len(key)}")
        self._key = key
        self.trust_domain = trust_domain
        # Token ID -> expiry (Unix seconds) of every redeemed token that has not expired yet.
        self._used: dict[str, int] = {}
        self._lock = threading.Lock()

    @property
    def used_token_count(self) -> int:
        """Number of redeemed tokens remembered until they expire."""
        return len(self._used)

    def _mac(self, signed_part: str) -> bytes:
        return hmac.new(self._key, signed_part.encode("ascii"), hashlib.sha256).digest()

    def mint(self, spiffe_id: SpiffeId, *, ttl: timedelta = DEFAULT_TTL, now: datetime) -> str:
        """Return a token that proves `spiffe_id` once, until `now + ttl`."""
        if not timedelta(0) < ttl <= MAX_TTL:
            raise ConfigError(
                f"join token TTL {ttl.total_seconds():g}s must be positive and at most {MAX_TTL.total_seconds():g}s",
                ttl=ttl,
            )
        if not spiffe_id.member_of(self.trust_domain) or not spiffe_id.path:
            raise ConfigError(
                f"cannot mint a join token for {spiffe_id}: it must be a workload ID in trust domain {self.trust_domain!r}",
                spiffe_id=str(spiffe_id),
            )
        token_id = secrets.token_hex(16)
        claims = {"jti": token_id, "sub": str(spiffe_id), "exp": int((now + ttl).timestamp())}
        payload = _b64encode(json.dumps(claims, separators=(",", ":"), sort_keys=True).encode())
        signed_part = f"{TOKEN_PREFIX}.{payload}"
        log.info("join_token.minted", token_id=token_id, spiffe_id=str(spiffe_id), expires=claims["exp"])
        return f"{signed_part}.{_b64encode(self._mac(signed_part))}"

    def redeem(self, token: str, *, now: datetime) -> SpiffeId:
        """Return the SPIFFE ID `token` proves, and mark it used.

        Raise `AttestationError` whose `reason` is `malformed`, `bad-signature`, `expired`,
        `already-used` or `other-trust-domain`.
        """
        signed_part, mac = self._split(token)
        if not hmac.compare_digest(mac, self._mac(signed_part)):
            raise _rejected("the signature does not match; the token is forged or from another control plane",
                            "bad-signature")
        token_id, subject, expires = self._claims(signed_part)
        try:
            spiffe_id = SpiffeId.parse(subject)
        except SpiffeIdError as exc:
            raise _rejected(f"its subject is not a SPIFFE ID: {exc}", "malformed", token_id) from exc
        if not spiffe_id.member_of(self.trust_domain):
            raise _rejected(f"it is for {spiffe_id}, outside trust domain {self.trust_domain!r}",
                            "other-trust-domain", token_id, subject)
        now_seconds = int(now.timestamp())
        if now_seconds >= expires:
            expired_at = datetime.fromtimestamp(expires, tz=now.tzinfo).isoformat()
            raise _rejected(f"it expired at {expired_at}; mint a new one", "expired", token_id, subject)
        with self._lock:
            self._forget_expired(now_seconds)
            if token_id in self._used:
                raise _rejected("it was already used; a join token is valid once", "already-used", token_id, subject)
            self._used[token_id] = expires
        log.info("join_token.redeemed", token_id=token_id, spiffe_id=subject)
        return spiffe_id

    def _split(self, token: str) -> tuple[str, bytes]:
        if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS:
            raise _rejected("it is not a string of at most 4096 characters", "malformed")
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != TOKEN_PREFIX:
            raise _rejected(f"it must have the form {TOKEN_PREFIX}.<payload>.<signature>", "malformed")
        try:
            mac = _b64decode(parts[2])
        except (binascii.Error, ValueError) as exc:
            raise _rejected("its signature is not base64url", "malformed") from exc
        return f"{parts[0]}.{parts[1]}", mac

    def _claims(self, signed_part: str) -> tuple[str, str, int]:
        # Only reached with a valid MAC, so a failure here means a bug in mint(), not an attack.
        try:
            claims = json.loads(_b64decode(signed_part.split(".", 1)[1]))
            token_id, subject, expires = claims["jti"], claims["sub"], claims["exp"]
        except (binascii.Error, ValueError, KeyError, TypeError) as exc:
            raise _rejected("its payload is not the expected JSON", "malformed") from exc
        if not (isinstance(token_id, str) and isinstance(subject, str) and isinstance(expires, int)):
            raise _rejected("its payload has fields of the wrong type", "malformed", None)
        return token_id, subject, expires

    def _forget_expired(self, now_seconds: int) -> None:
        for token_id in [t for t, expires in self._used.items() if expires <= now_seconds]:
            del self._used[token_id]

