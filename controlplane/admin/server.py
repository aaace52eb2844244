"""The admin HTTP server: liveness, readiness, Prometheus metrics and JSON routes.

Other parts of the control plane register what they expose before the server starts:
`add_readiness_check` for anything that must be ready before traffic is sent here, and
`add_json_route` for debug endpoints that return a JSON document. The server itself stores no
mesh state.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import prometheus_client
from aiohttp import web

from controlplane.errors import ConfigError
from controlplane.log import get_logger

log = get_logger("admin")

# A readiness check returns True when ready, or a short reason (str) when not.
ReadinessCheck = Callable[[], "bool | str | Awaitable[bool | str]"]
# A JSON handler receives the request and returns a JSON-serialisable value.
JsonHandler = Callable[[web.Request], "Any | Awaitable[Any]"]


@dataclass(frozen=True, slots=True)
class CheckResult:
    name: str
    ready: bool
    reason: str = ""


async def _call(function: Callable[..., Any], *args: Any) -> Any:
    result = function(*args)
    if inspect.isawaitable(result):
        result = await result
    return result


class AdminServer:
    """Serve `/healthz`, `/readyz`, `/metrics` and registered JSON routes over plain HTTP."""

    def __init__(
        self,
        *,
        host: str = "0.0.0.0",
        port: int = 15014,
        registry: prometheus_client.CollectorRegistry = prometheus_client.REGISTRY,
    ) -> None:
        self._host = host
        self._requested_port = port
        self._registry = registry
        self._checks: dict[str, ReadinessCheck] = {}
        self._app = web.Application()
        self._runner: web.AppRunner | None = None
        self._app.router.add_get("/healthz", self._healthz)
        self._app.router.add_get("/readyz", self._readyz)
        self._app.router.add_get("/metrics", self._metrics)

    def add_readiness_check(self, name: str, check: ReadinessCheck) -> None:
        """Register `check` under `name`; `/readyz` is ready only when every check is."""
        if name in self._checks:
            raise ConfigError(f"readiness check {name!r} is already registered", name=name)
        self._checks[name] = check

    def add_json_route(self, path: str, handler: JsonHandler, *, method: str = "GET") -> None:
        """Serve the value `handler(request)` returns as JSON at `path` (aiohttp route syntax).

        Routes must be added before `start()`, because aiohttp freezes the router then. A handler
        may raise `aiohttp.web.HTTPException` subclasses (HTTPNotFound, ...) to return an error status.
        """

        async def respond(request: web.Request) -> web.Response:
            value = await _call(handler, request)
            return web.json_response(value, dumps=_dumps)

        self._app.router.add_route(method, path, respond)

    def add_route(self, method: str, path: str, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> None:
        """Register a plain aiohttp handler, for responses that are not JSON."""
        self._app.router.add_route(method, path, handler)

    async def readiness(self) -> list[CheckResult]:
        """Run every readiness check; a check that raises counts as not ready."""
        results = []
        for name, check in self._checks.items():
            try:
                outcome = await _call(check)
            except Exception as exc:  # noqa: BLE001 - a failing check must not break /readyz
                log.warning("admin.readiness.check_failed", check=name, error=repr(exc))
                results.append(CheckResult(name, False, f"check raised {type(exc).__name__}: {exc}"))
                continue
            if outcome is True:
                results.append(CheckResult(name, True))
            else:
                results.append(CheckResult(name, False, str(outcome) if outcome else "not ready"))
        return results

    async def start(self) -> None:
        self._runner = web.AppRunner(self._app, access_log=None)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, self._host, self._requested_port).start()
        except OSError as exc:
            await self._runner.cleanup()
            self._runner = None
            address = f"{self._host}:{self._requested_port}"
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise ConfigError(f"cannot listen on {address}: {reason}", address=address) from exc
        log.info("admin.server.started", address=self.address)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            log.info("admin.server.stopped")

    @property
    def port(self) -> int:
        """The bound port, which differs from the requested one when that was 0."""
        if self._runner is None or not self._runner.addresses:
            raise RuntimeError("the admin server is not started")
        return self._runner.addresses[0][1]

    @property
    def address(self) -> str:
        return f"{self._host}:{self.port}"

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, _request: web.Request) -> web.Response:
        results = await self.readiness()
        ready = all(result.ready for result in results)
        lines = ["ready" if ready else "not ready"]
        for result in results:
            if result.ready:
                lines.append(f"ok: {result.name}")
            else:
                lines.append(f"not ready: {result.name} ({result.reason})")
        body = "\n".join(lines) + "\n"
        return web.Response(text=body, status=200 if ready else 503)

    async def _metrics(self, _request: web.Request) -> web.Response:
        body = prometheus_client.generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST})


def _dumps(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str) + "\n"
