"""`controlplane ca init`, `ca issue` and `token create`, run as a user runs them."""

from __future__ import annotations

import stat
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509

from controlplane.identity.join_token import JoinTokenIssuer, load_join_token_key
from controlplane.identity.spiffe_id import SpiffeId

CONTROLPLANE = str(Path(sys.executable).with_name("controlplane"))
LEDGER = "spiffe://example.org/ns/payments/sa/ledger"


def controlplane(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CONTROLPLANE, *args], capture_output=True, text=True, timeout=60, check=False)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def ca_dir(tmp_path) -> Path:
    directory = tmp_path / "ca"
    result = controlplane("ca", "init", "--ca-dir", str(directory), "--trust-domain", "example.org")
    assert result.returncode == 0, result.stderr
    return directory


def test_ca_init_writes_keys_with_mode_0600(ca_dir):
    assert mode(ca_dir) == 0o700
    assert mode(ca_dir / "root-key.pem") == 0o600
    assert mode(ca_dir / "join-token.key") == 0o600
    assert mode(ca_dir / "root-cert.pem") == 0o644
    assert (ca_dir / "ca.yaml").read_text().startswith("trust_domain: example.org\n")


def test_ca_init_with_intermediate_writes_signing_chain(tmp_path):
    directory = tmp_path / "ca"

    result = controlplane(
        "ca", "init", "--ca-dir", str(directory), "--trust-domain", "example.org",
        "--key-type", "ec-p384", "--intermediate",
    )

    assert result.returncode == 0, result.stderr
    assert mode(directory / "ca-key.pem") == 0o600
    assert (directory / "cert-chain.pem").is_file()
    assert "ec-p384 keys, leaves signed by an intermediate under the root" in result.stdout


def test_ca_init_refuses_existing_ca(ca_dir):
    before = (ca_dir / "root-cert.pem").read_bytes()

    result = controlplane("ca", "init", "--ca-dir", str(ca_dir))

    assert result.returncode == 1
    assert result.stderr.startswith(f"controlplane: error: {ca_dir} already contains a CA (")
    assert (ca_dir / "root-cert.pem").read_bytes() == before


def test_ca_init_invalid_trust_domain_is_usage_error(tmp_path):
    result = controlplane("ca", "init", "--ca-dir", str(tmp_path / "ca"), "--trust-domain", "Example.org")

    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "the trust domain contains 'E'; use lower-case letters, digits, '.', '-' and '_'" in result.stderr
    assert not (tmp_path / "ca").exists()


def test_ca_issue_writes_svid_openssl_verifies(ca_dir, tmp_path):
    out_dir = tmp_path / "out"

    result = controlplane("ca", "issue", "--ca-dir", str(ca_dir), "--spiffe-id", LEDGER, "--out-dir", str(out_dir), "--ttl", "2h30m")

    assert result.returncode == 0, result.stderr
    assert mode(out_dir / "svid.key") == 0o600
    assert mode(out_dir / "svid.pem") == 0o644
    assert mode(out_dir / "bundle.pem") == 0o644
    verify = subprocess.run(
        ["openssl", "verify", "-CAfile", str(out_dir / "bundle.pem"), str(out_dir / "svid.pem")],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    leaf = x509.load_pem_x509_certificate((out_dir / "svid.pem").read_bytes())
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [LEDGER]
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == timedelta(hours=2, minutes=31)


def test_ca_issue_key_matches_certificate(ca_dir, tmp_path):
    out_dir = tmp_path / "out"
    controlplane("ca", "issue", "--ca-dir", str(ca_dir), "--spiffe-id", LEDGER, "--out-dir", str(out_dir))

    key_modulus = subprocess.run(
        ["openssl", "pkey", "-in", str(out_dir / "svid.key"), "-pubout"], capture_output=True, text=True, timeout=30
    )
    cert_key = subprocess.run(
        ["openssl", "x509", "-in", str(out_dir / "svid.pem"), "-noout", "-pubkey"], capture_output=True, text=True, timeout=30
    )
    assert key_modulus.returncode == 0
    assert key_modulus.stdout == cert_key.stdout


@pytest.mark.parametrize(
    ("spiffe_id", "message"),
    [
        ("spiffe://example.org/ns/payments/sa/ledger/", "the path ends with '/'"),
        ("spiffe://example.org//ns/payments", "the path has an empty segment ('//')"),
        ("spiffe://example.org/ns/pay%6Dents/sa/x", "percent-encoding is not allowed in a SPIFFE ID"),
        ("spiffe://example.org:8443/x", "a port is not allowed in a SPIFFE ID"),
        ("https://example.org/x", "the ID must start with 'spiffe://'"),
    ],
)
def test_ca_issue_invalid_spiffe_id_names_rule(ca_dir, tmp_path, spiffe_id, message):
    result = controlplane("ca", "issue", "--ca-dir", str(ca_dir), "--spiffe-id", spiffe_id, "--out-dir", str(tmp_path / "out"))

    assert result.returncode == 2
    assert result.stderr == (
        f"controlplane ca issue: error: argument --spiffe-id: invalid SPIFFE ID {spiffe_id!r}: {message} "
        "(see 'controlplane ca issue --help')\n"
    )
    assert not (tmp_path / "out").exists()


def test_ca_issue_other_trust_domain_fails(ca_dir, tmp_path):
    result = controlplane(
        "ca", "issue", "--ca-dir", str(ca_dir), "--spiffe-id", "spiffe://other.org/ns/a/sa/b", "--out-dir", str(tmp_path / "out")
    )

    assert result.returncode == 1
    assert result.stderr == (
        "controlplane: error: cannot issue an SVID for spiffe://other.org/ns/a/sa/b: "
        "identity spiffe://other.org/ns/a/sa/b is outside trust domain 'example.org'\n"
    )


def test_ca_issue_missing_ca_dir_fails(tmp_path):
    result = controlplane("ca", "issue", "--ca-dir", str(tmp_path / "none"), "--spiffe-id", LEDGER, "--out-dir", str(tmp_path / "out"))

    assert result.returncode == 1
    assert result.stderr == f"controlplane: error: CA directory {tmp_path / 'none'} does not exist\n"


def test_token_create_prints_token_server_redeems(ca_dir):
    result = controlplane("token", "create", "--ca-dir", str(ca_dir), "--spiffe-id", LEDGER, "--ttl", "90s")

    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert result.stdout == token + "\n"
    assert token not in result.stderr
    issuer = JoinTokenIssuer(load_join_token_key(ca_dir, create=False), trust_domain="example.org")
    assert issuer.redeem(token, now=datetime.now(timezone.utc)) == SpiffeId.parse(LEDGER)


def test_token_create_without_read_access_fails(ca_dir):
    (ca_dir / "join-token.key").chmod(0o644)

    result = controlplane("token", "create", "--ca-dir", str(ca_dir), "--spiffe-id", LEDGER)

    assert result.returncode == 1
    assert result.stdout == ""
    assert "join-token.key has mode 0644" in result.stderr


@pytest.mark.parametrize(
    ("ttl", "message"),
    [
        ("10", "invalid duration '10': use whole numbers with units h, m and s, such as 90s, 10m, 1h or 2h30m"),
        ("1d", "invalid duration '1d': use whole numbers with units h, m and s, such as 90s, 10m, 1h or 2h30m"),
        ("30m1h", "invalid duration '30m1h': use whole numbers with units h, m and s, such as 90s, 10m, 1h or 2h30m"),
        ("0s", "invalid duration '0s': it must be longer than zero"),
    ],
)
def test_token_create_invalid_ttl_is_usage_error(ca_dir, ttl, message):
    result = controlplane("token", "create", "--ca-dir", str(ca_dir), "--spiffe-id", LEDGER, "--ttl", ttl)

    assert result.returncode == 2
    assert result.stderr == f"controlplane token create: error: argument --ttl: {message} (see 'controlplane token create --help')\n"


def test_token_create_ttl_over_maximum_fails(ca_dir):
    result = controlplane("token", "create", "--ca-dir", str(ca_dir), "--spiffe-id", LEDGER, "--ttl", "25h")

    assert result.returncode == 1
    assert result.stderr == "controlplane: error: join token TTL 90000s must be positive and at most 86400s\n"
