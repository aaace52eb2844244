"""Latency a request gains by crossing two sidecars (mTLS + RBAC), measured in one run.

Starts the payments-ledger example as a local mesh and sends the same allowed request
(`POST /v1/settlements` to the ledger) two ways, interleaved so that machine noise hits both
alike: directly to the ledger's demo app, and through the worker's sidecar, which opens mutual
TLS to the ledger's sidecar, where RBAC runs. Both clients keep their connections alive, so the
figure is per request, not per connection. Prints one line.

    python bench/mesh_latency.py [--requests 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from controlplane.local.up import UpOptions, start_mesh, stop_mesh  # noqa: E402
from controlplane.log import configure  # noqa: E402
from controlplane.translate.resources import OUTBOUND_CAPTURE_PORT  # noqa: E402


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def timed_post(session: aiohttp.ClientSession, url: str, host: str) -> float:
    started = time.perf_counter()
    async with session.post(url, headers={"Host": host}) as response:
        await response.read()
        if response.status != 200:
            raise RuntimeError(f"{url} returned {response.status}; the benchmark needs a request the policy allows")
    return time.perf_counter() - started


async def run(requests: int) -> str:
    with tempfile.TemporaryDirectory(prefix="idmesh-bench-") as run_dir:
        options = UpOptions(
            folder=REPO / "examples" / "payments-ledger",
            run_dir=Path(run_dir),
            subnet=f"127.{random.randint(40, 250)}.0.0/16",
            log_level="warning",
        )
        mesh = await start_mesh(options, progress=io.StringIO())
        try:
            worker = mesh.plan.find("payments/worker")
            ledger = mesh.plan.find("payments/ledger")
            direct_url = f"http://{ledger.app_address}:8080/v1/settlements"
            mesh_url = f"http://{worker.address}:{OUTBOUND_CAPTURE_PORT}/v1/settlements"
            direct: list[float] = []
            through: list[float] = []
            async with aiohttp.ClientSession() as direct_session, aiohttp.ClientSession() as mesh_session:
                for _ in range(50):  # warm up connections and Envoy's pools
                    await timed_post(direct_session, direct_url, "ledger:8080")
                    await timed_post(mesh_session, mesh_url, "ledger:8080")
                for _ in range(requests):
                    direct.append(await timed_post(direct_session, direct_url, "ledger:8080"))
                    through.append(await timed_post(mesh_session, mesh_url, "ledger:8080"))
        finally:
            await stop_mesh(mesh)

    def ms(value: float) -> str:
        return f"{value * 1000:.2f}ms"

    d50, d90 = percentile(direct, 0.5), percentile(direct, 0.9)
    m50, m90 = percentile(through, 0.5), percentile(through, 0.9)
    return (
        f"mesh_latency: direct p50 {ms(d50)} p90 {ms(d90)}; through two sidecars p50 {ms(m50)} p90 {ms(m90)}; "
        f"added p50 {ms(m50 - d50)} p90 {ms(m90 - d90)} (n={requests} each, mean direct "
        f"{ms(statistics.fmean(direct))}, mean mesh {ms(statistics.fmean(through))})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per path (default: %(default)s)")
    args = parser.parse_args()
    configure(level="warning")
    print(asyncio.run(run(args.requests)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
