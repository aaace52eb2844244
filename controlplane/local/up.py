"""`meshctl up DIR`: run a folder of Kubernetes YAML as a local mesh with real Envoys.

Start-up order: a fresh CA in the run folder, the control plane serving the folder, then per
workload its demo app and, for workloads with a sidecar, a join token and a mesh-agent that
starts Envoy. The mesh is ready when the control plane reports every proxy in sync and every
listener accepts connections. Then the scenario runs (with `--check`), or the mesh stays up until
Ctrl-C. Every process started is stopped on the way out, whatever happened.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, TextIO

import aiohttp

from controlplane.errors import ConfigError, MeshError
from controlplane.local.plan import DEFAULT_SUBNET, LocalPlan, LocalWorkload, plan_local_mesh
from controlplane.local.processes import ProcessGroup, ProcessError
from controlplane.local.runner import run_calls
from controlplane.local.scenario import Verdict, parse_scenario
from controlplane.model.types import MeshState
from controlplane.server.addresses import DEFAULT_BOOTSTRAP_ADDRESS, split_address
from controlplane.translate.resources import (
    ADMIN_PORT,
    AGENT_HEALTH_PORT,
    CONTROL_PLANE_GRPC_PORT,
    ENVOY_ADMIN_PORT,
    OUTBOUND_CAPTURE_PORT,
)

SCENARIO_FILE = "scenario.yaml"
READY_TIMEOUT_SECONDS = 90.0
POLL_SECONDS = 0.2


class LocalMeshError(MeshError):
    """The local mesh could not be started or checked."""


@dataclass
class UpOptions:
    folder: Path
    check: bool = False
    output: str = "table"
    subnet: str = DEFAULT_SUBNET
    run_dir: Path | None = None
    ads_type: str = "grpc"
    ready_timeout: float = READY_TIMEOUT_SECONDS
    log_level: str = "info"
    # Requested certificate lifetime in seconds for every sidecar; 0 keeps the CA's default.
    cert_ttl_seconds: int = 0
    # Set by tests and by `meshctl up` to stop a running mesh; Ctrl-C also stops it.
    stop: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class LocalMesh:
    """A running local mesh, for callers that drive it themselves (tests, benchmarks)."""

    state: MeshState
    plan: LocalPlan
    run_dir: Path
    processes: ProcessGroup
    admin_url: str
    grpc_address: str
    # Unix socket paths are limited to 107 bytes, so sockets live in a short temporary folder
    # rather than under the run folder, which can be deep.
    socket_dir: Path
    # True when `meshctl up` made the run folder itself; it is then removed after a clean run.
    temporary_run_dir: bool = False
    # Problems found in the folder at start, already shown to the user.
    problems: tuple[str, ...] = ()


def _python_tool(name: str) -> str:
    """Path of a console script installed next to the running interpreter."""
    candidate = Path(sys.executable).with_name(name)
    return str(candidate) if candidate.exists() else name


def load_state(folder: Path) -> tuple[MeshState, list[Exception]]:
    from controlplane.model.parse import parse_objects
    from controlplane.sources.files import load_folder

    loaded = load_folder(folder)
    state = parse_objects(loaded.objects)
    return state, [*loaded.errors, *state.errors]


def _progress(stream: TextIO, message: str) -> Callable[[str], None]:
    stream.write(f"{message} ... ")
    stream.flush()
    started = time.monotonic()

    def done(result: str = "ok") -> None:
        stream.write(f"{result} ({time.monotonic() - started:.1f}s)\n")
        stream.flush()

    return done


async def _http_ok(session: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as response:
            return response.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


async def _port_open(address: str, port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(address, port), timeout=2)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


async def _wait_until(what: str, probe: Callable[[], object], *, processes: ProcessGroup, deadline: float) -> None:
    """Poll `probe` until it returns true; fail early when a child process died."""
    while True:
        if await probe():
            return
        dead = processes.exited()
        if dead:
            child = dead[0]
            raise LocalMeshError(
                f"{child.name} exited with status {child.process.returncode} while waiting for {what}; "
                f"last lines of {child.log_path}:\n{child.log_tail()}",
                child=child.name,
            )
        if time.monotonic() > deadline:
            raise LocalMeshError(f"timed out waiting for {what}; logs are in {processes.log_dir}")
        await asyncio.sleep(POLL_SECONDS)


async def _proxies_synced(session: aiohttp.ClientSession, admin_url: str, expected: set[str]) -> bool:
    try:
        async with session.get(f"{admin_url}/debug/syncz", timeout=aiohttp.ClientTimeout(total=2)) as response:
            if response.status != 200:
                return False
            proxies = (await response.json()).get("proxies", [])
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return False
    synced = {
        f"{p.get('namespace')}/{p.get('workload')}"
        for p in proxies
        if p.get("types") and all(t.get("status") == "SYNCED" for t in p["types"].values())
    }
    return expected <= synced


def _agent_argv(
    workload: LocalWorkload,
    *,
    state: MeshState,
    grpc_address: str,
    ca_dir: Path,
    token_file: Path,
    workdir: Path,
    options: UpOptions,
    sds_socket: Path,
) -> list[str]:
    labels = ",".join(f"{k}={v}" for k, v in sorted(workload.labels.items()))
    return [
        _python_tool("mesh-agent"),
        "--control-plane", grpc_address,
        "--ca-root", str(ca_dir / "root-cert.pem"),
        "--token-file", str(token_file),
        "--namespace", workload.namespace,
        "--service-account", workload.service_account,
        "--workload", workload.name,
        "--trust-domain", state.config.trust_domain,
        "--instance-ip", workload.address,
        "--mode", "local",
        "--app-address", workload.app_address,
        "--labels", labels,
        "--sds-socket", str(sds_socket),
        "--bootstrap-out", str(workdir / "envoy.json"),
        "--envoy-admin-address", f"{workload.address}:{ENVOY_ADMIN_PORT}",
        "--health-address", f"{workload.address}:{AGENT_HEALTH_PORT}",
        "--ads-type", options.ads_type,
        "--log-level", options.log_level,
        "--ttl", str(options.cert_ttl_seconds),
    ]


def _mint_token(ca_dir: Path, spiffe_id: str, token_file: Path) -> None:
    from controlplane.identity.join_token import JoinTokenIssuer, load_join_token_key
    from controlplane.identity.spiffe_id import SpiffeId

    identity = SpiffeId.parse(spiffe_id)
    issuer = JoinTokenIssuer(load_join_token_key(ca_dir), trust_domain=identity.trust_domain)
    token = issuer.mint(identity, ttl=timedelta(minutes=10), now=datetime.now(timezone.utc))
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(token)


async def start_mesh(options: UpOptions, *, progress: TextIO = sys.stderr) -> LocalMesh:
    """Start everything and wait until the mesh serves; the caller must `stop_mesh` it."""
    from controlplane.identity.ca import CertificateAuthority

    if not options.folder.is_dir():
        raise ConfigError(f"{options.folder} is not a folder of Kubernetes YAML", path=str(options.folder))
    state, problems = load_state(options.folder)
    for problem in problems:
        progress.write(f"warning: {problem}\n")
    plan = plan_local_mesh(state, subnet=options.subnet)
    if not plan.workloads:
        raise ConfigError(f"{options.folder} defines no workloads (Deployments or Pods)", path=str(options.folder))

    temporary_run_dir = options.run_dir is None
    run_dir = options.run_dir or Path(tempfile.mkdtemp(prefix="idmesh-up-"))
    run_dir.mkdir(parents=True, exist_ok=True)
    ca_dir = run_dir / "ca"
    processes = ProcessGroup(log_dir=run_dir / "logs")
    grpc_address = f"{plan.control_plane_address}:{CONTROL_PLANE_GRPC_PORT}"
    admin_url = f"http://{plan.control_plane_address}:{ADMIN_PORT}"
    socket_dir = Path(tempfile.mkdtemp(prefix="idmesh-"))
    mesh = LocalMesh(
        state, plan, run_dir, processes, admin_url, grpc_address, socket_dir, temporary_run_dir,
        problems=tuple(str(problem) for problem in problems),
    )
    deadline = time.monotonic() + options.ready_timeout
    try:
        done = _progress(progress, f"creating the mesh CA in {ca_dir}")
        CertificateAuthority.create(ca_dir, trust_domain=state.config.trust_domain, now=datetime.now(timezone.utc))
        done()
        addresses_file = run_dir / "addresses.json"
        addresses_file.write_text(plan.addresses_json())

        done = _progress(progress, f"starting the control plane on {plan.control_plane_address}")
        await processes.start("controlplane", [
            _python_tool("controlplane"), "serve",
            "--ca-dir", str(ca_dir),
            "--source", f"files:{options.folder.resolve()}",
            "--local-addresses", str(addresses_file),
            "--grpc-address", grpc_address,
            # Agents fetch their first certificate with a join token on the bootstrap port
            # (server-only TLS). Binding it to the mesh's own address keeps parallel meshes apart.
            "--bootstrap-address", f"{plan.control_plane_address}:{split_address(DEFAULT_BOOTSTRAP_ADDRESS)[1]}",
            "--admin-address", f"{plan.control_plane_address}:{ADMIN_PORT}",
            "--log-level", options.log_level,
            "--log-format", "json",
        ])
        async with aiohttp.ClientSession() as session:
            await _wait_until("the control plane", lambda: _http_ok(session, f"{admin_url}/readyz"), processes=processes, deadline=deadline)
            done()

            for index, workload in enumerate(plan.workloads):
                done = _progress(progress, f"starting {workload.key} on {workload.address}")
                await processes.start(f"{workload.key}-app", [
                    sys.executable, "-m", "controlplane.local.demo_app",
                    "--address", workload.app_address,
                    "--http-ports", ",".join(map(str, workload.http_ports)),
                    "--tcp-ports", ",".join(map(str, workload.tcp_ports)),
                    "--workload", workload.key,
                ])
                if workload.sidecar:
                    workdir = run_dir / "workloads" / workload.namespace / workload.name
                    workdir.mkdir(parents=True, exist_ok=True, mode=0o700)
                    token_file = workdir / "join-token"
                    spiffe_id = f"spiffe://{state.config.trust_domain}/ns/{workload.namespace}/sa/{workload.service_account}"
                    _mint_token(ca_dir, spiffe_id, token_file)
                    await processes.start(workload.key, _agent_argv(
                        workload, state=state, grpc_address=grpc_address, ca_dir=ca_dir,
                        token_file=token_file, workdir=workdir, options=options,
                        sds_socket=socket_dir / f"{index}.sock",
                    ))
                done("started")

            sidecars = [w for w in plan.workloads if w.sidecar]
            done = _progress(progress, f"waiting for {len(sidecars)} sidecars to sync")
            for workload in sidecars:
                await _wait_until(
                    f"the sidecar of {workload.key}",
                    lambda w=workload: _http_ok(session, f"http://{w.address}:{AGENT_HEALTH_PORT}/healthz/ready"),
                    processes=processes, deadline=deadline,
                )
            expected = {w.key for w in sidecars}
            await _wait_until("every proxy to be in sync", lambda: _proxies_synced(session, admin_url, expected), processes=processes, deadline=deadline)
            for workload in plan.workloads:
                ports = [*workload.http_ports, *workload.tcp_ports]
                if workload.sidecar:
                    ports.append(OUTBOUND_CAPTURE_PORT)
                for port in ports:
                    await _wait_until(
                        f"{workload.key} to listen on {workload.address}:{port}",
                        lambda w=workload, p=port: _port_open(w.address, p),
                        processes=processes, deadline=deadline,
                    )
            done()
    except BaseException:
        await stop_mesh(mesh)
        raise
    return mesh


async def stop_mesh(mesh: LocalMesh, *, keep_run_dir: bool = True) -> None:
    """Stop every process; remove the sockets, and the run folder when it is temporary and unwanted.

    The run folder contains the CA's private key as well as the logs, so a temporary one is removed
    after a clean run. Callers keep it (`keep_run_dir`) when its logs may explain a failure.
    """
    await mesh.processes.stop()
    shutil.rmtree(mesh.socket_dir, ignore_errors=True)
    if mesh.temporary_run_dir and not keep_run_dir:
        shutil.rmtree(mesh.run_dir, ignore_errors=True)


def workload_rows(mesh: LocalMesh) -> list[dict[str, str]]:
    rows = []
    for workload in mesh.plan.workloads:
        ports = [f"http:{p}" for p in workload.http_ports] + [f"tcp:{p}" for p in workload.tcp_ports]
        rows.append({
            "workload": workload.key,
            "identity": f"spiffe://{mesh.state.config.trust_domain}/ns/{workload.namespace}/sa/{workload.service_account}",
            "address": workload.address,
            "sidecar": "yes" if workload.sidecar else "no",
            "ports": ",".join(ports) or "-",
        })
    return rows


def verdict_rows(verdicts: list[Verdict]) -> list[dict[str, str]]:
    rows = []
    for verdict in verdicts:
        rows.append({
            "call": verdict.call.name,
            "expected": " or ".join(str(e) for e in verdict.call.expect),
            "got": str(verdict.outcome.result),
            "principal": verdict.outcome.principal or "-",
            "result": "pass" if verdict.passed else "FAIL: " + "; ".join(verdict.reasons),
        })
    return rows


async def check_scenario(mesh: LocalMesh, folder: Path) -> list[Verdict]:
    scenario = folder / SCENARIO_FILE
    if not scenario.is_file():
        raise ConfigError(f"{scenario} not found; --check needs a scenario file", path=str(scenario))
    calls = parse_scenario(scenario.read_text(), source=str(scenario))
    return await run_calls(calls, state=mesh.state, plan=mesh.plan)


async def _configuration_errors(session: aiohttp.ClientSession, admin_url: str) -> list[str] | None:
    try:
        async with session.get(f"{admin_url}/debug/mesh", timeout=aiohttp.ClientTimeout(total=2)) as response:
            if response.status != 200:
                return None
            return list((await response.json()).get("errors", []))
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None


async def wait_for_stop(mesh: LocalMesh, stop: asyncio.Event, *, report: Callable[[str], None] | None = None) -> None:
    """Block until `stop` is set; fail if a child process dies meanwhile.

    With `report`, problems in the folder that appear while the mesh runs (an edit that breaks a
    policy, say) are passed to it once each, as the control plane reports them.
    """
    reported = set(mesh.problems)
    async with aiohttp.ClientSession() as session:
        while not stop.is_set():
            if report is not None:
                errors = await _configuration_errors(session, mesh.admin_url)
                for error in errors or ():
                    if error not in reported:
                        report(error)
                reported = set(errors) if errors is not None else reported
            await _check_children(mesh)
            try:
                await asyncio.wait_for(stop.wait(), timeout=1.0)
            except TimeoutError:
                continue


async def _check_children(mesh: LocalMesh) -> None:
    """Raise `ProcessError` if a child process of the mesh has exited."""
    dead = mesh.processes.exited()
    if dead:
        child = dead[0]
        raise ProcessError(
            f"{child.name} exited with status {child.process.returncode}; last lines of {child.log_path}:\n{child.log_tail()}",
            child=child.name,
        )
