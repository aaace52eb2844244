"""Fixtures for the `test_serve_kubernetes_*` modules: the control plane in Kubernetes mode, in-process.

`control_plane` runs what `controlplane serve --source kubernetes --ca-secret idmesh-ca` runs,
against the API emulator of `k8s_extras` through a kubeconfig file, with every port on
127.0.0.1:0. A test module overrides `serve_overrides` to set more `ServeOptions` fields.
Modules that use these fixtures also import `api_server` from `k8s_extras`, so that the
emulator serves Secrets, Leases and TokenReviews.

This module has no tests of its own.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml

from controlplane.server.serve import ControlPlane, ServeOptions, build_control_plane, kubernetes_mode_for
from tests.kubernetes.conftest import ApiServer, Kube, declare_policy_crds, within

TRUST_DOMAIN = "td"
ROOT_NAMESPACE = "idmesh-system"
CA_SECRET = "idmesh-ca"
POLICY_GROUP, POLICY_VERSION = "security.idmesh.io", "v1"
START_TIMEOUT = 20.0


def utc_now() -> datetime:
    return datetime.now(UTC)


def write_kubeconfig(path: Path, server_url: str) -> Path:
    """Write a kubeconfig whose current context is the emulator at `server_url`, with no credentials."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "emulator", "cluster": {"server": server_url}}],
        "users": [{"name": "tester", "user": {}}],
        "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "tester"}}],
        "current-context": "emulator",
    }
    path.write_text(yaml.safe_dump(config))
    return path


async def start_control_plane(options: ServeOptions) -> ControlPlane:
    """Load the CA from its Secret, build and start the control plane, as `serve.run` does."""
    kubernetes = kubernetes_mode_for(options, clock=utc_now)
    assert kubernetes is not None
    try:
        ca = await within(kubernetes.load_ca(secret_name=options.ca_secret, trust_domain=options.trust_domain),
                          timeout=START_TIMEOUT)
        plane = build_control_plane(options, ca, clock=utc_now, kubernetes=kubernetes)
    except BaseException:
        await kubernetes.stop()
        raise
    try:
        await within(plane.start(), timeout=START_TIMEOUT)
    except BaseException:
        await plane.stop()
        raise
    return plane


@pytest.fixture()
def serve_overrides() -> dict[str, Any]:
    return {}


@pytest_asyncio.fixture()
async def control_plane(
    api_server: ApiServer, emulator: Any, kube: Kube, tmp_path: Path, serve_overrides: dict[str, Any]
) -> AsyncIterator[ControlPlane]:
    declare_policy_crds(emulator, POLICY_GROUP)
    await kube(kube.core.create_namespace, {"metadata": {"name": ROOT_NAMESPACE}})
    options = ServeOptions(
        ca_secret=CA_SECRET,
        trust_domain=TRUST_DOMAIN,
        root_namespace=ROOT_NAMESPACE,
        grpc_address="127.0.0.1:0",
        bootstrap_address="127.0.0.1:0",
        admin_address="127.0.0.1:0",
        source="kubernetes",
        kubeconfig=write_kubeconfig(tmp_path / "kubeconfig", api_server.url),
        push_debounce_seconds=0.01,
        push_max_delay_seconds=0.1,
        **serve_overrides,
    )
    plane = await start_control_plane(options)
    try:
        await within(plane.mesh.kubernetes_source.ready.wait(), timeout=START_TIMEOUT)
        yield plane
    finally:
        await plane.stop()


async def eventually(probe: Callable[[], Awaitable[Any]], *, what: str, timeout: float = 10.0) -> Any:
    """Await `probe()` every 50 ms until it returns something truthy, and return that; fail after `timeout` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = await probe()
        if result:
            return result
        if loop.time() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}; last result {result!r}")
        await asyncio.sleep(0.05)


async def read_json(kube: Kube, call: Callable[..., Any], *args: Any) -> dict[str, Any] | None:
    """Return the object a client read call returns, or None on 404."""
    try:
        response = await kube(call, *args, _preload_content=False)
    except Exception as exc:  # noqa: BLE001 - only 404 is expected; anything else is re-raised
        if getattr(exc, "status", None) == 404:
            return None
        raise
    return json.loads(response.data)


async def create_policy(kube: Kube, namespace: str, name: str, spec: dict[str, Any]) -> None:
    body = {"apiVersion": f"{POLICY_GROUP}/{POLICY_VERSION}", "kind": "AuthorizationPolicy",
            "metadata": {"name": name}, "spec": spec}
    await kube(kube.custom.create_namespaced_custom_object, POLICY_GROUP, POLICY_VERSION, namespace,
               "authorizationpolicies", body)
