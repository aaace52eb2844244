"""`controlplane serve --source kubernetes --ca-secret` as a process: first start, a second replica, SIGTERM."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import kubernetes
import pytest

from controlplane.kube.leader import LEASE_NAME
from tests.kubernetes.conftest import declare_policy_crds
from tests.kubernetes.k8s_extras import api_server  # noqa: F401 - fixture
from tests.kubernetes.test_serve_kubernetes_harness import CA_SECRET, ROOT_NAMESPACE, read_json, write_kubeconfig

CONTROLPLANE = str(Path(sys.executable).with_name("controlplane"))
SERVING_LINE = re.compile(r"serving: grpc-mtls port \d+, grpc-bootstrap port \d+, admin port \d+, webhook port (\d+)")
LINE_TIMEOUT = 30.0
EXIT_TIMEOUT = 20.0


class Replica:
    """One `controlplane serve` child process; it talks to the emulator that runs on the test's event loop."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []

    @classmethod
    async def start(cls, kubeconfig: Path, pod_name: str) -> Replica:
        process = await asyncio.create_subprocess_exec(
            CONTROLPLANE, "serve", "--source", "kubernetes", "--ca-secret", CA_SECRET, "--kubeconfig", str(kubeconfig),
            "--trust-domain", "td", "--root-namespace", ROOT_NAMESPACE, "--grpc-address", "127.0.0.1:0",
            "--bootstrap-address", "127.0.0.1:0", "--admin-address", "127.0.0.1:0",
            "--webhook-address", "127.0.0.1:0", "--log-format", "json",
            env={**os.environ, "POD_NAME": pod_name},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        return cls(process)

    async def wait_for_serving(self) -> None:
        assert self.process.stdout is not None
        for _ in range(10):
            raw = await asyncio.wait_for(self.process.stdout.readline(), LINE_TIMEOUT)
            if not raw:
                break
            self.lines.append(raw.decode())
            if SERVING_LINE.search(self.lines[-1]):
                return
        stderr = await self.stop()
        pytest.fail(f"controlplane serve did not start; stdout {self.lines}, stderr:\n{stderr}")

    async def stop(self) -> str:
        """Send SIGTERM and return stderr; kill the process if it does not exit in time."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            _stdout, stderr = await asyncio.wait_for(self.process.communicate(), EXIT_TIMEOUT)
        except TimeoutError:
            self.process.kill()
            _stdout, stderr = await self.process.communicate()
        return stderr.decode()


@pytest.fixture()
async def replicas(api_server, emulator, kube, tmp_path):
    declare_policy_crds(emulator, "security.idmesh.io")
    await kube(kube.core.create_namespace, {"metadata": {"name": ROOT_NAMESPACE}})
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", api_server.url)
    started: list[Replica] = []

    async def start(pod_name: str) -> Replica:
        replica = await Replica.start(kubeconfig, pod_name)
        started.append(replica)
        return replica

    try:
        yield start
    finally:
        for replica in started:
            await replica.stop()


async def test_replicas_share_ca_and_release_lease(replicas, kube):
    first = await replicas("controlplane-a")
    await first.wait_for_serving()
    second = await replicas("controlplane-b")
    await second.wait_for_serving()

    assert first.lines[0] == f"created a new CA for trust domain td in Secret {ROOT_NAMESPACE}/{CA_SECRET}\n"
    assert not [line for line in second.lines if line.startswith("created a new CA")]
    coordination = kubernetes.client.CoordinationV1Api(kube.api_client)
    lease = await read_json(kube, coordination.read_namespaced_lease, LEASE_NAME, ROOT_NAMESPACE)
    assert lease["spec"]["holderIdentity"].startswith("controlplane-a_")

    stderr = await first.stop()

    assert first.process.returncode == 0, stderr
    assert '"event": "leader.released"' in stderr
    lease = await read_json(kube, coordination.read_namespaced_lease, LEASE_NAME, ROOT_NAMESPACE)
    # The released Lease has no holder, unless the second replica has taken it already.
    assert not (lease["spec"].get("holderIdentity") or "").startswith("controlplane-a_")
