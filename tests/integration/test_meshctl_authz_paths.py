"""The path `meshctl authz check` evaluates is the path Envoy forwards after normalizing it.

A real Envoy runs the plaintext inbound chain the translator builds for a workload port (so the
connection manager settings are the production ones), routed to a server that responds with the
request-target it received. Each path of the unit-test table goes through it, and the result
must equal `controlplane.authz.paths.normalize`: the forwarded path, or 400 when it rejects.
"""

from __future__ import annotations

import socket
import socketserver
import subprocess
import threading
import time
from pathlib import Path

import pytest
from envoy.config.bootstrap.v3 import bootstrap_pb2
from google.protobuf import json_format

from controlplane.authz.inbound import chains_for_port, inbound_chain, select_chain
from controlplane.authz.paths import normalize
from controlplane.identity.spiffe_id import SpiffeId
from controlplane.model.parse import parse_objects
from controlplane.model.types import Proxy
from controlplane.translate import translate
from controlplane.translate.resources import LISTENER, inbound_cluster_name
from tests.unit.test_meshctl_authz_paths import INBOUND_CASES

pytestmark = pytest.mark.envoy

APP_PORT = 8080
OBJECTS = [
    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "payments"}},
    {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "ledger", "namespace": "payments", "labels": {"app": "ledger"},
                     "annotations": {"idmesh.io/inject": "true"}},
        "spec": {"serviceAccountName": "api", "containers": [{"name": "ledger", "image": "x", "ports": [{"containerPort": APP_PORT, "name": "http"}]}]},
    },
    {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "ledger", "namespace": "payments"},
        "spec": {"selector": {"app": "ledger"}, "ports": [{"name": "http", "port": APP_PORT}]},
    },
]


class EchoTarget(socketserver.StreamRequestHandler):
    """Respond 200 with the request-target of the request line as the body."""

    def handle(self) -> None:
        request_line = self.rfile.readline().decode("latin-1")
        for _ in range(100):
            if self.rfile.readline() in (b"\r\n", b""):
                break
        body = request_line.split(" ")[1].encode("latin-1")
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def bootstrap_with_inbound_chain(port: int, app_port: int) -> bootstrap_pb2.Bootstrap:
    """A static Envoy whose one listener holds the translator's plaintext inbound chain."""
    state = parse_objects(OBJECTS)
    proxy = Proxy(
        node_id="n", namespace="payments", workload="ledger", service_account="api", ip="127.0.0.1",
        spiffe_id=SpiffeId.for_workload("cluster.local", "payments", "api"), labels={"app": "ledger"}, mode="local",
    )
    listeners = list(translate(state, proxy).resources[LISTENER].values())
    chain = select_chain(chains_for_port(listeners, APP_PORT), tls=False)
    bootstrap = bootstrap_pb2.Bootstrap()
    listener = bootstrap.static_resources.listeners.add(name="inbound")
    listener.address.socket_address.address = "127.0.0.1"
    listener.address.socket_address.port_value = port
    listener.filter_chains.add().CopyFrom(chain)
    listener.filter_chains[0].ClearField("filter_chain_match")
    cluster = bootstrap.static_resources.clusters.add(name=inbound_cluster_name(APP_PORT))
    cluster.connect_timeout.seconds = 1
    cluster.load_assignment.cluster_name = cluster.name
    endpoint = cluster.load_assignment.endpoints.add().lb_endpoints.add().endpoint.address.socket_address
    endpoint.address = "127.0.0.1"
    endpoint.port_value = app_port
    return bootstrap


def send(port: int, target: str) -> tuple[str, str]:
    """Send a raw GET with `target` on the wire; return (status, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        request = f"GET {target} HTTP/1.1\r\nHost: ledger\r\nConnection: close\r\n\r\n"
        connection.sendall(request.encode("utf-8", "surrogateescape"))
        response = b""
        for _ in range(1000):
            chunk = connection.recv(65536)
            if not chunk:
                break
            response += chunk
    if not response:
        return "reset", ""
    head, _, body = response.partition(b"\r\n\r\n")
    return head.split(b" ")[1].decode(), body.decode("latin-1")


def wait_for_port(port: int, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"envoy exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"envoy did not listen on {port} in time: {log.read_text()[-2000:]}")


def test_envoy_forwards_the_path_meshctl_evaluates(envoy_binary, tmp_path):
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), EchoTarget)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = free_port()
    config = tmp_path / "envoy.json"
    bootstrap = bootstrap_with_inbound_chain(port, server.server_address[1])
    settings = inbound_chain("inbound", bootstrap.static_resources.listeners[0].filter_chains[0]).path_settings
    config.write_text(json_format.MessageToJson(bootstrap))
    log = tmp_path / "envoy.log"
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [envoy_binary, "-c", str(config), "--disable-hot-restart", "-l", "warning"], stderr=stderr
        )
    try:
        wait_for_port(port, process, log)
        observed = {sent: send(port, sent) for sent, _expected in INBOUND_CASES}
    finally:
        process.terminate()
        process.wait(timeout=10)
        server.shutdown()
        server.server_close()

    assert settings.normalize_path and settings.merge_slashes
    for sent, (status, body) in observed.items():
        predicted = normalize(sent, settings)
        if predicted.rejected is not None:
            assert status == "400", (sent, status, body)
        else:
            assert (status, body) == ("200", predicted.path), sent
