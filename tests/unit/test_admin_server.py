"""The admin HTTP server on loopback: health, readiness checks, metrics and JSON routes."""

from __future__ import annotations

import aiohttp
import prometheus_client
import pytest
from aiohttp import web

from controlplane.admin import AdminServer
from controlplane.errors import ConfigError


@pytest.fixture
def registry() -> prometheus_client.CollectorRegistry:
    return prometheus_client.CollectorRegistry()


@pytest.fixture
async def admin(registry):
    server = AdminServer(host="127.0.0.1", port=0, registry=registry)
    yield server
    await server.stop()


async def fetch(server: AdminServer, path: str) -> tuple[int, str, str]:
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async with session.get(f"http://127.0.0.1:{server.port}{path}") as response:
            return response.status, response.headers["Content-Type"], await response.text()


async def test_healthz_answers_ok(admin):
    await admin.start()

    status, _, body = await fetch(admin, "/healthz")

    assert status == 200
    assert body == "ok\n"


async def test_readyz_with_no_checks_is_ready(admin):
    await admin.start()

    status, _, body = await fetch(admin, "/readyz")

    assert status == 200
    assert body == "ready\n"


async def test_readyz_is_not_ready_until_every_check_is(admin):
    state = {"ca": True, "xds": "waiting for the first full list"}
    admin.add_readiness_check("ca", lambda: state["ca"])

    async def xds_ready():
        return state["xds"]

    admin.add_readiness_check("xds", xds_ready)
    await admin.start()

    status, _, body = await fetch(admin, "/readyz")
    assert status == 503
    assert body == "not ready\nok: ca\nnot ready: xds (waiting for the first full list)\n"

    state["xds"] = True
    status, _, body = await fetch(admin, "/readyz")
    assert status == 200
    assert body == "ready\nok: ca\nok: xds\n"


async def test_readyz_counts_a_raising_check_as_not_ready(admin):
    def broken():
        raise OSError("disk gone")

    admin.add_readiness_check("broken", broken)
    await admin.start()

    status, _, body = await fetch(admin, "/readyz")

    assert status == 503
    assert body == "not ready\nnot ready: broken (check raised OSError: disk gone)\n"


def test_readiness_check_name_registered_twice_is_rejected(registry):
    server = AdminServer(host="127.0.0.1", port=0, registry=registry)
    server.add_readiness_check("ca", lambda: True)

    with pytest.raises(ConfigError, match="readiness check 'ca' is already registered"):
        server.add_readiness_check("ca", lambda: True)


async def test_metrics_serves_the_given_registry_in_prometheus_text(admin, registry):
    counter = prometheus_client.Counter("idmesh_test_events", "Events seen by the test.", registry=registry)
    counter.inc(3)
    await admin.start()

    status, content_type, body = await fetch(admin, "/metrics")

    assert status == 200
    assert content_type.startswith("text/plain")
    assert "idmesh_test_events_total 3.0" in body.splitlines()


async def test_json_route_returns_the_handler_value(admin):
    admin.add_json_route("/debug/things/{name}", lambda request: {"name": request.match_info["name"]})
    await admin.start()

    status, content_type, body = await fetch(admin, "/debug/things/ledger")

    assert status == 200
    assert content_type.startswith("application/json")
    assert body == '{\n  "name": "ledger"\n}\n'


async def test_json_route_handler_may_answer_not_found(admin):
    async def missing(_request):
        raise web.HTTPNotFound(text="no such proxy\n")

    admin.add_json_route("/debug/proxies/{id}", missing)
    await admin.start()

    status, _, body = await fetch(admin, "/debug/proxies/x")

    assert status == 404
    assert body == "no such proxy\n"
