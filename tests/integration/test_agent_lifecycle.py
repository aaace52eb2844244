"""The `mesh-agent` process: readiness, Envoy supervision and shutdown on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import stat
import sys
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from controlplane.identity.join_token import JoinTokenIssuer, load_join_token_key
from controlplane.identity.spiffe_id import SpiffeId
from controlplane.server.serve import ServeOptions, build_control_plane, load_or_create_ca

LEDGER = SpiffeId.parse("spiffe://example.org/ns/payments/sa/ledger")


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
async def control_plane(tmp_path: Path):
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


async def start_agent(plane, ca_dir: Path, tmp_path: Path, *extra: str, token: str | None = None):
    token_file = tmp_path / "token"
    token_file.write_text(token or JoinTokenIssuer(load_join_token_key(ca_dir), trust_domain="example.org")
                          .mint(LEDGER, ttl=timedelta(minutes=5), now=utc_now()))
    health = f"127.0.0.1:{free_port()}"
    run_dir = tmp_path / "run"
    env = dict(os.environ)
    # Identity settings come from the environment, as the downward API gives them in a pod.
    env.update(IDMESH_NAMESPACE="payments", IDMESH_SERVICE_ACCOUNT="ledger", IDMESH_WORKLOAD="ledger",
               IDMESH_INSTANCE_IP="127.0.0.1", IDMESH_TRUST_DOMAIN="example.org")
    argv = [
        sys.executable, "-m", "controlplane.agent.cli",
        "--control-plane", f"127.0.0.1:{plane.grpc.mtls_port}",
        "--control-plane-bootstrap", f"127.0.0.1:{plane.grpc.bootstrap_port}",
        "--ca-root", str(ca_dir / "root-cert.pem"), "--token-file", str(token_file),
        "--mode", "local", "--labels", "app=ledger,version=v1",
        "--sds-socket", str(run_dir / "sds.sock"), "--bootstrap-out", str(run_dir / "envoy.json"),
        "--envoy-admin-port", str(free_port()), "--health-address", health, "--log-level", "warning",
        *extra,
    ]
    log_file = tmp_path / "agent.log"
    with log_file.open("wb") as log:
        process = await asyncio.create_subprocess_exec(*argv, env=env, stdout=log, stderr=log)
    return process, health, log_file


async def stop(process) -> None:
    if process.returncode is None:
        process.kill()
        await process.wait()


def fetch_status(health: str) -> tuple[int, dict] | None:
    try:
        with urllib.request.urlopen(f"http://{health}/healthz/ready", timeout=2) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except OSError:
        return None


async def wait_status(health: str, done, log_file: Path) -> tuple[int, dict]:
    """Poll /healthz/ready (at most 150 times, 0.1 s apart) until `done(code, body)`."""
    last = None
    for _ in range(150):
        last = await asyncio.to_thread(fetch_status, health)
        if last is not None and done(*last):
            return last
        await asyncio.sleep(0.1)
    pytest.fail(f"agent status never matched; last {last}; agent log:\n{log_file.read_text()[-3000:]}")


async def test_ready_without_envoy_reports_svid(control_plane, tmp_path: Path) -> None:
    plane, ca_dir = control_plane
    process, health, log_file = await start_agent(plane, ca_dir, tmp_path, "--no-envoy")
    try:
        code, body = await wait_status(health, lambda code, body: code == 200, log_file)

        assert body["ready"] is True
        assert body["svid"]["spiffe_id"] == str(LEDGER)
        assert int(body["svid"]["serial"], 16) > 0
        assert datetime.fromisoformat(body["svid"]["not_after"]) > utc_now()
        assert body["envoy"] == {"managed": False}
        socket_path = tmp_path / "run" / "sds.sock"
        assert stat.S_IMODE(socket_path.stat().st_mode) == 0o600
        assert stat.S_IMODE(socket_path.parent.stat().st_mode) == 0o700
        bootstrap = json.loads((tmp_path / "run" / "envoy.json").read_text())
        assert bootstrap["node"]["metadata"]["LABELS"] == {"app": "ledger", "version": "v1"}
        assert bootstrap["node"]["metadata"]["NAMESPACE"] == "payments"
    finally:
        await stop_gracefully(process)


@pytest.mark.envoy
async def test_sigterm_stops_envoy_and_exits_zero(control_plane, tmp_path: Path) -> None:
    plane, ca_dir = control_plane
    process, health, log_file = await start_agent(plane, ca_dir, tmp_path)
    try:
        _code, body = await wait_status(health, lambda code, body: bool(body["envoy"].get("pid")), log_file)
        envoy_pid = body["envoy"]["pid"]
        assert Path(f"/proc/{envoy_pid}").exists()

        process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(process.wait(), timeout=20)

        assert code == 0, log_file.read_text()[-3000:]
        assert not Path(f"/proc/{envoy_pid}").exists()
        assert not (tmp_path / "run" / "sds.sock").exists()
    finally:
        await stop_gracefully(process)


async def test_bad_token_exits_nonzero_with_reason(control_plane, tmp_path: Path) -> None:
    plane, ca_dir = control_plane
    process, _health, log_file = await start_agent(plane, ca_dir, tmp_path, "--no-envoy", token="not-a-join-token")
    try:
        code = await asyncio.wait_for(process.wait(), timeout=20)

        assert code == 1
        output = log_file.read_text()
        assert "UNAUTHENTICATED" in output
        assert "not-a-join-token" not in output
    finally:
        await stop_gracefully(process)


@pytest.mark.envoy
async def test_dead_envoy_is_restarted(control_plane, tmp_path: Path) -> None:
    plane, ca_dir = control_plane
    process, health, log_file = await start_agent(plane, ca_dir, tmp_path)
    try:
        _code, body = await wait_status(health, lambda code, body: bool(body["envoy"].get("pid")), log_file)
        first_pid = body["envoy"]["pid"]

        os.kill(first_pid, signal.SIGKILL)
        _code, body = await wait_status(
            health, lambda code, body: body["envoy"].get("pid") not in (None, first_pid), log_file
        )

        assert body["envoy"]["restarts"] == 1
        assert process.returncode is None
    finally:
        await stop_gracefully(process)


async def stop_gracefully(process) -> None:
    """SIGTERM the agent so that it stops its Envoy; kill it after 20 s."""
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), timeout=20)
        except asyncio.TimeoutError:
            await stop(process)
