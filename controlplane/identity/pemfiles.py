"""Reading and writing the PEM and key files of a CA directory.

Secret files (private keys, the join token key) have mode 0600 from their first byte. The data
goes to a temporary file in the same directory, opened with `O_CREAT | O_EXCL` and mode 0600.
That file is flushed to disk and then hard-linked to its final name. A reader therefore sees
either no file or the whole file, and the key is never readable by others.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from controlplane.errors import CAError
from controlplane.identity.keys import PrivateKey

SECRET_FILE_MODE = 0o600
PUBLIC_FILE_MODE = 0o644


def write_file(path: Path, data: bytes, *, mode: int) -> None:
    """Write `data` to `path` atomically with `mode`; raise `CAError` if `path` already exists."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        # The umask may have cleared bits of `mode`; set it exactly.
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        # link() fails when the target exists, so an existing file is never replaced.
        os.link(temporary, path)
    except FileExistsError as exc:
        raise CAError(f"{path} already exists; refusing to overwrite it", path=str(path)) from exc
    finally:
        temporary.unlink(missing_ok=True)


def write_secret_file(path: Path, data: bytes) -> None:
    """Write a private key or other secret to `path` with mode 0600, atomically."""
    write_file(path, data, mode=SECRET_FILE_MODE)


def check_secret_file_mode(path: Path) -> None:
    """Raise `CAError` if the secret file `path` is readable or writable by group or others."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise CAError(
            f"{path} has mode {mode:04o}, so group or other users can access the key; "
            f"run `chmod 600 {path}`",
            path=str(path),
            mode=mode,
        )


def read_secret_file(path: Path) -> bytes:
    """Read a secret file after checking that only its owner can access it."""
    if not path.is_file():
        raise CAError(f"{path} is missing", path=str(path))
    check_secret_file_mode(path)
    return path.read_bytes()


def load_certificates(path: Path) -> list[x509.Certificate]:
    """Load every PEM certificate in `path`, in file order; raise `CAError` if there is none."""
    if not path.is_file():
        raise CAError(f"{path} is missing", path=str(path))
    try:
        certificates = x509.load_pem_x509_certificates(path.read_bytes())
    except ValueError as exc:
        raise CAError(f"{path} is not a PEM certificate file: {exc}", path=str(path)) from exc
    return certificates


def load_private_key(path: Path) -> PrivateKey:
    """Load an unencrypted PEM private key from `path` after checking its file mode."""
    data = read_secret_file(path)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        # The exception text never contains key material, only the parse failure.
        raise CAError(
            f"{path} is not an unencrypted PEM private key: {exc}", path=str(path)
        ) from exc
    return key  # type: ignore[return-value]


def certificate_to_pem(certificate: x509.Certificate) -> str:
    """Return `certificate` as a PEM string."""
    return certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")
