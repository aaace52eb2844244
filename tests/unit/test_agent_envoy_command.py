"""The Envoy command line the agent runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from controlplane.agent.envoy_process import EnvoyError, EnvoyOptions, envoy_command


def test_command_drains_replaced_listeners_quickly() -> None:
    command = envoy_command(EnvoyOptions(bootstrap_path=Path("/b.json"), binary="/bin/envoy"))

    assert command[:3] == ["/bin/envoy", "-c", "/b.json"]
    assert "--disable-hot-restart" in command
    assert command[command.index("--drain-time-s") + 1] == "1"
    assert command[command.index("--drain-strategy") + 1] == "immediate"
    assert command[command.index("--file-flush-interval-msec") + 1] == "1000"


def test_command_rejects_unknown_log_level() -> None:
    with pytest.raises(EnvoyError, match="log level 'loud'"):
        envoy_command(EnvoyOptions(bootstrap_path=Path("/b.json"), binary="/bin/envoy", log_level="loud"))
