"""`idmesh-iptables`: install (or with `--cleanup` remove) the sidecar's capture rules.

The injected init container runs it once, as root with NET_ADMIN and NET_RAW, in the pod's
network namespace before any application container starts. Running it again replaces the
rules instead of adding a second copy.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from controlplane.iptables.apply import IptablesError, install_rules, ipv6_available, remove_rules
from controlplane.iptables.rules import (
    PROXY_GID,
    PROXY_UID,
    CaptureConfigError,
    CaptureSettings,
    iptables_rules,
    parse_cidr_list,
    parse_port_list,
    restore_input,
)
from controlplane.log import configure
from controlplane.translate.resources import INBOUND_CAPTURE_PORT, OUTBOUND_CAPTURE_PORT


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="idmesh-iptables",
        allow_abbrev=False,
        description="Redirect the pod's TCP traffic to the sidecar (nat table, IPv4 and IPv6).",
    )
    add = p.add_argument
    add("--proxy-uid", type=int, default=PROXY_UID, help=f"UID of Envoy and mesh-agent, never captured; default {PROXY_UID}")
    add("--proxy-gid", type=int, default=PROXY_GID, help=f"GID of Envoy and mesh-agent, never captured; default {PROXY_GID}")
    add("--inbound-capture-port", type=int, default=INBOUND_CAPTURE_PORT, help=f"Envoy's inbound listener port; default {INBOUND_CAPTURE_PORT}")
    add("--outbound-capture-port", type=int, default=OUTBOUND_CAPTURE_PORT, help=f"Envoy's outbound listener port; default {OUTBOUND_CAPTURE_PORT}")
    add("--exclude-inbound-ports", default="", help="comma-separated destination ports that inbound connections reach directly")
    add("--exclude-outbound-ports", default="", help="comma-separated destination ports that outbound connections reach directly")
    add("--exclude-outbound-ip-ranges", default="", help="comma-separated CIDRs that outbound connections reach directly")
    add("--ipv6", choices=("auto", "on", "off"), default="auto",
        help="also install ip6tables rules: auto when the namespace has IPv6 and ip6tables-restore exists; default auto")
    add("--cleanup", action="store_true", help="remove the rules instead of installing them")
    add("--dry-run", action="store_true", help="print the iptables-restore input and change nothing")
    return p


def settings_from_args(args: argparse.Namespace) -> CaptureSettings:
    """Build `CaptureSettings` from parsed options; raise `CaptureConfigError` for bad lists."""
    return CaptureSettings(
        proxy_uid=args.proxy_uid,
        proxy_gid=args.proxy_gid,
        inbound_capture_port=args.inbound_capture_port,
        outbound_capture_port=args.outbound_capture_port,
        exclude_inbound_ports=parse_port_list(args.exclude_inbound_ports, source="--exclude-inbound-ports"),
        exclude_outbound_ports=parse_port_list(args.exclude_outbound_ports, source="--exclude-outbound-ports"),
        exclude_outbound_ip_ranges=parse_cidr_list(args.exclude_outbound_ip_ranges, source="--exclude-outbound-ip-ranges"),
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        settings = settings_from_args(args)
    except CaptureConfigError as exc:
        print(f"idmesh-iptables: {exc}", file=sys.stderr)
        return 2
    families = [4]
    if args.ipv6 == "on" or (args.ipv6 == "auto" and ipv6_available()):
        families.append(6)

    if args.dry_run:
        for family in families:
            print(f"# IPv{family}")
            print(restore_input(iptables_rules(settings, family=family)), end="")
        return 0

    configure(level="info")
    try:
        for family in families:
            if args.cleanup:
                remove_rules(family)
            else:
                install_rules(settings, family)
    except IptablesError as exc:
        print(f"idmesh-iptables: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
