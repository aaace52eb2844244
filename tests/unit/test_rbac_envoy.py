"""The real Envoy accepts the generated RBAC filters and decides as the evaluator predicts."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from google.protobuf import any_pb2, json_format

from controlplane.authz import Request, evaluate
from controlplane.model.types import AuthorizationPolicy, Condition, MeshConfig, Operation, Rule, Source
from controlplane.translate.rbac import translate_http_rbac, translate_network_rbac

pytestmark = pytest.mark.envoy

CONFIG = MeshConfig(trust_domain="example.org", trust_domain_aliases=("legacy.example",))
LOG_FORMAT = (
    "%RESPONSE_CODE%|%RESPONSE_CODE_DETAILS%|%DYNAMIC_METADATA(envoy.filters.http.rbac)%"
    "|%DYNAMIC_METADATA(envoy.common)%\n"
)


def pack(message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def http_listener(bootstrap, name: str, port: int, http_filters, access_log: Path | None = None) -> None:
    routes = route_pb2.RouteConfiguration(name="local")
    host = routes.virtual_hosts.add(name="all", domains=["*"])
    route = host.routes.add()
    route.match.prefix = "/"
    route.direct_response.status = 200
    router = hcm_pb2.HttpFilter(name="envoy.filters.http.router", typed_config=pack(router_pb2.Router()))
    manager = hcm_pb2.HttpConnectionManager(
        stat_prefix="inbound", route_config=routes, http_filters=[*http_filters, router]
    )
    if access_log is not None:
        logger = file_pb2.FileAccessLog(path=str(access_log))
        logger.log_format.text_format_source.inline_string = LOG_FORMAT
        manager.access_log.add(name="envoy.access_loggers.file", typed_config=pack(logger))
    listener = bootstrap.static_resources.listeners.add(name=name)
    listener.address.socket_address.address = "127.0.0.1"
    listener.address.socket_address.port_value = port
    listener.filter_chains.add().filters.add(name="hcm", typed_config=pack(manager))


def write_bootstrap(bootstrap, path: Path) -> Path:
    path.write_text(json_format.MessageToJson(bootstrap))
    return path


EVERY_FEATURE = [
    AuthorizationPolicy(
        "ledger",
        "allow-many",
        rules=(
            Rule(
                sources=(
                    Source(
                        principals=("cluster.local/ns/a/sa/b", "*/sa/x", "example.org/ns/c/*", "*"),
                        not_principals=("partner.org/ns/z/sa/z",),
                        namespaces=("pay*", "*-prod", "*"),
                        ip_blocks=("10.0.0.0/8", "fd00::/8"),
                        not_remote_ip_blocks=("::1", "192.0.2.1"),
                    ),
                ),
                operations=(
                    Operation(
                        hosts=("*.example.com", "ledger", "ledger:*", "*"),
                        methods=("GET", "*"),
                        paths=("/x", "/y*", "*.json", "*"),
                        ports=("80",),
                        not_ports=("81",),
                    ),
                ),
                conditions=(
                    Condition("request.headers[x-a]", ("v", "*", "p*", "*s")),
                    Condition("connection.sni", ("*",), ("bad.*",)),
                    Condition("destination.ip", ("127.0.0.1",)),
                    Condition("remote.ip", not_values=("203.0.113.0/24",)),
                ),
            ),
        ),
    ),
    AuthorizationPolicy("ledger", "deny-all", action="DENY", rules=(Rule(),)),
    AuthorizationPolicy("ledger", "audit-all", action="AUDIT", rules=(Rule(),)),
    AuthorizationPolicy("ledger", "try.this", dry_run=True),
    AuthorizationPolicy("ledger", "broken", error="unsupported field"),
]


def test_envoy_validates_generated_filters(envoy_binary, tmp_path):
    http = translate_http_rbac(EVERY_FEATURE, port=8080, config=CONFIG)
    network = translate_network_rbac(EVERY_FEATURE, port=9000, config=CONFIG)
    bootstrap = bootstrap_pb2.Bootstrap()
    http_listener(bootstrap, "http", 8080, http.filters)
    tcp = bootstrap.static_resources.listeners.add(name="tcp")
    tcp.address.socket_address.address = "127.0.0.1"
    tcp.address.socket_address.port_value = 9000
    chain = tcp.filter_chains.add()
    chain.filters.extend(network.filters)
    chain.filters.add(name="tcp", typed_config=pack(tcp_proxy_pb2.TcpProxy(stat_prefix="tcp", cluster="app")))
    cluster = bootstrap.static_resources.clusters.add(name="app")
    cluster.connect_timeout.seconds = 1
    path = write_bootstrap(bootstrap, tmp_path / "validate.json")
    result = subprocess.run(
        [envoy_binary, "--mode", "validate", "-c", str(path), "--disable-hot-restart", "-l", "warning"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


LIVE_POLICIES = [
    AuthorizationPolicy("ledger", "allow-ok", rules=(Rule(operations=(Operation(paths=("/ok*", "/deny")),)),)),
    AuthorizationPolicy("ledger", "deny-deny", action="DENY", rules=(Rule(operations=(Operation(paths=("/deny",)),)),)),
    AuthorizationPolicy("ledger", "audit-get", action="AUDIT", rules=(Rule(operations=(Operation(methods=("GET",)),)),)),
    AuthorizationPolicy(
        "ledger", "dry", action="DENY", dry_run=True, rules=(Rule(operations=(Operation(paths=("/ok2",)),)),)
    ),
]
LIVE_CALLS = [("GET", "/ok"), ("GET", "/deny"), ("POST", "/nope"), ("GET", "/ok2?x=1")]


def send(port: int, method: str, path: str) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def wait_for_port(port: int, process: subprocess.Popen, deadline: float) -> None:
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"envoy exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"envoy did not listen on {port} in time")


def read_log_lines(path: Path, count: int, deadline: float) -> list[str]:
    while time.monotonic() < deadline:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= count:
            return lines
        time.sleep(0.1)
    raise AssertionError(f"access log has fewer than {count} lines: {path.read_text() if path.exists() else ''}")


def test_envoy_decides_as_the_evaluator_predicts(envoy_binary, tmp_path):
    port = free_port()
    translation = translate_http_rbac(LIVE_POLICIES, port=port, config=CONFIG)
    bootstrap = bootstrap_pb2.Bootstrap()
    access_log = tmp_path / "access.log"
    http_listener(bootstrap, "http", port, translation.filters, access_log)
    path = write_bootstrap(bootstrap, tmp_path / "live.json")
    stderr = (tmp_path / "envoy.log").open("w")
    process = subprocess.Popen(
        [envoy_binary, "-c", str(path), "--disable-hot-restart", "-l", "warning"], stderr=stderr
    )
    try:
        wait_for_port(port, process, time.monotonic() + 20)
        statuses = [send(port, method, target) for method, target in LIVE_CALLS]
    finally:
        # Envoy flushes file access logs every 10 s by default, and at exit.
        process.terminate()
        process.wait(timeout=10)
        stderr.close()
    lines = read_log_lines(access_log, len(LIVE_CALLS), time.monotonic() + 10)

    for (method, target), status, line in zip(LIVE_CALLS, statuses, lines):
        decision = evaluate(
            translation.filters, Request("127.0.0.1", port, method=method, path=target, host=f"127.0.0.1:{port}")
        )
        code, details, rbac_metadata, common_metadata = line.split("|")
        assert (status == 200) is decision.allowed, (method, target)
        assert details == (decision.response_code_details or "direct_response"), (method, target)
        assert json.loads(rbac_metadata) == dict(decision.dynamic_metadata["envoy.filters.http.rbac"])
        assert json.loads(common_metadata) == dict(decision.dynamic_metadata["envoy.common"])
