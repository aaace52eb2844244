"""mesh-agent flags and their environment variables."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from controlplane.agent.cli import parse_config
from controlplane.agent.errors import AgentError
from controlplane.agent.sds_server import prepare_socket_path
from controlplane.errors import ConfigError

BASE = ["--ca-root", "/etc/idmesh/root-cert.pem", "--namespace", "payments", "--service-account", "ledger",
        "--workload", "ledger", "--instance-ip", "10.0.0.7"]


def test_defaults_follow_the_sidecar_contract() -> None:
    config, logging = parse_config(BASE, {})

    assert str(config.spiffe_id) == "spiffe://cluster.local/ns/payments/sa/ledger"
    assert config.control_plane == "localhost:15012"
    assert config.control_plane_bootstrap == "localhost:15013"
    assert str(config.control_plane_id) == "spiffe://cluster.local/ns/idmesh-system/sa/idmesh-controlplane"
    assert config.control_plane_name == "idmesh-controlplane.idmesh-system.svc"
    assert config.envoy_admin_address == "127.0.0.1:15000"
    assert config.health_address == "127.0.0.1:15020"
    assert config.mode == "kubernetes"
    assert config.ads_type == "grpc"
    assert config.ttl_seconds == 0
    assert config.run_envoy is True
    assert logging == {"log_level": "info", "log_json": False}


def test_environment_fills_missing_flags() -> None:
    env = {"IDMESH_NAMESPACE": "shop", "IDMESH_SERVICE_ACCOUNT": "web", "IDMESH_WORKLOAD": "web",
           "IDMESH_INSTANCE_IP": "10.0.0.9", "IDMESH_CA_ROOT": "/r.pem", "IDMESH_NO_ENVOY": "true",
           "IDMESH_LABELS": "app=web", "IDMESH_TTL": "1h"}

    config, _ = parse_config([], env)

    assert str(config.spiffe_id) == "spiffe://cluster.local/ns/shop/sa/web"
    assert config.run_envoy is False
    assert dict(config.labels) == {"app": "web"}
    assert config.ttl_seconds == 3600


def test_flag_wins_over_environment() -> None:
    config, _ = parse_config(BASE, {"IDMESH_NAMESPACE": "shop"})

    assert config.namespace == "payments"


def test_labels_and_durations_parse() -> None:
    config, _ = parse_config(BASE + ["--labels", "app=ledger, version=v1", "--ttl", "90s", "--envoy-admin-port", "15100"], {})

    assert dict(config.labels) == {"app": "ledger", "version": "v1"}
    assert config.ttl_seconds == 90
    assert config.envoy_admin_address == "127.0.0.1:15100"


def test_bootstrap_address_defaults_to_control_plane_host() -> None:
    config, _ = parse_config(BASE + ["--control-plane", "127.0.5.1:16000"], {})

    assert config.control_plane_bootstrap == "127.0.5.1:15013"


def test_token_comes_from_file_not_flag(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("abc\n")

    config, _ = parse_config(BASE + ["--token-file", str(token_file)], {})

    assert config.read_token() == "abc"
    with pytest.raises(SystemExit):
        parse_config(BASE + ["--token", "abc"], {})


def test_token_falls_back_to_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IDMESH_TOKEN", "from-env")

    config, _ = parse_config(BASE, {})

    assert config.read_token() == "from-env"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--ttl", "ten"], "duration 'ten'"),
        (["--labels", "novalue"], "label 'novalue' is not key=value"),
        (["--control-plane", "nohost"], "'nohost' is not HOST:PORT"),
        (["--log-level", "loud"], "--log-level 'loud'"),
        (["--namespace", "a/b"], "invalid namespace 'a/b'"),
        (["--control-plane-id", "https://x"], "must start with 'spiffe://'"),
    ],
)
def test_invalid_values_name_the_value(extra: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config(BASE + extra, {})


def test_missing_identity_names_flag_and_variable() -> None:
    with pytest.raises(ConfigError, match=r"--service-account \(or \$IDMESH_SERVICE_ACCOUNT\) is required"):
        parse_config(["--ca-root", "/r.pem", "--namespace", "a", "--workload", "w", "--instance-ip", "1.2.3.4"], {})


def test_socket_directory_open_to_others_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "open"
    directory.mkdir(mode=0o777)
    directory.chmod(0o777)

    with pytest.raises(AgentError, match="mode 777, open to other users"):
        prepare_socket_path(directory / "sds.sock")


def test_socket_directory_is_created_private(tmp_path: Path) -> None:
    prepare_socket_path(tmp_path / "new" / "sds.sock")

    assert (tmp_path / "new").stat().st_mode & 0o777 == 0o700


def test_regular_file_at_socket_path_is_not_replaced(tmp_path: Path) -> None:
    directory = tmp_path / "run"
    directory.mkdir(mode=0o700)
    (directory / "sds.sock").write_text("data")

    with pytest.raises(AgentError, match="is not a socket"):
        prepare_socket_path(directory / "sds.sock")
    assert (directory / "sds.sock").read_text() == "data"
