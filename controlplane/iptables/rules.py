"""The nat rules that send a pod's TCP traffic through its sidecar, as a pure function of settings.

Inbound: every TCP connection that arrives at the pod (nat PREROUTING) is redirected to Envoy's
inbound listener on 15006, except the agent health port 15020 (the kubelet probes it) and
ports excluded by configuration. Nothing else is exempt, so a connection from outside the pod
to 15001 also lands on the inbound listener and cannot use Envoy's outbound listener as an
open proxy.

Outbound: every TCP connection the pod opens (nat OUTPUT) is redirected to Envoy's outbound
listener on 15001, except connections

- opened by the proxy's UID or GID (Envoy and mesh-agent; without this Envoy's own upstream
  connections would loop back into Envoy),
- leaving through the loopback interface (the application talking to itself, to 127.0.0.1, or to
  its own pod IP),
- to excluded destination CIDRs or destination ports.

Only the nat table is touched and only TCP is captured; UDP (DNS included) passes unchanged.
REDIRECT rewrites the destination, and Envoy reads the original one back with SO_ORIGINAL_DST.
"""

from __future__ import annotations

import ipaddress
import shlex
from dataclasses import dataclass
from typing import Iterable, Literal

from controlplane.errors import ConfigError
from controlplane.translate.resources import (
    AGENT_HEALTH_PORT,
    INBOUND_CAPTURE_PORT,
    OUTBOUND_CAPTURE_PORT,
)

PROXY_UID = 1337
PROXY_GID = 1337

INBOUND_CHAIN = "IDMESH_INBOUND"
IN_REDIRECT_CHAIN = "IDMESH_IN_REDIRECT"
OUTPUT_CHAIN = "IDMESH_OUTPUT"
REDIRECT_CHAIN = "IDMESH_REDIRECT"
CHAINS = (INBOUND_CHAIN, IN_REDIRECT_CHAIN, OUTPUT_CHAIN, REDIRECT_CHAIN)

# The rules that hook our chains into the built-in ones; cleanup deletes exactly these.
JUMP_RULES = (
    ("-A", "PREROUTING", "-p", "tcp", "-j", INBOUND_CHAIN),
    ("-A", "OUTPUT", "-p", "tcp", "-j", OUTPUT_CHAIN),
)

# The kubelet probes the agent's readiness endpoint on the pod IP, so it must reach the agent.
ALWAYS_EXCLUDED_INBOUND_PORTS = (AGENT_HEALTH_PORT,)

Family = Literal[4, 6]


class CaptureConfigError(ConfigError, ValueError):
    """An invalid port list or CIDR list for traffic capture; `value` is the text at fault."""


@dataclass(frozen=True, slots=True)
class CaptureSettings:
    """Capture settings of one pod. Ports are TCP destination ports, and ranges are CIDRs."""

    proxy_uid: int = PROXY_UID
    proxy_gid: int = PROXY_GID
    inbound_capture_port: int = INBOUND_CAPTURE_PORT
    outbound_capture_port: int = OUTBOUND_CAPTURE_PORT
    exclude_inbound_ports: tuple[int, ...] = ()
    exclude_outbound_ports: tuple[int, ...] = ()
    exclude_outbound_ip_ranges: tuple[str, ...] = ()


def parse_port_list(text: str, *, source: str) -> tuple[int, ...]:
    """Parse `"8080, 9090"` into sorted unique ports; `source` names the option in errors."""
    ports: set[int] = set()
    for item in filter(None, (part.strip() for part in text.split(","))):
        if not item.isdigit() or not 1 <= int(item) <= 65535:
            raise CaptureConfigError(
                f'{source}: "{item}" is not a port; use comma-separated numbers from 1 to 65535',
                source=source,
                value=text,
            )
        ports.add(int(item))
    return tuple(sorted(ports))


def parse_cidr_list(text: str, *, source: str) -> tuple[str, ...]:
    """Parse `"10.0.0.0/8, fd00::/8"` into normalised CIDRs in input order, without duplicates."""
    ranges: list[str] = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        try:
            network = ipaddress.ip_network(item, strict=False)
        except ValueError as exc:
            raise CaptureConfigError(
                f'{source}: "{item}" is not an IP address or CIDR such as 10.0.0.0/8 or fd00::/8',
                source=source,
                value=text,
            ) from exc
        if str(network) not in ranges:
            ranges.append(str(network))
    return tuple(ranges)


def iptables_rules(settings: CaptureSettings, *, family: Family = 4) -> list[list[str]]:
    """Return the nat table rules for `family` as iptables arguments, chain creation first.

    Each rule is either `["-N", CHAIN]` or `["-A", CHAIN, ...match..., "-j", TARGET, ...]`, ready
    for `iptables -t nat` or, through `restore_input`, for `iptables-restore`.
    """
    rules: list[list[str]] = [["-N", chain] for chain in CHAINS]
    rules.append(["-A", IN_REDIRECT_CHAIN, "-p", "tcp", "-j", "REDIRECT",
                  "--to-ports", str(settings.inbound_capture_port)])
    rules.append(["-A", REDIRECT_CHAIN, "-p", "tcp", "-j", "REDIRECT",
                  "--to-ports", str(settings.outbound_capture_port)])

    inbound_excluded = sorted(set(ALWAYS_EXCLUDED_INBOUND_PORTS) | set(settings.exclude_inbound_ports))
    for port in inbound_excluded:
        rules.append(["-A", INBOUND_CHAIN, "-p", "tcp", "--dport", str(port), "-j", "RETURN"])
    rules.append(["-A", INBOUND_CHAIN, "-p", "tcp", "-j", IN_REDIRECT_CHAIN])

    rules.append(["-A", OUTPUT_CHAIN, "-m", "owner", "--uid-owner", str(settings.proxy_uid), "-j", "RETURN"])
    rules.append(["-A", OUTPUT_CHAIN, "-m", "owner", "--gid-owner", str(settings.proxy_gid), "-j", "RETURN"])
    rules.append(["-A", OUTPUT_CHAIN, "-o", "lo", "-j", "RETURN"])
    for cidr in _ranges_of_family(settings.exclude_outbound_ip_ranges, family):
        rules.append(["-A", OUTPUT_CHAIN, "-d", cidr, "-j", "RETURN"])
    for port in sorted(set(settings.exclude_outbound_ports)):
        rules.append(["-A", OUTPUT_CHAIN, "-p", "tcp", "--dport", str(port), "-j", "RETURN"])
    rules.append(["-A", OUTPUT_CHAIN, "-j", REDIRECT_CHAIN])

    rules.extend(list(jump) for jump in JUMP_RULES)
    return rules


def _ranges_of_family(ranges: Iterable[str], family: Family) -> list[str]:
    return [cidr for cidr in ranges if ipaddress.ip_network(cidr, strict=False).version == family]


def restore_input(rules: list[list[str]]) -> str:
    """Render nat `rules` as `iptables-restore` input (meant for `--noflush`)."""
    lines = ["*nat"]
    for rule in rules:
        if rule[0] == "-N":
            lines.append(f":{rule[1]} - [0:0]")
    for rule in rules:
        if rule[0] != "-N":
            lines.append(shlex.join(rule))
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def cleanup_commands() -> list[list[str]]:
    """Return the `iptables` argument lists that remove every rule and chain `iptables_rules` adds.

    Deleting a jump rule removes one copy, so a caller repeats those until iptables reports that
    no such rule exists. Chains are flushed before any is deleted because they refer to each other.
    """
    commands = [["-t", "nat", "-D", *jump[1:]] for jump in JUMP_RULES]
    commands += [["-t", "nat", "-F", chain] for chain in CHAINS]
    commands += [["-t", "nat", "-X", chain] for chain in CHAINS]
    return commands
