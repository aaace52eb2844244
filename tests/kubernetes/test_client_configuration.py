"""Client settings come from a kubeconfig or the in-cluster environment, or fail with a clear error."""

from __future__ import annotations

import pathlib

import pytest
import yaml
from kubernetes.config.incluster_config import SERVICE_TOKEN_FILENAME

from controlplane.errors import KubernetesConfigError, SourceError
from controlplane.sources.kubernetes import KubernetesSource, load_client_configuration
from tests.kubernetes.conftest import FAST_SETTINGS, within


def _write_kubeconfig(path, server):
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "emulator", "cluster": {"server": server}}],
                "users": [{"name": "tester", "user": {"token": "not-checked-by-the-emulator"}}],
                "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "tester"}}],
                "current-context": "emulator",
            }
        )
    )
    return path


async def test_source_runs_from_kubeconfig(tmp_path, monkeypatch, api_server, kube):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    await kube(kube.core.create_namespace, {"metadata": {"name": "payments"}})
    kubeconfig = _write_kubeconfig(tmp_path / "config", api_server.url)

    configuration = load_client_configuration(kubeconfig=str(kubeconfig))
    assert configuration.host == api_server.url

    async with KubernetesSource(configuration, settings=FAST_SETTINGS) as source:
        await within(source.ready.wait())
        assert source.get(("v1/Namespace", "", "payments")) is not None


def test_missing_kubeconfig_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    missing = tmp_path / "absent"

    with pytest.raises(KubernetesConfigError) as raised:
        load_client_configuration(kubeconfig=str(missing))

    assert isinstance(raised.value, SourceError)
    assert str(missing) in str(raised.value)
    assert raised.value.__cause__ is not None


def test_in_cluster_without_token_is_a_config_error(monkeypatch):
    if pathlib.Path(SERVICE_TOKEN_FILENAME).exists():
        pytest.skip("running inside a pod: the service account token exists")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "6443")

    with pytest.raises(KubernetesConfigError) as raised:
        load_client_configuration()

    assert raised.value.source == "in-cluster"
    assert raised.value.__cause__ is not None
