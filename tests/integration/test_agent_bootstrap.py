"""The agent's Envoy bootstrap: accepted by the real Envoy, with the sidecar contract's names."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from controlplane.agent.bootstrap import BootstrapParams, bootstrap_json, build_bootstrap, node_id

pytestmark = pytest.mark.envoy


def params(**overrides) -> BootstrapParams:
    values = dict(
        node_id=node_id(instance_ip="127.0.10.2", workload="ledger", namespace="payments"),
        namespace="payments", service_account="ledger", workload="ledger", instance_ip="127.0.10.2",
        mode="local", app_address="127.0.10.3", control_plane_host="127.0.0.1", control_plane_port=15012,
        control_plane_id="spiffe://example.org/ns/idmesh-system/sa/idmesh-controlplane",
        control_plane_sni="idmesh-controlplane.idmesh-system.svc", sds_socket="/run/idmesh/sds.sock",
        admin_port=15000, labels={"app": "ledger"},
    )
    values.update(overrides)
    return BootstrapParams(**values)


@pytest.mark.parametrize(("ads_type", "api_type"), [("grpc", "GRPC"), ("delta", "DELTA_GRPC")])
def test_envoy_validates_bootstrap(tmp_path: Path, envoy_binary: str, ads_type: str, api_type: str) -> None:
    path = tmp_path / "envoy.json"
    path.write_text(bootstrap_json(build_bootstrap(params(ads_type=ads_type))))

    result = subprocess.run(
        [envoy_binary, "--mode", "validate", "-c", str(path), "--disable-hot-restart"],
        capture_output=True, text=True, timeout=60,
    )

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert json.loads(path.read_text())["dynamic_resources"]["ads_config"]["api_type"] == api_type


def test_bootstrap_names_and_metadata() -> None:
    document = json.loads(bootstrap_json(build_bootstrap(params(control_plane_host="idmesh-controlplane.idmesh-system.svc"))))

    node = document["node"]
    assert node["id"] == "sidecar~127.0.10.2~ledger.payments~payments.svc.cluster.local"
    assert node["metadata"] == {
        "NAMESPACE": "payments", "SERVICE_ACCOUNT": "ledger", "WORKLOAD_NAME": "ledger",
        "INSTANCE_IP": "127.0.10.2", "PROXY_MODE": "local", "APP_ADDRESS": "127.0.10.3",
        "LABELS": {"app": "ledger"},
    }
    assert document["admin"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 15000}
    clusters = {c["name"]: c for c in document["static_resources"]["clusters"]}
    assert sorted(clusters) == ["sds-grpc", "xds-grpc"]
    assert clusters["xds-grpc"]["type"] == "STRICT_DNS"
    pipe = clusters["sds-grpc"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["pipe"]
    assert pipe == {"path": "/run/idmesh/sds.sock"}
    tls = clusters["xds-grpc"]["transport_socket"]["typed_config"]["common_tls_context"]
    assert tls["tls_certificate_sds_secret_configs"][0]["name"] == "default"
    validation = tls["combined_validation_context"]
    assert validation["validation_context_sds_secret_config"]["name"] == "ROOTCA"
    assert validation["default_validation_context"]["match_typed_subject_alt_names"] == [
        {"san_type": "URI", "matcher": {"exact": "spiffe://example.org/ns/idmesh-system/sa/idmesh-controlplane"}}
    ]
