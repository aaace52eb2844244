"""The capture rules as a pure function: exact iptables-restore input, exclusions and input checks."""

from __future__ import annotations

import io
from contextlib import redirect_stderr, redirect_stdout

import pytest

from controlplane.iptables.cli import main
from controlplane.iptables.rules import (
    CaptureConfigError,
    CaptureSettings,
    cleanup_commands,
    iptables_rules,
    parse_cidr_list,
    parse_port_list,
    restore_input,
)

DEFAULT_RESTORE_INPUT = """\
*nat
:IDMESH_INBOUND - [0:0]
:IDMESH_IN_REDIRECT - [0:0]
:IDMESH_OUTPUT - [0:0]
:IDMESH_REDIRECT - [0:0]
-A IDMESH_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A IDMESH_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A IDMESH_INBOUND -p tcp --dport 15020 -j RETURN
-A IDMESH_INBOUND -p tcp -j IDMESH_IN_REDIRECT
-A IDMESH_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A IDMESH_OUTPUT -m owner --gid-owner 1337 -j RETURN
-A IDMESH_OUTPUT -o lo -j RETURN
-A IDMESH_OUTPUT -j IDMESH_REDIRECT
-A PREROUTING -p tcp -j IDMESH_INBOUND
-A OUTPUT -p tcp -j IDMESH_OUTPUT
COMMIT
"""


def outbound_returns(settings: CaptureSettings, family: int = 4) -> list[list[str]]:
    return [rule for rule in iptables_rules(settings, family=family)
            if rule[:2] == ["-A", "IDMESH_OUTPUT"] and rule[-1] == "RETURN"]


def test_default_restore_input_exact():
    assert restore_input(iptables_rules(CaptureSettings())) == DEFAULT_RESTORE_INPUT


def test_outbound_exclusions_return_before_redirect():
    settings = CaptureSettings(exclude_outbound_ports=(5432,), exclude_outbound_ip_ranges=("10.96.0.0/12",))
    rules = iptables_rules(settings)
    redirect = rules.index(["-A", "IDMESH_OUTPUT", "-j", "IDMESH_REDIRECT"])
    assert rules.index(["-A", "IDMESH_OUTPUT", "-d", "10.96.0.0/12", "-j", "RETURN"]) < redirect
    assert rules.index(["-A", "IDMESH_OUTPUT", "-p", "tcp", "--dport", "5432", "-j", "RETURN"]) < redirect


def test_inbound_exclusions_keep_health_port():
    rules = iptables_rules(CaptureSettings(exclude_inbound_ports=(9090, 15020)))
    inbound = [rule for rule in rules if rule[:2] == ["-A", "IDMESH_INBOUND"]]
    assert inbound == [
        ["-A", "IDMESH_INBOUND", "-p", "tcp", "--dport", "9090", "-j", "RETURN"],
        ["-A", "IDMESH_INBOUND", "-p", "tcp", "--dport", "15020", "-j", "RETURN"],
        ["-A", "IDMESH_INBOUND", "-p", "tcp", "-j", "IDMESH_IN_REDIRECT"],
    ]


def test_cidrs_split_by_family():
    settings = CaptureSettings(exclude_outbound_ip_ranges=("10.0.0.0/8", "fd00::/8"))
    v4 = [rule[3] for rule in outbound_returns(settings, 4) if "-d" in rule]
    v6 = [rule[3] for rule in outbound_returns(settings, 6) if "-d" in rule]
    assert v4 == ["10.0.0.0/8"]
    assert v6 == ["fd00::/8"]


def test_custom_uid_and_ports():
    settings = CaptureSettings(proxy_uid=2000, proxy_gid=2001, inbound_capture_port=16006, outbound_capture_port=16001)
    text = restore_input(iptables_rules(settings))
    assert "--uid-owner 2000 -j RETURN" in text
    assert "--gid-owner 2001 -j RETURN" in text
    assert "REDIRECT --to-ports 16006" in text
    assert "REDIRECT --to-ports 16001" in text


def test_cleanup_deletes_jumps_then_flushes_then_deletes_chains():
    commands = cleanup_commands()
    actions = [command[2] for command in commands]
    assert actions == ["-D", "-D", "-F", "-F", "-F", "-F", "-X", "-X", "-X", "-X"]
    assert commands[0] == ["-t", "nat", "-D", "PREROUTING", "-p", "tcp", "-j", "IDMESH_INBOUND"]


def test_port_list_parsed_sorted_unique():
    assert parse_port_list(" 8080,443, 8080 ,", source="test") == (443, 8080)


@pytest.mark.parametrize("text", ["0", "65536", "http", "80-90", "-1"])
def test_port_list_rejects_non_ports(text):
    with pytest.raises(CaptureConfigError, match=f'test: "{text}" is not a port'):
        parse_port_list(text, source="test")


def test_cidr_list_normalised():
    assert parse_cidr_list("10.1.2.3/8, 192.0.2.7, 10.0.0.0/8", source="test") == ("10.0.0.0/8", "192.0.2.7/32")


def test_cidr_list_rejects_garbage():
    with pytest.raises(CaptureConfigError, match='test: "10.0.0.0/33" is not an IP address or CIDR'):
        parse_cidr_list("10.0.0.0/33", source="test")


def test_cli_dry_run_prints_restore_input():
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["--dry-run", "--ipv6", "off"]) == 0
    assert out.getvalue() == "# IPv4\n" + DEFAULT_RESTORE_INPUT


def test_cli_bad_port_exits_2():
    err = io.StringIO()
    with redirect_stderr(err):
        assert main(["--dry-run", "--exclude-outbound-ports", "db"]) == 2
    assert err.getvalue() == (
        'idmesh-iptables: --exclude-outbound-ports: "db" is not a port; use comma-separated numbers from 1 to 65535\n'
    )
