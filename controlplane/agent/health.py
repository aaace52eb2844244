"""The agent's health endpoint: `/healthz/ready` and a JSON status.

Ready means the agent holds an unexpired SVID and, unless it runs without Envoy, Envoy's admin
`/ready` answers 200 (Envoy prints LIVE once its initial configuration is loaded).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Awaitable, Callable

import aiohttp
from aiohttp import web

from controlplane.agent.errors import AgentError
from controlplane.log import get_logger

log = get_logger("agent.health")

StatusSource = Callable[[], Awaitable[dict]]


async def envoy_is_live(admin_address: str, *, timeout: float = 1.0) -> bool:
    """Return True when Envoy's admin `/ready` at `admin_address` (HOST:PORT) answers 200."""
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
            async with session.get(f"http://{admin_address}/ready") as response:
                return response.status == 200
    except (aiohttp.ClientError, TimeoutError, OSError):
        return False


def svid_status(svid, *, now: datetime | None = None) -> dict:
    """Return the public facts of an SVID (never the key) for the status document."""
    if svid is None:
        return {"held": False}
    now = now or datetime.now(timezone.utc)
    return {
        "held": svid.not_after > now,
        "spiffe_id": str(svid.spiffe_id),
        "serial": svid.serial,
        "not_before": svid.not_before.isoformat(),
        "not_after": svid.not_after.isoformat(),
    }


class HealthServer:
    """Serves `GET /healthz/ready` (200 or 503, JSON body) from a status callback."""

    def __init__(self, address: str, status: StatusSource) -> None:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise AgentError(f"health address {address!r} is not HOST:PORT", address=address)
        self.host = host.strip("[]")
        self.port = int(port)
        self._status = status
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz/ready", self._ready)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise AgentError(f"cannot listen on {self.host}:{self.port} for health: {exc}",
                             address=f"{self.host}:{self.port}") from exc
        self._runner = runner
        if self.port == 0:
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        log.info("agent.health.started", address=f"{self.host}:{self.port}")

    async def _ready(self, _request: web.Request) -> web.Response:
        status = await self._status()
        return web.json_response(status, status=200 if status.get("ready") else 503)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
