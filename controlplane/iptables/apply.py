"""Install and remove the capture rules with the iptables binaries, in the current network namespace."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from controlplane.errors import MeshError
from controlplane.iptables.rules import (
    CaptureSettings,
    Family,
    cleanup_commands,
    iptables_rules,
    restore_input,
)
from controlplane.log import get_logger

log = get_logger("iptables")

TOOLS: dict[int, tuple[str, str]] = {4: ("iptables", "iptables-restore"), 6: ("ip6tables", "ip6tables-restore")}
# Seconds to wait for the xtables lock that other iptables users in the namespace may hold.
LOCK_WAIT_SECONDS = "5"
COMMAND_TIMEOUT_SECONDS = 30
# Upper bound on copies of one jump rule that cleanup deletes, so a failing binary cannot loop forever.
MAX_DUPLICATE_JUMPS = 32


class IptablesError(MeshError):
    """A failed iptables command, with its `command`, `returncode` and `stderr`."""


def _run(argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, input=stdin, capture_output=True, text=True,
                              timeout=COMMAND_TIMEOUT_SECONDS, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise IptablesError(f"{argv[0]} could not be run: {exc}", command=argv, returncode=-1, stderr="") from exc


def ipv6_available() -> bool:
    """Tell whether this network namespace has IPv6 and ip6tables-restore is installed."""
    return Path("/proc/net/if_inet6").exists() and shutil.which(TOOLS[6][1]) is not None


def remove_rules(family: Family) -> None:
    """Delete the idmesh jump rules and chains; missing ones are not an error."""
    iptables = TOOLS[family][0]
    for command in cleanup_commands():
        argv = [iptables, "-w", LOCK_WAIT_SECONDS, *command]
        if "-D" in command:
            for _ in range(MAX_DUPLICATE_JUMPS):
                if _run(argv).returncode != 0:
                    break
        else:
            # Fails with "No chain/target/match by that name" when the chain is absent.
            _run(argv)
    log.info("iptables.rules.removed", family=family)


def install_rules(settings: CaptureSettings, family: Family) -> None:
    """Replace any earlier idmesh rules with the ones for `settings`; raise `IptablesError` on failure."""
    remove_rules(family)
    rules = iptables_rules(settings, family=family)
    argv = [TOOLS[family][1], "--noflush", "-w", LOCK_WAIT_SECONDS]
    result = _run(argv, stdin=restore_input(rules))
    if result.returncode != 0:
        raise IptablesError(
            f"{argv[0]} failed with exit code {result.returncode}: {result.stderr.strip()}",
            command=argv,
            returncode=result.returncode,
            stderr=result.stderr,
        )
    log.info("iptables.rules.installed", family=family, rules=len(rules))
