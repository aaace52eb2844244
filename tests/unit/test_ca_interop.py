"""Issued SVIDs verify with the openssl CLI and parse with the independent `spiffe` package,
for every key type, with the root signing directly and through an intermediate."""

from __future__ import annotations

import shutil
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from spiffe import X509Svid

from controlplane.identity.ca import CertificateAuthority
from controlplane.identity.keys import KEY_TYPES
from controlplane.identity.spiffe_id import SpiffeId
from controlplane.identity.svid import validate_svid

LEDGER = SpiffeId.parse("spiffe://example.org/ns/payments/sa/ledger")
OPENSSL = shutil.which("openssl")


def openssl_verify(root: Path, leaf: Path, *, untrusted: Path | None, purpose: str) -> subprocess.CompletedProcess:
    command = [OPENSSL, "verify", "-purpose", purpose, "-CAfile", str(root)]
    if untrusted is not None:
        command += ["-untrusted", str(untrusted)]
    command.append(str(leaf))
    return subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)


@pytest.fixture(scope="module", params=KEY_TYPES)
def key_type(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.mark.skipif(OPENSSL is None, reason="the openssl CLI is not installed")
@pytest.mark.parametrize("intermediate", [False, True], ids=["root-signs", "intermediate-signs"])
def test_issued_svid_passes_openssl_verify(tmp_path: Path, key_type: str, intermediate: bool) -> None:
    now = datetime.now(timezone.utc)
    ca_dir = tmp_path / "ca"
    ca = CertificateAuthority.create(
        ca_dir, trust_domain="example.org", key_type=key_type, intermediate=intermediate, now=now
    )
    issued, _key = ca.issue(LEDGER, ttl=timedelta(hours=1), now=now, key_type=key_type)
    leaf = tmp_path / "leaf.pem"
    leaf.write_text(issued.leaf_pem)
    untrusted = None
    if intermediate:
        untrusted = tmp_path / "intermediates.pem"
        untrusted.write_text("".join(issued.cert_chain_pem[1:]))

    for purpose in ("sslserver", "sslclient"):
        result = openssl_verify(ca_dir / "root-cert.pem", leaf, untrusted=untrusted, purpose=purpose)
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.strip() == f"{leaf}: OK"


@pytest.mark.skipif(OPENSSL is None, reason="the openssl CLI is not installed")
def test_openssl_rejects_leaf_without_its_intermediate(tmp_path: Path) -> None:
    now = datetime.now(timezone.utc)
    ca = CertificateAuthority.create(tmp_path / "ca", trust_domain="example.org", intermediate=True, now=now)
    issued, _key = ca.issue(LEDGER, ttl=timedelta(hours=1), now=now)
    leaf = tmp_path / "leaf.pem"
    leaf.write_text(issued.leaf_pem)

    result = openssl_verify(tmp_path / "ca" / "root-cert.pem", leaf, untrusted=None, purpose="sslclient")

    assert result.returncode != 0
    assert "unable to get local issuer certificate" in result.stdout + result.stderr


@pytest.mark.parametrize("intermediate", [False, True], ids=["root-signs", "intermediate-signs"])
def test_issued_svid_parses_with_spiffe_package(tmp_path: Path, key_type: str, intermediate: bool) -> None:
    now = datetime.now(timezone.utc)
    ca = CertificateAuthority.create(
        tmp_path / "ca", trust_domain="example.org", key_type=key_type, intermediate=intermediate, now=now
    )
    issued, key_pem = ca.issue(LEDGER, ttl=timedelta(hours=1), now=now, key_type=key_type)

    svid = X509Svid.parse("".join(issued.cert_chain_pem).encode(), key_pem)

    assert str(svid.spiffe_id) == str(LEDGER)
    assert svid.leaf == issued.certificate
    assert len(svid.cert_chain) == (2 if intermediate else 1)


@pytest.mark.skipif(OPENSSL is None, reason="the openssl CLI is not installed")
def test_serving_svid_dns_names_match_openssl_hostname_check(tmp_path: Path) -> None:
    now = datetime.now(timezone.utc)
    ca = CertificateAuthority.create(tmp_path / "ca", trust_domain="example.org", now=now)
    identity = SpiffeId.parse("spiffe://example.org/ns/idmesh-system/sa/controlplane")
    issued, _key = ca.issue(identity, ttl=timedelta(hours=1), now=now, dns_names=["idmesh.idmesh-system.svc"])
    leaf = tmp_path / "leaf.pem"
    leaf.write_text(issued.leaf_pem)
    root = str(tmp_path / "ca" / "root-cert.pem")

    def verify_hostname(hostname: str) -> subprocess.CompletedProcess:
        command = [OPENSSL, "verify", "-verify_hostname", hostname, "-CAfile", root, str(leaf)]
        return subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)

    assert verify_hostname("idmesh.idmesh-system.svc").returncode == 0
    assert verify_hostname("other.idmesh-system.svc").returncode != 0
    assert str(validate_svid(issued.certificate, trust_domain="example.org")) == str(identity)
