"""The commands in docs/authz-walkthrough.md print what the page shows, on a fresh example mesh.

Each code block of the page that starts with `$ meshctl authz check` is run against a local
mesh of examples/payments-ledger, and its output must equal the block's text. Only the
workload addresses differ between runs, because each test mesh gets its own loopback /16, so
both sides have the second octet of 127.x.y.z replaced before comparing.
"""

from __future__ import annotations

import asyncio
import io
import re
import shlex
from pathlib import Path

import pytest

from controlplane.local.client import http_call
from controlplane.translate.resources import OUTBOUND_CAPTURE_PORT
from meshctl.cli import main
from tests.integration.local_mesh import EXAMPLE, REPO, running_mesh

pytestmark = [pytest.mark.envoy, pytest.mark.slow]

WALKTHROUGH = REPO / "docs" / "authz-walkthrough.md"
PROMPT = "$ meshctl "
# A workload address 127.<subnet>.y.z; 127.0.0.1 stays as it is.
_ADDRESS = re.compile(r"(?<![\d.])127\.(?!0\.)\d+\.(\d+\.\d+)(?![\d.])")


def documented_commands() -> list[tuple[list[str], str]]:
    """(argv, expected output) for every meshctl block of the walkthrough."""
    blocks: list[list[str]] = []
    current: list[str] | None = None
    for line in WALKTHROUGH.read_text().splitlines():
        if line.startswith("```"):
            if current is None:
                current = []
            else:
                blocks.append(current)
                current = None
        elif current is not None:
            current.append(line)
    return [
        (shlex.split(block[0][len(PROMPT):]), "".join(f"{line}\n" for line in block[1:]))
        for block in blocks
        if block and block[0].startswith(PROMPT)
    ]


def without_subnet(text: str) -> str:
    return _ADDRESS.sub(lambda found: f"127.N.{found.group(1)}", text)


def run_meshctl(argv: list[str], admin_url: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main([*argv, "--admin-url", admin_url], stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_walkthrough_lists_the_commands_it_explains():
    commands = documented_commands()
    assert len(commands) == 8
    assert all(argv[:2] == ["authz", "check"] for argv, _expected in commands)


async def test_walkthrough_output_matches_a_fresh_run(tmp_path: Path) -> None:
    async with running_mesh(EXAMPLE, tmp_path / "run") as mesh:
        results = [
            (argv, expected, await asyncio.to_thread(run_meshctl, argv, mesh.admin_url))
            for argv, expected in documented_commands()
        ]
        # The symptom the page starts from: Envoy itself denies the worker's GET.
        worker = mesh.plan.find("payments/worker")
        symptom = await http_call(
            worker.address, OUTBOUND_CAPTURE_PORT, method="GET", path="/v1/settlements", authority="ledger:8080", timeout=5
        )

    assert symptom.result == 403
    assert symptom.detail == "RBAC: access denied"
    for argv, expected, (code, out, err) in results:
        assert (code, err) == (0, ""), argv
        assert without_subnet(out) == without_subnet(expected), " ".join(argv)
