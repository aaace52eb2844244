"""The real Envoy accepts what the translator generates (`envoy --mode validate`).

Two bootstraps are checked per proxy. The static one inlines everything: EDS clusters become
STATIC with their load assignment, RDS becomes an inline route configuration, and the `default`
and `ROOTCA` secrets are static secrets holding test certificates made here. The dynamic one
keeps the translator's output exactly as it is served (EDS, RDS and `ROOTCA` over ADS,
`default` over the agent's SDS socket) inside the agent's bootstrap.
"""

from __future__ import annotations

import json
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from google.protobuf import json_format

from controlplane.agent.bootstrap import BootstrapParams, build_bootstrap
from controlplane.model.types import MeshState, Proxy
from controlplane.translate import ProxyConfig, translate
from controlplane.translate.resources import CLUSTER, ENDPOINT, LISTENER, ROOTCA_SECRET, ROUTE, WORKLOAD_SECRET
from controlplane.translate.validate import regex_error
from tests.golden.meshes import LEDGER, WEB, proxy_for, small_mesh, synthetic_mesh

pytestmark = pytest.mark.envoy

ENVOY_TIMEOUT_SECONDS = 120


def _certificates(tmp_path: Path) -> dict[str, str]:
    """A test CA and an X.509-SVID for `spiffe://cluster.local/ns/ns0/sa/sa-0`, as PEM."""
    now = datetime.now(timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "idmesh test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(ca_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier("spiffe://cluster.local/ns/ns0/sa/sa-0")]),
            critical=True,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = leaf_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return {
        "ca": ca.public_bytes(serialization.Encoding.PEM).decode(),
        "cert": leaf.public_bytes(serialization.Encoding.PEM).decode(),
        "key": key_pem,
    }


def _inline(node: Any, routes: dict[str, Any]) -> Any:
    """Inline RDS route configurations and turn SDS references into static secret references."""
    if isinstance(node, list):
        return [_inline(item, routes) for item in node]
    if not isinstance(node, dict):
        return node
    result = {key: _inline(value, routes) for key, value in node.items()}
    if "rds" in result:
        result["routeConfig"] = routes[result.pop("rds")["routeConfigName"]]
    if result.get("name") in (WORKLOAD_SECRET, ROOTCA_SECRET) and "sdsConfig" in result:
        del result["sdsConfig"]
    return result


def static_bootstrap(config: ProxyConfig, certificates: dict[str, str]) -> dict[str, Any]:
    routes = {name: json_format.MessageToDict(message) for name, message in config.resources[ROUTE].items()}
    clusters = []
    for name, message in config.resources[CLUSTER].items():
        cluster = json_format.MessageToDict(message)
        if cluster.get("type") == "EDS":
            cluster["type"] = "STATIC"
            del cluster["edsClusterConfig"]
            cluster["loadAssignment"] = json_format.MessageToDict(config.resources[ENDPOINT][name])
        clusters.append(_inline(cluster, routes))
    listeners = [_inline(json_format.MessageToDict(message), routes) for message in config.resources[LISTENER].values()]
    secrets = [
        {
            "name": WORKLOAD_SECRET,
            "tlsCertificate": {
                "certificateChain": {"inlineString": certificates["cert"]},
                "privateKey": {"inlineString": certificates["key"]},
            },
        },
        {"name": ROOTCA_SECRET, "validationContext": {"trustedCa": {"inlineString": certificates["ca"]}}},
    ]
    return {
        "node": {"id": "sidecar~validate", "cluster": "validate"},
        "admin": {"address": {"socketAddress": {"address": "127.0.0.1", "portValue": 0}}},
        "staticResources": {"listeners": listeners, "clusters": clusters, "secrets": secrets},
    }


def dynamic_bootstrap(config: ProxyConfig, proxy: Proxy, tmp_path: Path) -> dict[str, Any]:
    params = BootstrapParams(
        node_id=proxy.node_id,
        namespace=proxy.namespace,
        service_account=proxy.service_account,
        workload=proxy.workload,
        instance_ip=proxy.ip,
        mode=proxy.mode,
        app_address=proxy.app_address,
        control_plane_host="127.0.0.1",
        control_plane_port=15012,
        control_plane_id="spiffe://cluster.local/ns/idmesh-system/sa/controlplane",
        sds_socket=str(tmp_path / "sds.sock"),
        admin_port=0,
    )
    bootstrap = json_format.MessageToDict(build_bootstrap(params))
    static = bootstrap["staticResources"]
    static["clusters"] += [json_format.MessageToDict(m) for m in config.resources[CLUSTER].values()]
    static["listeners"] = [json_format.MessageToDict(m) for m in config.resources[LISTENER].values()]
    return bootstrap


def run_validate(envoy_binary: str, bootstrap: dict[str, Any], path: Path) -> subprocess.CompletedProcess:
    path.write_text(json.dumps(bootstrap, indent=1, sort_keys=True))
    return subprocess.run(
        [envoy_binary, "--mode", "validate", "-c", str(path), "--disable-hot-restart", "--log-level", "warn"],
        capture_output=True,
        text=True,
        timeout=ENVOY_TIMEOUT_SECONDS,
        check=False,
    )


def assert_accepted(result: subprocess.CompletedProcess, path: Path) -> None:
    log = (result.stderr + result.stdout)[-4000:]
    assert result.returncode == 0, f"Envoy rejected {path} (exit {result.returncode}):\n{log}"


def _cases() -> list[tuple[str, MeshState, Proxy]]:
    many = synthetic_mesh(services=50, policies=60)
    small = small_mesh()
    return [
        ("many-http-local", many, proxy_for(many.workloads[0], ip="127.1.0.1", app_address="127.0.30.1")),
        ("many-http-kubernetes", many, proxy_for(many.workloads[0], ip="10.0.0.1", mode="kubernetes")),
        ("many-tcp-kubernetes", many, proxy_for(many.workloads[1], ip="10.0.0.2", mode="kubernetes")),
        ("many-grpc-local", many, proxy_for(many.workloads[2], ip="127.1.0.3", app_address="127.0.30.3")),
        ("small-ledger-local", small, proxy_for(LEDGER, ip=LEDGER.ip, app_address="127.0.30.4")),
        ("small-ledger-kubernetes", small, proxy_for(LEDGER, ip="10.0.0.4", mode="kubernetes")),
        ("small-web-local", small, proxy_for(WEB, ip=WEB.ip, app_address="127.0.30.5")),
    ]


CASES = _cases()


@pytest.mark.parametrize(("label", "state", "proxy"), CASES, ids=[case[0] for case in CASES])
def test_envoy_accepts_static_bootstrap(envoy_binary, tmp_path, label, state, proxy) -> None:
    config = translate(state, proxy)
    assert config.resources[LISTENER], "the case must produce listeners to be worth validating"
    path = tmp_path / f"{label}-static.json"
    assert_accepted(run_validate(envoy_binary, static_bootstrap(config, _certificates(tmp_path)), path), path)


@pytest.mark.parametrize(("label", "state", "proxy"), CASES, ids=[case[0] for case in CASES])
def test_envoy_accepts_config_as_served(envoy_binary, tmp_path, label, state, proxy) -> None:
    config = translate(state, proxy)
    path = tmp_path / f"{label}-dynamic.json"
    assert_accepted(run_validate(envoy_binary, dynamic_bootstrap(config, proxy, tmp_path), path), path)


def _bootstrap_with_route_regex(pattern: str, certificates: dict[str, str]) -> dict[str, Any]:
    state = small_mesh()
    config = translate(state, proxy_for(WEB, ip=WEB.ip, app_address="127.0.30.6"))
    bootstrap = static_bootstrap(config, certificates)
    listener = next(item for item in bootstrap["staticResources"]["listeners"] if item["name"] == "virtualOutbound")
    manager = listener["filterChains"][0]["filters"][0]["typedConfig"]
    virtual_host = manager["routeConfig"]["virtualHosts"][0]
    virtual_host["routes"].insert(
        0, {"match": {"safeRegex": {"regex": pattern}}, "route": {"cluster": virtual_host["routes"][0]["route"]["cluster"]}}
    )
    return bootstrap


@pytest.mark.parametrize(
    "pattern",
    ["/api/[a-z]+", "/api/[", "/api/a{150}"],
    ids=["valid", "unclosed-bracket", "program-too-large"],
)
def test_regex_check_agrees_with_envoy(envoy_binary, tmp_path, pattern) -> None:
    path = tmp_path / "regex.json"
    result = run_validate(envoy_binary, _bootstrap_with_route_regex(pattern, _certificates(tmp_path)), path)
    envoy_accepts = result.returncode == 0
    assert (regex_error(pattern) is None) == envoy_accepts, (
        f"regex_error({pattern!r}) = {regex_error(pattern)!r} but Envoy exit code is "
        f"{result.returncode}:\n{(result.stderr + result.stdout)[-2000:]}"
    )
