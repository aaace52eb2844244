"""Creating a CA directory, loading it back, and loading an admin's plug-in CA with clear errors."""

from __future__ import annotations

import os
import stat
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from controlplane.errors import CAError
from controlplane.identity.ca import CertificateAuthority
from controlplane.identity.spiffe_id import SpiffeId

NOW = datetime(2026, 6, 1, 12, 0, 0, tzinfo=timezone.utc)
LEDGER = SpiffeId.parse("spiffe://example.org/ns/payments/sa/ledger")
KEY_FILES = ("root-key.pem", "ca-key.pem", "join-token.key")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- create ---------------------------------------------------------------------------------


def test_create_writes_root_files_and_settings(tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"

    CertificateAuthority.create(ca_dir, trust_domain="example.org", now=NOW)

    assert sorted(p.name for p in ca_dir.iterdir()) == ["ca.yaml", "join-token.key", "root-cert.pem", "root-key.pem"]
    assert yaml.safe_load((ca_dir / "ca.yaml").read_text()) == {
        "trust_domain": "example.org",
        "default_ttl_seconds": 86400,
        "max_ttl_seconds": 604800,
    }


@pytest.mark.parametrize("intermediate", [False, True], ids=["root-only", "with-intermediate"])
def test_key_files_are_mode_0600(tmp_path: Path, intermediate: bool) -> None:
    ca_dir = tmp_path / "ca"
    previous = os.umask(0o000)
    try:
        CertificateAuthority.create(ca_dir, trust_domain="example.org", intermediate=intermediate, now=NOW)
    finally:
        os.umask(previous)

    keys = [ca_dir / name for name in KEY_FILES if (ca_dir / name).exists()]
    assert len(keys) == (3 if intermediate else 2)
    for key in keys:
        assert mode(key) == 0o600, key.name
    assert mode(ca_dir / "root-cert.pem") == 0o644
    assert not [p for p in ca_dir.iterdir() if p.name.endswith(".tmp")]


def test_create_with_intermediate_chains_to_root(tmp_path: Path) -> None:
    ca = CertificateAuthority.create(tmp_path / "ca", trust_domain="example.org", intermediate=True, now=NOW)

    root = ca.roots[0]
    signing = ca.signing_certificate
    signing.verify_directly_issued_by(root)
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 1
    assert signing.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0
    chain = x509.load_pem_x509_certificates((tmp_path / "ca" / "cert-chain.pem").read_bytes())
    assert chain == [signing, root]


def test_root_is_svid_signing_certificate_for_trust_domain(tmp_path: Path) -> None:
    ca = CertificateAuthority.create(tmp_path / "ca", trust_domain="example.org", now=NOW)

    root = ca.roots[0]
    usage = root.extensions.get_extension_for_class(x509.KeyUsage)
    san = root.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert usage.critical
    assert usage.value.key_cert_sign
    assert not usage.value.digital_signature
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://example.org"]
    assert root.not_valid_before_utc == NOW - timedelta(seconds=60)
    assert root.not_valid_after_utc == NOW + timedelta(days=3650)


def test_create_refuses_to_overwrite_existing_ca(tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    CertificateAuthority.create(ca_dir, trust_domain="example.org", now=NOW)
    before = {p.name: p.read_bytes() for p in ca_dir.iterdir()}

    with pytest.raises(CAError, match="already contains a CA .*refusing to overwrite it"):
        CertificateAuthority.create(ca_dir, trust_domain="example.org", now=NOW)

    assert {p.name: p.read_bytes() for p in ca_dir.iterdir()} == before


def test_create_refuses_directory_with_stray_key(tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    ca_dir.mkdir()
    (ca_dir / "ca-key.pem").write_text("left over")

    with pytest.raises(CAError, match=r"already contains a CA \(ca-key.pem\)"):
        CertificateAuthority.create(ca_dir, trust_domain="example.org", now=NOW)


# --- load what create wrote -----------------------------------------------------------------


@pytest.mark.parametrize("intermediate", [False, True], ids=["root-only", "with-intermediate"])
def test_load_returns_created_ca(tmp_path: Path, intermediate: bool) -> None:
    ca_dir = tmp_path / "ca"
    created = CertificateAuthority.create(
        ca_dir, trust_domain="example.org", intermediate=intermediate, max_ttl=timedelta(days=3), now=NOW
    )

    loaded = CertificateAuthority.load(ca_dir, now=NOW)
    issued, _key = loaded.issue(LEDGER, ttl=None, now=NOW)

    assert loaded.trust_domain == "example.org"
    assert loaded.signing_certificate == created.signing_certificate
    assert loaded.roots == created.roots
    assert loaded.max_ttl == timedelta(days=3)
    assert loaded.default_ttl == timedelta(hours=24)
    chain = [x509.load_pem_x509_certificate(pem.encode()) for pem in issued.cert_chain_pem]
    assert loaded.trust_bundle().verify_chain(chain, NOW) == LEDGER


def test_load_without_ca_yaml_says_what_to_write(tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    CertificateAuthority.create(ca_dir, trust_domain="example.org", now=NOW)
    (ca_dir / "ca.yaml").unlink()

    with pytest.raises(CAError, match=r"ca.yaml is missing; write it with at least `trust_domain: <name>`"):
        CertificateAuthority.load(ca_dir)


def test_load_rejects_invalid_trust_domain_in_settings(tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    CertificateAuthority.create(ca_dir, trust_domain="example.org", now=NOW)
    (ca_dir / "ca.yaml").write_text("trust_domain: Example.org\n")

    with pytest.raises(CAError, match=r"trust_domain 'Example.org' is invalid"):
        CertificateAuthority.load(ca_dir)


def test_load_rejects_non_positive_ttl_setting(tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    CertificateAuthority.create(ca_dir, trust_domain="example.org", now=NOW)
    (ca_dir / "ca.yaml").write_text("trust_domain: example.org\nmax_ttl_seconds: 0\n")

    with pytest.raises(CAError, match=r"max_ttl_seconds must be a positive integer, not 0"):
        CertificateAuthority.load(ca_dir)


def test_load_rejects_expired_signing_certificate(tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    CertificateAuthority.create(ca_dir, trust_domain="example.org", root_ttl=timedelta(days=1), now=NOW)

    with pytest.raises(CAError, match="the CA signing certificate expired at"):
        CertificateAuthority.load(ca_dir, now=NOW + timedelta(days=2))


# --- plug-in CA -----------------------------------------------------------------------------


def ca_certificate(key, *, subject: str, issuer: x509.Certificate | None, issuer_key, ca: bool = True) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Corp"), x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not ca, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
    )
    return builder.sign(issuer_key or key, hashes.SHA256())


def pem(*certificates: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)


def key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


@pytest.fixture
def plugin_dir(tmp_path: Path) -> Path:
    """An admin's CA directory: Corp root -> mesh intermediate, written by hand."""
    root_key = ec.generate_private_key(ec.SECP384R1())
    root = ca_certificate(root_key, subject="Corp Root", issuer=None, issuer_key=None)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = ca_certificate(ca_key, subject="Mesh CA", issuer=root, issuer_key=root_key)
    ca_dir = tmp_path / "plugin"
    ca_dir.mkdir()
    (ca_dir / "ca.yaml").write_text("trust_domain: corp.example\n")
    (ca_dir / "root-cert.pem").write_bytes(pem(root))
    (ca_dir / "ca-cert.pem").write_bytes(pem(ca_cert))
    (ca_dir / "cert-chain.pem").write_bytes(pem(ca_cert, root))
    (ca_dir / "ca-key.pem").write_bytes(key_pem(ca_key))
    os.chmod(ca_dir / "ca-key.pem", 0o600)
    return ca_dir


def test_plugin_ca_loads_and_signs(plugin_dir: Path) -> None:
    ca = CertificateAuthority.load(plugin_dir, now=NOW)
    workload = SpiffeId.parse("spiffe://corp.example/ns/shop/sa/web")

    issued, _key = ca.issue(workload, ttl=None, now=NOW)

    chain = [x509.load_pem_x509_certificate(p.encode()) for p in issued.cert_chain_pem]
    assert ca.trust_domain == "corp.example"
    assert len(chain) == 2
    assert ca.trust_bundle().verify_chain(chain, NOW) == workload


def test_plugin_chain_may_leave_out_root(plugin_dir: Path) -> None:
    ca_cert = x509.load_pem_x509_certificate((plugin_dir / "ca-cert.pem").read_bytes())
    (plugin_dir / "cert-chain.pem").write_bytes(pem(ca_cert))

    ca = CertificateAuthority.load(plugin_dir)

    assert len(ca.trust_bundle().roots) == 1
    assert ca.signing_certificate == ca_cert


def test_plugin_with_wrong_key_for_cert_is_rejected(plugin_dir: Path) -> None:
    (plugin_dir / "ca-key.pem").unlink()
    (plugin_dir / "ca-key.pem").write_bytes(key_pem(ec.generate_private_key(ec.SECP256R1())))
    os.chmod(plugin_dir / "ca-key.pem", 0o600)

    with pytest.raises(CAError, match="does not match the public key of the signing certificate CN=Mesh CA,O=Corp"):
        CertificateAuthority.load(plugin_dir)


def test_plugin_with_broken_chain_is_rejected(plugin_dir: Path) -> None:
    # An intermediate with the same names but signed by a different root.
    stranger_key = ec.generate_private_key(ec.SECP384R1())
    stranger_root = ca_certificate(stranger_key, subject="Corp Root", issuer=None, issuer_key=None)
    (plugin_dir / "root-cert.pem").write_bytes(pem(stranger_root))
    ca_cert = x509.load_pem_x509_certificate((plugin_dir / "ca-cert.pem").read_bytes())
    (plugin_dir / "cert-chain.pem").write_bytes(pem(ca_cert))

    with pytest.raises(CAError, match=r"broken certificate chain in .*: CN=Mesh CA,O=Corp \(serial [0-9a-f]+\) is not signed by CN=Corp Root,O=Corp"):
        CertificateAuthority.load(plugin_dir)


def test_plugin_chain_not_reaching_root_is_rejected(plugin_dir: Path) -> None:
    other_key = ec.generate_private_key(ec.SECP256R1())
    other_root = ca_certificate(other_key, subject="Other Root", issuer=None, issuer_key=None)
    (plugin_dir / "root-cert.pem").write_bytes(pem(other_root))
    ca_cert = x509.load_pem_x509_certificate((plugin_dir / "ca-cert.pem").read_bytes())
    (plugin_dir / "cert-chain.pem").write_bytes(pem(ca_cert))

    with pytest.raises(CAError, match="no certificate in root-cert.pem issued CN=Mesh CA,O=Corp"):
        CertificateAuthority.load(plugin_dir)


def test_plugin_chain_must_start_with_signing_certificate(plugin_dir: Path) -> None:
    root = x509.load_pem_x509_certificate((plugin_dir / "root-cert.pem").read_bytes())
    (plugin_dir / "cert-chain.pem").write_bytes(pem(root))

    with pytest.raises(CAError, match="cert-chain.pem in .* must start with the signing certificate"):
        CertificateAuthority.load(plugin_dir)


def test_plugin_non_ca_signing_cert_rejected(plugin_dir: Path) -> None:
    root_key = ec.generate_private_key(ec.SECP384R1())
    root = ca_certificate(root_key, subject="Corp Root", issuer=None, issuer_key=None)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = ca_certificate(leaf_key, subject="Not A CA", issuer=root, issuer_key=root_key, ca=False)
    (plugin_dir / "root-cert.pem").write_bytes(pem(root))
    (plugin_dir / "ca-cert.pem").write_bytes(pem(leaf))
    (plugin_dir / "cert-chain.pem").write_bytes(pem(leaf, root))
    (plugin_dir / "ca-key.pem").unlink()
    (plugin_dir / "ca-key.pem").write_bytes(key_pem(leaf_key))
    os.chmod(plugin_dir / "ca-key.pem", 0o600)

    with pytest.raises(CAError, match="the signing certificate CN=Not A CA,O=Corp .* is not a CA certificate"):
        CertificateAuthority.load(plugin_dir)


@pytest.mark.parametrize("file_mode", [0o644, 0o640, 0o604], ids=["world-readable", "group-readable", "other-readable"])
def test_plugin_key_readable_by_others_is_rejected(plugin_dir: Path, file_mode: int) -> None:
    key = plugin_dir / "ca-key.pem"
    os.chmod(key, file_mode)

    with pytest.raises(CAError) as caught:
        CertificateAuthority.load(plugin_dir)

    assert str(caught.value) == (
        f"{key} has mode {file_mode:04o}, so group or other users can access the key; run `chmod 600 {key}`"
    )


def test_plugin_missing_key_is_reported(plugin_dir: Path) -> None:
    (plugin_dir / "ca-key.pem").unlink()

    with pytest.raises(CAError, match=r"ca-key.pem is missing"):
        CertificateAuthority.load(plugin_dir)
