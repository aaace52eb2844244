"""Golden files: the exact resources generated for the small mesh.

Regenerate after an intended change with `IDMESH_REGENERATE_GOLDEN=1 pytest
tests/unit/test_translate_golden.py`, then review the diff of tests/golden/*.json.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from google.protobuf import json_format

from controlplane.translate import ProxyConfig, translate
from controlplane.translate.resources import PUSH_ORDER, SHORT_NAMES
from tests.golden.meshes import LEDGER, WEB, proxy_for, small_mesh

GOLDEN_DIR = Path(__file__).resolve().parent.parent / "golden"
REGENERATE = os.environ.get("IDMESH_REGENERATE_GOLDEN") == "1"

CASES = {
    "ledger-local": (LEDGER, "local", LEDGER.ip),
    "ledger-kubernetes": (LEDGER, "kubernetes", "10.0.0.4"),
    "web-local": (WEB, "local", WEB.ip),
}


def render(config: ProxyConfig) -> str:
    """Serialize resources with MessageToJson (sorted keys) by type and name, plus problems."""
    document: dict[str, object] = {}
    for type_url in PUSH_ORDER:
        resources = config.resources.get(type_url, {})
        if resources:
            document[SHORT_NAMES[type_url]] = {
                name: json.loads(json_format.MessageToJson(message, sort_keys=True))
                for name, message in resources.items()
            }
    document["problems"] = [str(problem) for problem in config.problems]
    return json.dumps(document, indent=1, sort_keys=True) + "\n"


@pytest.mark.parametrize("case", sorted(CASES))
def test_output_matches_golden_file(case: str) -> None:
    workload, mode, ip = CASES[case]
    rendered = render(translate(small_mesh(), proxy_for(workload, ip=ip, mode=mode, app_address="127.0.20.1")))
    path = GOLDEN_DIR / f"{case}.json"
    if REGENERATE:
        path.write_text(rendered)
    assert path.exists(), f"{path} is missing; run with IDMESH_REGENERATE_GOLDEN=1 to create it"
    expected = path.read_text()
    assert rendered == expected, (
        f"output for {case} differs from {path}; if the change is intended, regenerate with "
        "IDMESH_REGENERATE_GOLDEN=1 and review the diff"
    )


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_input_gives_identical_bytes(case: str) -> None:
    workload, mode, ip = CASES[case]
    proxy = proxy_for(workload, ip=ip, mode=mode)
    first = translate(small_mesh(), proxy)
    second = translate(small_mesh(), proxy)
    for type_url, resources in first.resources.items():
        assert list(resources) == sorted(resources)
        for name, message in resources.items():
            other = second.resources[type_url][name]
            assert message.SerializeToString(deterministic=True) == other.SerializeToString(deterministic=True)
