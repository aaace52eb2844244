"""Helpers for tests that run a whole local mesh: control plane, agents, real Envoys."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import random
import shutil
from pathlib import Path
from typing import AsyncIterator

import aiohttp

from controlplane.local.up import LocalMesh, UpOptions, start_mesh, stop_mesh
from controlplane.translate.resources import ENVOY_ADMIN_PORT

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "payments-ledger"
SEMANTICS = REPO / "tests" / "data" / "scenarios" / "semantics"


def random_subnet() -> str:
    """A /16 in 127.0.0.0/8 that parallel test runs are unlikely to share."""
    return f"127.{random.randint(40, 250)}.0.0/16"


def copy_folder(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


@contextlib.asynccontextmanager
async def running_mesh(folder: Path, run_dir: Path, **options) -> AsyncIterator[LocalMesh]:
    progress = io.StringIO()
    mesh = await start_mesh(
        UpOptions(folder=folder, run_dir=run_dir, subnet=random_subnet(), ready_timeout=120, **options),
        progress=progress,
    )
    try:
        yield mesh
    finally:
        await stop_mesh(mesh)


async def wait_for_access_log(mesh: LocalMesh, workload: str, *, count: int, timeout: float = 15.0) -> list[dict]:
    """Wait until the workload's Envoy has flushed at least `count` access log entries.

    Envoy writes access logs through a buffer that it flushes about once a second.
    """
    entries: list[dict] = []
    for _ in range(int(timeout / 0.1)):
        entries = access_log_entries(mesh, workload)
        if len(entries) >= count:
            break
        await asyncio.sleep(0.1)
    return entries


def access_log_entries(mesh: LocalMesh, workload: str) -> list[dict]:
    """JSON access log lines that the workload's Envoy wrote into its agent's log file."""
    log_file = mesh.processes.log_dir / f"{workload.replace('/', '_')}.log"
    entries = []
    for line in log_file.read_text(errors="replace").splitlines():
        if line.startswith("{") and '"response_code"' in line:
            with contextlib.suppress(ValueError):
                entries.append(json.loads(line))
    return entries


async def served_certificate_serial(session: aiohttp.ClientSession, address: str) -> str | None:
    """The serial of the workload certificate the Envoy at `address` holds, from its admin /certs."""
    async with session.get(f"http://{address}:{ENVOY_ADMIN_PORT}/certs", timeout=aiohttp.ClientTimeout(total=5)) as response:
        certs = await response.json(content_type=None)
    for entry in certs.get("certificates", []):
        for cert in entry.get("cert_chain", []):
            if any(san.get("uri", "").startswith("spiffe://") for san in cert.get("subject_alt_names", [])):
                return cert.get("serial_number")
    return None
