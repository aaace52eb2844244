"""`meshctl status` reports a NACK with Envoy's own message.

The control plane runs in-process with its translator wrapped so that one proxy is also sent a
listener whose address is not an IP address, which Envoy rejects and the real translator never
produces. A real mesh-agent starts a real Envoy for that proxy.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import socket
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from envoy.config.core.v3 import address_pb2
from envoy.config.listener.v3 import listener_pb2

from controlplane.identity.join_token import JoinTokenIssuer, load_join_token_key
from controlplane.identity.spiffe_id import SpiffeId
from controlplane.server import serve
from controlplane.server.serve import ServeOptions, build_control_plane, load_or_create_ca
from controlplane.translate.resources import LISTENER, ProxyConfig
from meshctl.cli import main

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

LEDGER = SpiffeId.parse("spiffe://example.org/ns/payments/sa/ledger")
BAD_ADDRESS = "not-an-ip"


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def with_bad_listener(translate):
    """Wrap `translate` so the ledger's proxy also gets a listener Envoy must reject."""

    def corrupted(state, proxy) -> ProxyConfig:
        config = translate(state, proxy)
        if proxy.workload != "ledger":
            return config
        bad = listener_pb2.Listener(
            name="bad-listener",
            address=address_pb2.Address(socket_address=address_pb2.SocketAddress(address=BAD_ADDRESS, port_value=1)),
        )
        listeners = {**config.resources.get(LISTENER, {}), bad.name: bad}
        return ProxyConfig(resources={**config.resources, LISTENER: listeners}, problems=config.problems)

    return corrupted


@pytest.fixture
async def control_plane(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(serve, "translate", with_bad_listener(serve.translate))
    ca_dir = tmp_path / "ca"
    ca, _ = load_or_create_ca(ca_dir, trust_domain="example.org", now=utc_now())
    plane = build_control_plane(
        ServeOptions(ca_dir=ca_dir, trust_domain="example.org", grpc_address="127.0.0.1:0",
                     bootstrap_address="127.0.0.1:0", admin_address="127.0.0.1:0"),
        ca, clock=utc_now,
    )
    await plane.start()
    try:
        yield plane, ca_dir
    finally:
        await plane.stop()


@pytest.fixture
async def ledger_agent(control_plane, tmp_path: Path):
    plane, ca_dir = control_plane
    token_file = tmp_path / "token"
    issuer = JoinTokenIssuer(load_join_token_key(ca_dir), trust_domain="example.org")
    token_file.write_text(issuer.mint(LEDGER, ttl=timedelta(minutes=5), now=utc_now()))
    env = dict(os.environ)
    env.update(IDMESH_NAMESPACE="payments", IDMESH_SERVICE_ACCOUNT="ledger", IDMESH_WORKLOAD="ledger",
               IDMESH_INSTANCE_IP="127.0.0.1", IDMESH_TRUST_DOMAIN="example.org")
    argv = [
        sys.executable, "-m", "controlplane.agent.cli",
        "--control-plane", f"127.0.0.1:{plane.grpc.mtls_port}",
        "--control-plane-bootstrap", f"127.0.0.1:{plane.grpc.bootstrap_port}",
        "--ca-root", str(ca_dir / "root-cert.pem"), "--token-file", str(token_file),
        "--mode", "local", "--labels", "app=ledger",
        "--sds-socket", str(tmp_path / "run" / "sds.sock"), "--bootstrap-out", str(tmp_path / "run" / "envoy.json"),
        "--envoy-admin-port", str(free_port()), "--health-address", f"127.0.0.1:{free_port()}",
        "--log-level", "warning",
    ]
    envoy_admin_port = argv[argv.index("--envoy-admin-port") + 1]
    log_file = tmp_path / "agent.log"
    with log_file.open("wb") as log:
        process = await asyncio.create_subprocess_exec(*argv, env=env, stdout=log, stderr=log)
    try:
        yield plane, log_file, f"http://127.0.0.1:{envoy_admin_port}"
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), timeout=20)
            except TimeoutError:
                process.kill()
                await process.wait()


async def meshctl(plane, *argv: str) -> tuple[int, str, str]:
    """Run meshctl in a thread, because the control plane it queries runs on this event loop."""
    out, err = io.StringIO(), io.StringIO()
    admin_url = f"http://127.0.0.1:{plane.admin.port}"
    code = await asyncio.to_thread(main, [*argv, "--admin-url", admin_url], stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


async def wait_for_nack(plane, log_file: Path) -> dict:
    """Poll `meshctl status -o json` (at most 300 times, 0.1 s apart) until LDS is NACKED."""
    proxies: list = []
    for _ in range(300):
        _code, out, _err = await meshctl(plane, "status", "-o", "json")
        proxies = json.loads(out) if out.strip() else []
        if proxies and proxies[0]["types"].get("LDS", {}).get("status") == "NACKED":
            return proxies[0]
        await asyncio.sleep(0.1)
    pytest.fail(f"LDS was never NACKED; last status {proxies}; agent log:\n{log_file.read_text()[-3000:]}")


async def test_status_json_reports_nack_with_envoy_error(ledger_agent) -> None:
    plane, log_file, _ = ledger_agent
    proxy = await wait_for_nack(plane, log_file)
    code, out, err = await meshctl(plane, "status", "-o", "json")

    assert code == 1, err
    [reported] = json.loads(out)
    assert reported["proxy"] == "payments/ledger"
    assert reported["status"] == "NACKED"
    lds = reported["types"]["LDS"]
    assert lds["status"] == "NACKED"
    assert BAD_ADDRESS in lds["error"]
    assert "malformed IP address" in lds["error"]
    # Envoy keeps what it accepted before, so the acknowledged version is not the rejected one.
    assert lds["version_acked"] != lds["version_sent"]
    assert proxy["types"]["CDS"]["status"] == "SYNCED"


async def test_status_table_prints_nack_line(ledger_agent) -> None:
    plane, log_file, _ = ledger_agent
    proxy = await wait_for_nack(plane, log_file)
    code, out, _ = await meshctl(plane, "status")

    assert code == 1
    row = next(line for line in out.splitlines() if line.startswith("payments/ledger "))
    cells = dict(zip(("SDS", "CDS", "EDS", "LDS", "RDS"), row.split()[2:7]))
    assert cells["LDS"] == "NACKED"
    assert cells["CDS"] == "SYNCED"
    rejected = proxy["types"]["LDS"]["version_sent"]
    nack = next(line for line in out.splitlines() if line.startswith("payments/ledger LDS NACKED"))
    assert nack.startswith(f"payments/ledger LDS NACKED version {rejected}: ")
    assert BAD_ADDRESS in nack


async def test_status_wide_shows_error_column(ledger_agent) -> None:
    plane, log_file, _ = ledger_agent
    await wait_for_nack(plane, log_file)
    code, out, _ = await meshctl(plane, "status", "-o", "wide")

    assert code == 1
    header, row = out.splitlines()[0], next(line for line in out.splitlines() if line.startswith("payments/ledger "))
    assert header.rstrip().endswith("ERROR")
    assert "LDS: " in row
    assert BAD_ADDRESS in row


async def test_proxy_config_envoy_shows_rejected_listener(ledger_agent) -> None:
    plane, log_file, envoy_admin_url = ledger_agent
    await wait_for_nack(plane, log_file)
    code, out, err = await meshctl(plane, "proxy-config", "payments/ledger", "listeners", "--source", "envoy",
                                   "--envoy-admin-url", envoy_admin_url, "-o", "wide")
    _, served, _ = await meshctl(plane, "proxy-config", "payments/ledger", "listeners", "-o", "json")

    assert code == 0, err
    row = next(line for line in out.splitlines() if line.startswith("bad-listener "))
    assert "rejected" in row.split()
    assert "malformed IP address: not-an-ip" in row
    # The control plane still serves the listener; only Envoy's copy shows the rejection.
    assert "bad-listener" in [entry["resource"]["name"] for entry in json.loads(served)]
