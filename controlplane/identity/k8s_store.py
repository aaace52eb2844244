"""CA material kept in a Kubernetes Secret, so every control plane replica signs with the same CA.

The Secret (`idmesh-ca` in the root namespace by default) has one data key per file of a CA
directory (see `controlplane.identity.ca`): `ca.yaml`, `root-cert.pem`, `root-key.pem`,
`ca-cert.pem`, `ca-key.pem`, `cert-chain.pem` and `join-token.key`. An admin can plug in an
existing PKI by creating the Secret with `ca.yaml`, `ca-cert.pem`, `ca-key.pem`,
`cert-chain.pem` and `root-cert.pem`, exactly as for a CA directory.

Loading writes the data keys to a private temporary directory (mode 0700, key files 0600) and
runs `CertificateAuthority.load` on it, so a Secret passes the same checks as a directory. The
directory stays while the CA is in use, because the join token key is read from it, and
`LoadedCA.close()` removes it.

Only the leader creates the CA. It generates the material locally and creates the Secret. If
another replica created it first, the API server rejects the create with 409 AlreadyExists,
and the leader discards its own material and loads the stored one, so racing replicas end
with one CA.
Key material is never logged: logs name the Secret and the root's serial number.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from kubernetes.client import ApiClient, CoreV1Api

from controlplane.identity.svid import format_serial
from controlplane.errors import CAError, KubernetesApiError
from controlplane.identity.ca import CA_FILES, CA_KEY, ROOT_KEY, CertificateAuthority
from controlplane.identity.join_token import JOIN_TOKEN_KEY
from controlplane.identity.keys import DEFAULT_KEY_TYPE
from controlplane.identity.pemfiles import PUBLIC_FILE_MODE, write_file, write_secret_file
from controlplane.kube.rest import DEFAULT_TIMEOUT, Timeout, call_json
from controlplane.log import get_logger

CA_SECRET_NAME = "idmesh-ca"
SECRET_FILES = frozenset({ROOT_KEY, CA_KEY, JOIN_TOKEN_KEY})
MANAGED_BY_LABEL = {"app.kubernetes.io/managed-by": "idmesh"}

log = get_logger("ca")


@dataclass
class LoadedCA:
    """A CA loaded from the Secret, and the private directory its files were written to."""

    ca: CertificateAuthority
    directory: Path
    # Whether this replica created the Secret, rather than loading one that existed.
    created: bool

    def close(self) -> None:
        """Remove the private directory with the key files."""
        shutil.rmtree(self.directory, ignore_errors=True)


def _private_directory() -> Path:
    # mkdtemp creates the directory with mode 0700.
    return Path(tempfile.mkdtemp(prefix="idmesh-ca-"))


def materialize(files: dict[str, bytes], directory: Path) -> None:
    """Write CA files into `directory`: keys with mode 0600, the rest 0644. Only names in `CA_FILES` are accepted."""
    for name, data in files.items():
        if name not in CA_FILES:
            raise CAError(f"{name!r} is not a CA file; expected one of {', '.join(CA_FILES)}", file=name)
        if name in SECRET_FILES:
            write_secret_file(directory / name, data)
        else:
            write_file(directory / name, data, mode=PUBLIC_FILE_MODE)


def read_directory(directory: Path) -> dict[str, bytes]:
    """Return the contents of every CA file present in `directory`, by file name."""
    return {name: (directory / name).read_bytes() for name in CA_FILES if (directory / name).is_file()}


class SecretCAStore:
    """Loads and creates the mesh CA in one Secret."""

    def __init__(
        self,
        api_client: ApiClient,
        *,
        namespace: str,
        name: str = CA_SECRET_NAME,
        timeout: Timeout = DEFAULT_TIMEOUT,
    ) -> None:
        self._core = CoreV1Api(api_client)
        self.namespace = namespace
        self.name = name
        self._timeout = timeout

    @property
    def reference(self) -> str:
        return f"{self.namespace}/{self.name}"

    def read(self) -> dict[str, bytes] | None:
        """Return the CA files stored in the Secret, or None if it does not exist."""
        try:
            secret = call_json(self._core.read_namespaced_secret, self.name, self.namespace,
                               what=f"GET secrets {self.reference}", timeout=self._timeout)
        except KubernetesApiError as exc:
            if exc.status == 404:
                return None
            raise CAError(f"cannot read the CA Secret {self.reference}: {exc.message}", secret=self.reference) from exc
        return self._decode(secret.get("data") or {})

    def load(self, *, trust_domain: str, now: datetime) -> LoadedCA | None:
        """Load the CA from the Secret, or return None if the Secret does not exist."""
        files = self.read()
        if files is None:
            return None
        return self._load_files(files, trust_domain=trust_domain, now=now, created=False)

    def create(
        self,
        *,
        trust_domain: str,
        now: datetime,
        key_type: str = DEFAULT_KEY_TYPE,
        intermediate: bool = False,
    ) -> LoadedCA:
        """Create a new CA and store it, or load the stored one if another replica created it first."""
        directory = _private_directory()
        try:
            ca = CertificateAuthority.create(directory, trust_domain=trust_domain, key_type=key_type,
                                             intermediate=intermediate, now=now)
            created = self._create_secret(read_directory(directory))
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        if created:
            log.info("ca.secret.created", secret=self.reference, root_serial=format_serial(ca.roots[0].serial_number))
            return LoadedCA(ca=ca, directory=directory, created=True)

        shutil.rmtree(directory, ignore_errors=True)
        log.info("ca.secret.create_conflict", secret=self.reference,
                 detail="another replica created the CA first; loading it")
        files = self.read()
        if files is None:
            raise CAError(f"the CA Secret {self.reference} existed a moment ago but is gone now; restart to try again",
                          secret=self.reference)
        return self._load_files(files, trust_domain=trust_domain, now=now, created=False)

    def load_or_create(self, *, trust_domain: str, now: datetime, may_create: bool) -> LoadedCA:
        """Load the stored CA; create it only when `may_create` (this replica leads), else raise `CAError`."""
        loaded = self.load(trust_domain=trust_domain, now=now)
        if loaded is not None:
            return loaded
        if not may_create:
            raise CAError(f"the CA Secret {self.reference} does not exist yet; the leader creates it",
                          secret=self.reference, reason="secret-missing")
        return self.create(trust_domain=trust_domain, now=now)

    def _create_secret(self, files: dict[str, bytes]) -> bool:
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "Opaque",
            "metadata": {"name": self.name, "namespace": self.namespace, "labels": dict(MANAGED_BY_LABEL)},
            "data": {name: base64.b64encode(data).decode("ascii") for name, data in files.items()},
        }
        try:
            call_json(self._core.create_namespaced_secret, self.namespace, body,
                      what=f"POST secrets {self.reference}", timeout=self._timeout)
        except KubernetesApiError as exc:
            if exc.status == 409:
                return False
            raise CAError(f"cannot create the CA Secret {self.reference}: {exc.message}", secret=self.reference) from exc
        return True

    def _decode(self, data: dict[str, Any]) -> dict[str, bytes]:
        unknown = sorted(set(data) - set(CA_FILES))
        if unknown:
            log.warning("ca.secret.keys_ignored", secret=self.reference, keys=unknown)
        files = {}
        for name in CA_FILES:
            if name not in data:
                continue
            try:
                files[name] = base64.b64decode(data[name], validate=True)
            except (binascii.Error, TypeError, ValueError) as exc:
                raise CAError(f"data key {name!r} of the CA Secret {self.reference} is not valid base64",
                              secret=self.reference, file=name) from exc
        return files

    def _load_files(self, files: dict[str, bytes], *, trust_domain: str, now: datetime, created: bool) -> LoadedCA:
        directory = _private_directory()
        try:
            materialize(files, directory)
            ca = CertificateAuthority.load(directory, now=now)
        except CAError as exc:
            shutil.rmtree(directory, ignore_errors=True)
            # Paths in the message point into the removed directory; the Secret key name is what an admin can fix.
            raise CAError(f"the CA Secret {self.reference} is unusable: {exc.message}", secret=self.reference) from exc
        if ca.trust_domain != trust_domain:
            shutil.rmtree(directory, ignore_errors=True)
            raise CAError(
                f"the CA Secret {self.reference} is for trust domain {ca.trust_domain!r}, but the mesh uses "
                f"{trust_domain!r}; fix the trust domain setting or replace the Secret",
                secret=self.reference,
            )
        log.info("ca.secret.loaded", secret=self.reference, root_serial=format_serial(ca.roots[0].serial_number),
                 intermediate=ca.signing_certificate not in ca.roots)
        return LoadedCA(ca=ca, directory=directory, created=created)


async def obtain_ca(
    store: SecretCAStore,
    *,
    trust_domain: str,
    clock: Callable[[], datetime],
    is_leader: Callable[[], bool],
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    poll_seconds: float = 2.0,
) -> LoadedCA:
    """Load the CA from the Secret; the leader creates it, and other replicas wait until it exists."""
    waiting_logged = False
    while True:
        loaded = await asyncio.to_thread(store.load, trust_domain=trust_domain, now=clock())
        if loaded is not None:
            return loaded
        if is_leader():
            return await asyncio.to_thread(store.create, trust_domain=trust_domain, now=clock())
        if not waiting_logged:
            log.info("ca.secret.waiting", secret=store.reference, detail="the leader creates the CA Secret")
            waiting_logged = True
        await sleep(poll_seconds)
