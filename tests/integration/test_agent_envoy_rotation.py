"""The agent's SDS server feeding a real Envoy: served certificate, rotation without restart."""

from __future__ import annotations

import asyncio
import http.client
import json
import ssl
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

from controlplane.agent.agent import Agent, AgentConfig
from controlplane.agent.bootstrap import agent_trust_bundle_sds, bootstrap_json, sds_cluster
from controlplane.agent.ca_client import RetryPolicy
from controlplane.identity.svid import format_serial
from controlplane.identity.join_token import JoinTokenIssuer, load_join_token_key
from controlplane.identity.spiffe_id import SpiffeId
from controlplane.model.types import DEFAULT_ROOT_NAMESPACE
from controlplane.server.serve import ServeOptions, build_control_plane, load_or_create_ca
from controlplane.server.tls import control_plane_dns_names, control_plane_spiffe_id
from controlplane.translate import names
from controlplane.translate.tls import workload_certificate_sds

pytestmark = pytest.mark.envoy
LEDGER = SpiffeId.parse("spiffe://example.org/ns/payments/sa/ledger")


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def tls_listener(socket_path: str) -> bootstrap_pb2.Bootstrap:
    """A bootstrap with one TLS listener (port 0) that returns 200 and takes its secrets from the agent."""
    router = hcm_pb2.HttpFilter(name=names.HTTP_ROUTER, typed_config=names.pack(router_pb2.Router()))
    route = route_pb2.RouteConfiguration(virtual_hosts=[route_components_pb2.VirtualHost(
        name="all", domains=["*"],
        routes=[route_components_pb2.Route(
            match=route_components_pb2.RouteMatch(prefix="/"),
            direct_response=route_components_pb2.DirectResponseAction(
                status=200, body=base_pb2.DataSource(inline_string="ok")),
        )],
    )])
    manager = hcm_pb2.HttpConnectionManager(stat_prefix="test", route_config=route, http_filters=[router])
    tls = tls_pb2.DownstreamTlsContext(common_tls_context=tls_pb2.CommonTlsContext(
        tls_certificate_sds_secret_configs=[workload_certificate_sds()],
        validation_context_sds_secret_config=agent_trust_bundle_sds(),
    ))
    listener = listener_pb2.Listener(
        name="tls",
        address=address_pb2.Address(socket_address=address_pb2.SocketAddress(address="127.0.0.1", port_value=0)),
        filter_chains=[listener_components_pb2.FilterChain(
            filters=[listener_components_pb2.Filter(name=names.HTTP_CONNECTION_MANAGER, typed_config=names.pack(manager))],
            transport_socket=base_pb2.TransportSocket(name=names.TLS_TRANSPORT_SOCKET, typed_config=names.pack(tls)),
        )],
    )
    return bootstrap_pb2.Bootstrap(
        node=base_pb2.Node(id="test", cluster="test"),
        admin=bootstrap_pb2.Admin(address=address_pb2.Address(
            socket_address=address_pb2.SocketAddress(address="127.0.0.1", port_value=0))),
        static_resources=bootstrap_pb2.Bootstrap.StaticResources(listeners=[listener], clusters=[sds_cluster(socket_path)]),
    )


@pytest.fixture
async def agent(tmp_path: Path):
    ca_dir = tmp_path / "ca"
    ca, _ = load_or_create_ca(ca_dir, trust_domain="example.org", now=utc_now())
    plane = build_control_plane(
        ServeOptions(ca_dir=ca_dir, trust_domain="example.org", grpc_address="127.0.0.1:0",
                     bootstrap_address="127.0.0.1:0", admin_address="127.0.0.1:0"),
        ca, clock=utc_now,
    )
    await plane.start()
    token_file = tmp_path / "token"
    token_file.write_text(JoinTokenIssuer(load_join_token_key(ca_dir), trust_domain="example.org")
                          .mint(LEDGER, ttl=timedelta(minutes=5), now=utc_now()))
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    config = AgentConfig(
        control_plane=f"127.0.0.1:{plane.grpc.mtls_port}",
        control_plane_bootstrap=f"127.0.0.1:{plane.grpc.bootstrap_port}",
        control_plane_id=control_plane_spiffe_id("example.org", DEFAULT_ROOT_NAMESPACE),
        control_plane_name=control_plane_dns_names(DEFAULT_ROOT_NAMESPACE)[0],
        ca_root=ca_dir / "root-cert.pem", token_file=token_file, token_env=None,
        namespace="payments", service_account="ledger", workload="ledger", trust_domain="example.org",
        instance_ip="127.0.0.1", mode="local", app_address="127.0.0.1", labels={"app": "ledger"},
        sds_socket=run_dir / "sds.sock", bootstrap_out=run_dir / "envoy.json",
        envoy_admin_address="127.0.0.1:15000", health_address="127.0.0.1:0",
        ttl_seconds=600, ads_type="grpc", envoy_log_level="warning", run_envoy=False,
        retry=RetryPolicy(max_attempts=3, base=0.05, cap=0.2, timeout=5.0),
    )
    running = Agent(config)
    await running.start()
    try:
        yield running, ca_dir
    finally:
        await running.stop()
        await plane.stop()


@pytest.fixture
async def envoy(agent, tmp_path: Path, envoy_binary: str):
    running, _ = agent
    bootstrap = tmp_path / "envoy-test.json"
    bootstrap.write_text(bootstrap_json(tls_listener(str(running.config.sds_socket))))
    admin_file = tmp_path / "admin-address"
    log_file = tmp_path / "envoy.log"
    with log_file.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            envoy_binary, "-c", str(bootstrap), "--disable-hot-restart", "--log-level", "info",
            "--admin-address-path", str(admin_file), stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        yield process, admin_file, log_file
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), timeout=10)
            except asyncio.TimeoutError:
                process.kill()
                await process.wait()


def envoy_log(log_file: Path) -> str:
    return log_file.read_text(errors="replace")[-4000:]


async def listener_port(admin_file: Path, log_file: Path) -> int:
    """Wait (at most ~15 s) until the listener is active and return its bound port."""
    for _ in range(150):
        if admin_file.exists() and admin_file.read_text().strip():
            admin = admin_file.read_text().strip()
            try:
                body = await asyncio.to_thread(_get, admin, "/listeners?format=json")
            except OSError:
                body = ""
            if body:
                listeners = json.loads(body).get("listener_statuses", [])
                for status in listeners:
                    port = status.get("local_address", {}).get("socket_address", {}).get("port_value")
                    if port:
                        return int(port)
        await asyncio.sleep(0.1)
    pytest.fail(f"Envoy's TLS listener never became active; Envoy log:\n{envoy_log(log_file)}")


def _get(admin: str, path: str) -> str:
    host, port = admin.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=2)
    try:
        connection.request("GET", path)
        return connection.getresponse().read().decode()
    finally:
        connection.close()


def client_context(ca_dir: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca_dir / "root-cert.pem"))
    context.check_hostname = False  # an SVID carries a URI SAN, not a host name
    return context


def open_connection(port: int, context: ssl.SSLContext) -> tuple[http.client.HTTPSConnection, str]:
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=5)
    connection.connect()
    leaf = x509.load_der_x509_certificate(connection.sock.getpeercert(binary_form=True))
    return connection, format_serial(leaf.serial_number)


def get(connection: http.client.HTTPSConnection) -> tuple[int, bytes]:
    connection.request("GET", "/", headers={"Connection": "keep-alive"})
    response = connection.getresponse()
    return response.status, response.read()


async def serial_after_change(port: int, context: ssl.SSLContext, wanted: str) -> str:
    """Open new connections (at most 50, 0.1 s apart) until one presents `wanted`."""
    seen = ""
    for _ in range(50):
        connection, seen = await asyncio.to_thread(open_connection, port, context)
        connection.close()
        if seen == wanted:
            return seen
        await asyncio.sleep(0.1)
    return seen


async def test_envoy_serves_agent_certificate(agent, envoy) -> None:
    running, ca_dir = agent
    _process, admin_file, log_file = envoy
    port = await listener_port(admin_file, log_file)

    connection, serial = await asyncio.to_thread(open_connection, port, client_context(ca_dir))
    status, body = await asyncio.to_thread(get, connection)
    connection.close()

    assert serial == running.svid.serial, envoy_log(log_file)
    assert (status, body) == (200, b"ok")


async def test_rotation_changes_serial_without_restart_or_drop(agent, envoy) -> None:
    running, ca_dir = agent
    process, admin_file, log_file = envoy
    port = await listener_port(admin_file, log_file)
    context = client_context(ca_dir)
    kept, old_serial = await asyncio.to_thread(open_connection, port, context)
    assert await asyncio.to_thread(get, kept) == (200, b"ok")
    pid = process.pid

    renewed = await running.renew_now()
    new_serial = await serial_after_change(port, context, renewed.serial)

    assert renewed.serial != old_serial
    assert new_serial == renewed.serial, envoy_log(log_file)
    assert process.returncode is None
    assert process.pid == pid
    kept_sock = kept.sock
    assert await asyncio.to_thread(get, kept) == (200, b"ok")
    assert kept.sock is kept_sock
    peer = x509.load_der_x509_certificate(kept.sock.getpeercert(binary_form=True))
    assert format_serial(peer.serial_number) == old_serial
    kept.close()


async def test_short_ttl_renews_on_schedule(agent, envoy) -> None:
    running, ca_dir = agent
    _process, admin_file, log_file = envoy
    port = await listener_port(admin_file, log_file)
    first = running.svid
    # A 4 s certificate is due for renewal about 2 s after it arrives.
    running.renewal_ca.ttl_seconds = 4
    await running.renew_now()
    short = running.svid

    for _ in range(100):
        if running.svid is not short:
            break
        await asyncio.sleep(0.1)
    # Later certificates live long again, so the served serial settles.
    running.renewal_ca.ttl_seconds = 600

    assert running.svid is not short
    assert running.renewals >= 2
    context = client_context(ca_dir)
    served = ""
    for _ in range(50):
        connection, served = await asyncio.to_thread(open_connection, port, context)
        connection.close()
        if served == running.svid.serial:
            break
        await asyncio.sleep(0.1)
    assert served == running.svid.serial, envoy_log(log_file)
    assert served not in (first.serial, short.serial)
