"""Join tokens: one SPIFFE ID, one use, short-lived, and every failure names its reason."""

from __future__ import annotations

import base64
import json
import os
import stat
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from controlplane.errors import AttestationError, CAError, ConfigError
from controlplane.identity.join_token import JOIN_TOKEN_KEY, JoinTokenIssuer, load_join_token_key
from controlplane.identity.spiffe_id import SpiffeId

NOW = datetime(2026, 6, 1, 12, 0, 0, tzinfo=timezone.utc)
LEDGER = SpiffeId.parse("spiffe://example.org/ns/payments/sa/ledger")
KEY = bytes(range(32))


@pytest.fixture
def issuer() -> JoinTokenIssuer:
    return JoinTokenIssuer(KEY, trust_domain="example.org")


def redeem_error(issuer: JoinTokenIssuer, token: str, *, now: datetime = NOW) -> AttestationError:
    with pytest.raises(AttestationError) as caught:
        issuer.redeem(token, now=now)
    return caught.value


def test_valid_token_proves_its_spiffe_id(issuer: JoinTokenIssuer) -> None:
    token = issuer.mint(LEDGER, ttl=timedelta(minutes=10), now=NOW)

    assert issuer.redeem(token, now=NOW + timedelta(minutes=9)) == LEDGER


def test_token_is_single_use(issuer: JoinTokenIssuer) -> None:
    token = issuer.mint(LEDGER, now=NOW)
    issuer.redeem(token, now=NOW)

    error = redeem_error(issuer, token, now=NOW + timedelta(seconds=1))

    assert error.reason == "already-used"
    assert str(error) == "join token rejected: it was already used; a join token is valid once"


def test_two_tokens_for_same_id_are_independent(issuer: JoinTokenIssuer) -> None:
    first = issuer.mint(LEDGER, now=NOW)
    second = issuer.mint(LEDGER, now=NOW)

    assert first != second
    assert issuer.redeem(first, now=NOW) == LEDGER
    assert issuer.redeem(second, now=NOW) == LEDGER


def test_expired_token_is_rejected(issuer: JoinTokenIssuer) -> None:
    token = issuer.mint(LEDGER, ttl=timedelta(minutes=10), now=NOW)

    error = redeem_error(issuer, token, now=NOW + timedelta(minutes=10))

    assert error.reason == "expired"
    assert str(error) == "join token rejected: it expired at 2026-06-01T12:10:00+00:00; mint a new one"


def test_default_lifetime_is_ten_minutes(issuer: JoinTokenIssuer) -> None:
    token = issuer.mint(LEDGER, now=NOW)

    assert redeem_error(issuer, token, now=NOW + timedelta(minutes=10, seconds=1)).reason == "expired"
    assert issuer.redeem(token, now=NOW + timedelta(minutes=9, seconds=59)) == LEDGER


def test_token_signed_with_other_key_is_forged(issuer: JoinTokenIssuer) -> None:
    forger = JoinTokenIssuer(b"\xff" * 32, trust_domain="example.org")
    token = forger.mint(LEDGER, now=NOW)

    error = redeem_error(issuer, token)

    assert error.reason == "bad-signature"
    assert str(error) == (
        "join token rejected: the signature does not match; the token is forged or from another control plane"
    )


def test_token_with_edited_subject_is_forged(issuer: JoinTokenIssuer) -> None:
    prefix, payload, mac = issuer.mint(LEDGER, now=NOW).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = "spiffe://example.org/ns/kube-system/sa/admin"
    edited = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()

    assert redeem_error(issuer, f"{prefix}.{edited}.{mac}").reason == "bad-signature"


def test_token_for_other_trust_domain_is_rejected() -> None:
    other_domain = JoinTokenIssuer(KEY, trust_domain="other.org")
    token = other_domain.mint(SpiffeId.parse("spiffe://other.org/ns/payments/sa/ledger"), now=NOW)

    error = redeem_error(JoinTokenIssuer(KEY, trust_domain="example.org"), token)

    assert error.reason == "other-trust-domain"
    assert str(error) == (
        "join token rejected: it is for spiffe://other.org/ns/payments/sa/ledger, outside trust domain 'example.org'"
    )


@pytest.mark.parametrize(
    "token",
    ["", "not-a-token", "idmesh-jt1.abc", "idmesh-jt2.abc.def", "idmesh-jt1.a.b.c", "idmesh-jt1.abc.!!!", "x" * 5000],
    ids=["empty", "one-part", "two-parts", "wrong-prefix", "four-parts", "bad-base64", "too-long"],
)
def test_malformed_token_is_rejected(issuer: JoinTokenIssuer, token: str) -> None:
    error = redeem_error(issuer, token)

    assert error.reason == "malformed"


def test_malformed_token_reason_is_exact(issuer: JoinTokenIssuer) -> None:
    error = redeem_error(issuer, "not-a-token")

    assert error.reason == "malformed"
    assert str(error) == "join token rejected: it must have the form idmesh-jt1.<payload>.<signature>"


def test_mint_rejects_id_outside_trust_domain(issuer: JoinTokenIssuer) -> None:
    with pytest.raises(ConfigError, match="must be a workload ID in trust domain 'example.org'"):
        issuer.mint(SpiffeId.parse("spiffe://other.org/ns/a/sa/b"), now=NOW)


@pytest.mark.parametrize("ttl", [timedelta(0), timedelta(days=2)], ids=["zero", "two-days"])
def test_mint_rejects_ttl_out_of_range(issuer: JoinTokenIssuer, ttl: timedelta) -> None:
    with pytest.raises(ConfigError, match="join token TTL"):
        issuer.mint(LEDGER, ttl=ttl, now=NOW)


def test_short_key_is_rejected() -> None:
    with pytest.raises(ConfigError, match="at least 32 bytes"):
        JoinTokenIssuer(b"short", trust_domain="example.org")


def test_key_file_created_on_demand_with_mode_0600(tmp_path: Path) -> None:
    previous = os.umask(0o000)
    try:
        key = load_join_token_key(tmp_path)
    finally:
        os.umask(previous)

    assert len(key) == 32
    assert stat.S_IMODE((tmp_path / JOIN_TOKEN_KEY).stat().st_mode) == 0o600
    assert load_join_token_key(tmp_path) == key


def test_key_file_readable_by_others_is_rejected(tmp_path: Path) -> None:
    load_join_token_key(tmp_path)
    os.chmod(tmp_path / JOIN_TOKEN_KEY, 0o644)

    with pytest.raises(CAError, match="run `chmod 600"):
        load_join_token_key(tmp_path)


def test_used_ids_are_forgotten_after_expiry(issuer: JoinTokenIssuer) -> None:
    token = issuer.mint(LEDGER, ttl=timedelta(minutes=1), now=NOW)
    issuer.redeem(token, now=NOW)
    assert issuer.used_token_count == 1

    # Redeeming any token later purges expired entries; the old token stays expired, not reusable.
    issuer.redeem(issuer.mint(LEDGER, now=NOW + timedelta(minutes=5)), now=NOW + timedelta(minutes=5))

    assert issuer.used_token_count == 1
    assert redeem_error(issuer, token, now=NOW + timedelta(minutes=5)).reason == "expired"
