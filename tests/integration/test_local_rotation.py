"""Certificates rotate under traffic without a failed request or an Envoy restart."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest

from controlplane.local.client import http_call
from controlplane.translate.resources import AGENT_HEALTH_PORT, OUTBOUND_CAPTURE_PORT
from tests.integration.local_mesh import REPO, running_mesh, served_certificate_serial

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

ROTATION = REPO / "tests" / "data" / "scenarios" / "rotation"
TTL_SECONDS = 120
# Renewal happens at half the lifetime, with up to 10% jitter: two renewals take at most
# about 132 s after the first certificate, which leaves margin for a loaded machine.
TRAFFIC_SECONDS = 150


async def envoy_processes(session: aiohttp.ClientSession, addresses: list[str]) -> list[tuple[int, int]]:
    """Each agent's Envoy PID and restart count, from the agent's health document."""
    found = []
    for address in addresses:
        async with session.get(f"http://{address}:{AGENT_HEALTH_PORT}/healthz/ready") as response:
            envoy = (await response.json())["envoy"]
        found.append((envoy["pid"], envoy["restarts"]))
    return found


async def test_two_renewals_under_traffic_fail_no_request(tmp_path: Path) -> None:
    async with running_mesh(ROTATION, tmp_path / "run", cert_ttl_seconds=TTL_SECONDS) as mesh:
        worker = mesh.plan.find("payments/worker")
        ledger = mesh.plan.find("payments/ledger")
        results: list[int | str] = []
        serials: list[str] = []
        started = time.monotonic()
        async with aiohttp.ClientSession() as session:
            envoys_before = await envoy_processes(session, [worker.address, ledger.address])
            for _ in range(TRAFFIC_SECONDS * 20):
                if time.monotonic() - started > TRAFFIC_SECONDS:
                    break
                outcome = await http_call(
                    worker.address, OUTBOUND_CAPTURE_PORT, method="POST", path="/v1/settlements",
                    authority="ledger:8080", timeout=5,
                )
                results.append(outcome.result)
                if len(results) % 20 == 0:
                    serial = await served_certificate_serial(session, ledger.address)
                    if serial and (not serials or serials[-1] != serial):
                        serials.append(serial)
                await asyncio.sleep(0.05)
            envoys_after = await envoy_processes(session, [worker.address, ledger.address])

        failed = [r for r in results if r != 200]
        print(f"{len(results)} requests over {TRAFFIC_SECONDS}s, {len(failed)} failed, ledger serials {serials}")
        assert failed == []
        assert len(serials) >= 3, "the ledger's certificate was not renewed twice"
        assert envoys_after == envoys_before, "an Envoy was restarted during rotation"
