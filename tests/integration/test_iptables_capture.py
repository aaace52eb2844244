"""The capture rules installed for real by `idmesh-iptables` in network namespaces the test creates.

Two namespaces joined by a veth pair stand in for a pod (192.0.2.1, 2001:db8::1) and a peer
outside it (192.0.2.2, 2001:db8::2). Both are documentation addresses, which exist only inside
these namespaces. Listeners answer each connection with their tag and the connection's
original destination (SO_ORIGINAL_DST), so each assert shows where a connection landed.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# Helper processes also run as the proxy UID, which cannot read the venv under /root, and they
# need only the standard library.
SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/bin")
POD_V4, PEER_V4 = "192.0.2.1", "192.0.2.2"
POD_V6, PEER_V6 = "2001:db8::1", "2001:db8::2"
PROXY_UID = 1337
COMMAND_TIMEOUT = 20

# Listens on every (family, port, tag) given as JSON in argv[1] and replies to each connection with
# "<tag> <original destination>" and closes it. The original destination comes from
# SO_ORIGINAL_DST, or from the socket's own address where conntrack has no entry. Exits by itself after 300 s.
LISTENER = r"""
import json, selectors, socket, struct, sys, time
sel = selectors.DefaultSelector()
for family, port, tag in json.loads(sys.argv[1]):
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    s = socket.socket(af, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if af == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind(("0.0.0.0" if family == 4 else "::", port))
    s.listen(16)
    sel.register(s, selectors.EVENT_READ, (family, tag))
print("ready", flush=True)
deadline = time.monotonic() + 300
while time.monotonic() < deadline:
    for key, _ in sel.select(timeout=1):
        family, tag = key.data
        conn, _ = key.fileobj.accept()
        try:
            if family == 4:
                raw = conn.getsockopt(socket.SOL_IP, 80, 16)
                dst = socket.inet_ntop(socket.AF_INET, raw[4:8]) + ":" + str(struct.unpack("!H", raw[2:4])[0])
            else:
                raw = conn.getsockopt(socket.IPPROTO_IPV6, 80, 28)
                dst = "[" + socket.inet_ntop(socket.AF_INET6, raw[8:24]) + "]:" + str(struct.unpack("!H", raw[2:4])[0])
        except OSError:
            # No connection tracking in this namespace, so nothing was rewritten.
            host, port = conn.getsockname()[:2]
            dst = (host if family == 4 else "[" + host + "]") + ":" + str(port)
        conn.sendall((tag + " " + dst + "\n").encode())
        conn.close()
"""

CLIENT = r"""
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as s:
    print(s.makefile().readline().strip())
"""


def run(argv: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {result.returncode}: {result.stderr.strip()}")
    return result


def start_listener(namespace: str, listeners: list[tuple[int, int, str]]) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        ["ip", "netns", "exec", namespace, SYSTEM_PYTHON, "-c", LISTENER, json.dumps(listeners)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    line = ""
    deadline = time.monotonic() + 10
    # readline blocks, but the listener prints "ready" or dies within a fraction of a second.
    while time.monotonic() < deadline and process.poll() is None and line != "ready":
        line = process.stdout.readline().strip()
    if line != "ready":
        process.kill()
        raise AssertionError(f"listener in {namespace} did not start: {process.stderr.read()}")
    return process


class Netns:
    def __init__(self, suffix: str) -> None:
        self.pod = f"idmesh-pod-{suffix}"
        self.peer = f"idmesh-peer-{suffix}"
        self.veth_pod = f"idmp{suffix}"
        self.veth_peer = f"idmq{suffix}"
        self.ipv6 = False

    def connect(self, namespace: str, host: str, port: int, *, uid: int | None = None) -> str:
        prefix = ["ip", "netns", "exec", namespace]
        if uid is not None:
            prefix += ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
        result = run([*prefix, SYSTEM_PYTHON, "-c", CLIENT, host, str(port)], check=False)
        return result.stdout.strip() if result.returncode == 0 else f"failed: {result.stderr.strip()[-200:]}"

    def capture(self, *options: str) -> None:
        run(["ip", "netns", "exec", self.pod, sys.executable, "-m", "controlplane.iptables.cli", *options])

    def nat_rules(self, tool: str = "iptables-save") -> str:
        return run(["ip", "netns", "exec", self.pod, tool, "-t", "nat"]).stdout


def _require_tools() -> None:
    missing = [tool for tool in ("ip", "iptables-restore", "ip6tables-restore", "setpriv") if not shutil.which(tool)]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (apt-get install iptables iproute2 util-linux)")
    if SYSTEM_PYTHON is None:
        pytest.skip("needs /usr/bin/python3 for helper processes that run as the proxy UID")


@pytest.fixture(scope="module")
def netns():
    _require_tools()
    ns = Netns(secrets.token_hex(3))
    probe = run(["ip", "netns", "add", ns.pod], check=False)
    if probe.returncode != 0:
        pytest.skip(f"cannot create a network namespace (needs root and CAP_SYS_ADMIN): {probe.stderr.strip()}")
    processes: list[subprocess.Popen[str]] = []
    try:
        run(["ip", "netns", "add", ns.peer])
        run(["ip", "link", "add", ns.veth_pod, "netns", ns.pod, "type", "veth", "peer", "name", ns.veth_peer, "netns", ns.peer])
        for name, veth, v4, v6 in ((ns.pod, ns.veth_pod, POD_V4, POD_V6), (ns.peer, ns.veth_peer, PEER_V4, PEER_V6)):
            run(["ip", "-n", name, "link", "set", "lo", "up"])
            run(["ip", "-n", name, "addr", "add", f"{v4}/24", "dev", veth])
            ns.ipv6 = run(["ip", "-n", name, "addr", "add", f"{v6}/64", "dev", veth, "nodad"], check=False).returncode == 0
            run(["ip", "-n", name, "link", "set", veth, "up"])
        both = [(4, port, tag) for port, tag in ((15001, "outbound"), (15006, "inbound"), (9000, "app"), (9090, "app-excluded"), (15020, "health"))]
        if ns.ipv6:
            both += [(6, 15001, "outbound"), (6, 15006, "inbound")]
        processes.append(start_listener(ns.pod, both))
        peer = [(4, 8080, "peer"), (4, 5432, "peer-db")] + ([(6, 8080, "peer")] if ns.ipv6 else [])
        processes.append(start_listener(ns.peer, peer))
        yield ns
    finally:
        for process in processes:
            process.kill()
            process.wait(timeout=5)
        for name in (ns.pod, ns.peer):
            run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def captured(netns):
    netns.capture("--exclude-outbound-ports", "5432", "--exclude-inbound-ports", "9090")
    yield netns
    netns.capture("--cleanup")


def test_outbound_connection_redirected_to_15001(captured):
    assert captured.connect(captured.pod, PEER_V4, 8080) == f"outbound {PEER_V4}:8080"


def test_proxy_uid_not_redirected(captured):
    assert captured.connect(captured.pod, PEER_V4, 8080, uid=PROXY_UID) == f"peer {PEER_V4}:8080"


def test_other_uid_redirected(captured):
    assert captured.connect(captured.pod, PEER_V4, 8080, uid=1000) == f"outbound {PEER_V4}:8080"


def test_excluded_outbound_port_not_redirected(captured):
    assert captured.connect(captured.pod, PEER_V4, 5432) == f"peer-db {PEER_V4}:5432"


def test_inbound_connection_redirected_to_15006(captured):
    assert captured.connect(captured.peer, POD_V4, 9000) == f"inbound {POD_V4}:9000"


def test_excluded_inbound_port_reaches_app(captured):
    assert captured.connect(captured.peer, POD_V4, 9090) == f"app-excluded {POD_V4}:9090"


def test_health_port_reaches_agent(captured):
    assert captured.connect(captured.peer, POD_V4, 15020) == f"health {POD_V4}:15020"


def test_inbound_to_outbound_port_lands_on_inbound(captured):
    assert captured.connect(captured.peer, POD_V4, 15001) == f"inbound {POD_V4}:15001"


def test_app_to_localhost_not_redirected(captured):
    assert captured.connect(captured.pod, "127.0.0.1", 9000) == "app 127.0.0.1:9000"


def test_app_to_own_pod_ip_not_redirected(captured):
    assert captured.connect(captured.pod, POD_V4, 9000) == f"app {POD_V4}:9000"


def test_outbound_ipv6_redirected(captured):
    if not captured.ipv6:
        pytest.skip("IPv6 addresses could not be added in the test namespaces")
    assert captured.connect(captured.pod, PEER_V6, 8080) == f"outbound [{PEER_V6}]:8080"


def test_excluded_cidr_not_redirected(netns):
    netns.capture("--exclude-outbound-ip-ranges", f"{PEER_V4}/32")
    try:
        assert netns.connect(netns.pod, PEER_V4, 8080) == f"peer {PEER_V4}:8080"
    finally:
        netns.capture("--cleanup")


def test_reinstall_keeps_one_copy(netns):
    netns.capture()
    netns.capture("--exclude-outbound-ports", "5432")
    try:
        rules = netns.nat_rules()
        assert rules.count("-A PREROUTING -p tcp -j IDMESH_INBOUND") == 1
        assert rules.count("-A OUTPUT -p tcp -j IDMESH_OUTPUT") == 1
        assert rules.count("--dport 5432 -j RETURN") == 1
    finally:
        netns.capture("--cleanup")


def test_cleanup_removes_rules_and_capture(netns):
    netns.capture()
    netns.capture("--cleanup")
    assert "IDMESH" not in netns.nat_rules()
    assert "IDMESH" not in netns.nat_rules("ip6tables-save")
    assert netns.connect(netns.pod, PEER_V4, 8080) == f"peer {PEER_V4}:8080"
