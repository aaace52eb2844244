"""meshctl inspection commands against one running local mesh of examples/payments-ledger.

One mesh serves every test in this module, so the tests only read from it.
"""

from __future__ import annotations

import base64
import io
import json
import socket
import subprocess
import urllib.request
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from controlplane.translate.resources import ENVOY_ADMIN_PORT
from meshctl.cli import main
from tests.integration.local_mesh import EXAMPLE, running_mesh, served_certificate_serial

pytestmark = [pytest.mark.envoy, pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

LEDGER_ID = "spiffe://cluster.local/ns/payments/sa/api"
WORKER_ID = "spiffe://cluster.local/ns/payments/sa/worker"
STORE_ID = "spiffe://cluster.local/ns/payments/sa/store"
TYPES = ("SDS", "CDS", "EDS", "LDS", "RDS")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def mesh(tmp_path_factory):
    async with running_mesh(EXAMPLE, tmp_path_factory.mktemp("meshctl") / "run") as running:
        yield running


def meshctl(mesh, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main([*argv, "--admin-url", mesh.admin_url], stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


async def envoy_serial(mesh, workload: str) -> str:
    async with aiohttp.ClientSession() as session:
        serial = await served_certificate_serial(session, mesh.plan.find(workload).address)
    assert serial, f"the Envoy of {workload} reports no workload certificate"
    return serial


def leaf_pem(mesh, workload: str) -> bytes:
    """The workload certificate PEM from Envoy's secrets dump, read without meshctl."""
    url = f"http://{mesh.plan.find(workload).address}:{ENVOY_ADMIN_PORT}/config_dump?resource=dynamic_active_secrets"
    with urllib.request.urlopen(url, timeout=5) as response:
        dump = json.loads(response.read())
    # With `?resource=` Envoy lists each DynamicSecret as one config.
    for entry in dump["configs"]:
        if entry["name"] == "default":
            return base64.b64decode(entry["secret"]["tls_certificate"]["certificate_chain"]["inline_bytes"])
    raise AssertionError("no default secret in Envoy's config_dump")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ----- status ------------------------------------------------------------------------------------


async def test_status_json_lists_every_proxy_synced(mesh) -> None:
    code, out, err = meshctl(mesh, "status", "-o", "json")

    assert code == 0, err
    proxies = {p["proxy"]: p for p in json.loads(out)}
    assert set(proxies) == {"payments/ledger", "payments/ledger-store", "payments/worker", "shop/storefront"}
    ledger = proxies["payments/ledger"]
    assert ledger["identity"] == LEDGER_ID
    assert ledger["address"] == mesh.plan.find("payments/ledger").address
    assert ledger["status"] == "SYNCED"
    for short in TYPES:
        entry = ledger["types"][short]
        assert entry["status"] == "SYNCED"
        assert entry["version_acked"] == entry["version_sent"] != ""


async def test_status_certificate_serial_matches_envoy(mesh) -> None:
    code, out, _ = meshctl(mesh, "status", "-n", "payments", "-o", "json")

    assert code == 0
    proxies = {p["proxy"]: p for p in json.loads(out)}
    assert set(proxies) == {"payments/ledger", "payments/ledger-store", "payments/worker"}
    for workload, proxy in proxies.items():
        certificate = proxy["certificate"]
        assert certificate["source"] == "agent"
        assert int(certificate["serial"], 16) == int(await envoy_serial(mesh, workload), 16)
        assert certificate["spiffe_id"] == proxy["identity"]


async def test_status_table_shows_sync_state_per_type(mesh) -> None:
    code, out, _ = meshctl(mesh, "status")

    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["WORKLOAD", "IDENTITY", *TYPES, "AGE", "CERT", "EXPIRES", "IN"]
    ledger = next(line for line in lines if line.startswith("payments/ledger "))
    assert ledger.split()[1] == LEDGER_ID
    assert ledger.split()[2:7] == ["SYNCED"] * 5
    assert "NACKED" not in out


async def test_status_wide_shows_versions_and_serials(mesh) -> None:
    code, out, _ = meshctl(mesh, "status", "-o", "wide", "-n", "payments")
    serial = await envoy_serial(mesh, "payments/worker")
    _, json_out, _ = meshctl(mesh, "status", "-o", "json", "-n", "payments")
    worker = next(p for p in json.loads(json_out) if p["proxy"] == "payments/worker")

    assert code == 0
    row = next(line for line in out.splitlines() if line.startswith("payments/worker "))
    assert f"SYNCED {worker['types']['LDS']['version_acked']}" in row
    assert serial in row
    assert "agent" in row.split()


# ----- principals -------------------------------------------------------------------------------


async def test_principals_name_policies_and_proxies(mesh) -> None:
    code, out, err = meshctl(mesh, "principals", "-n", "payments", "-o", "json")

    assert code == 0, err
    principals = {p["spiffe_id"]: p for p in json.loads(out)}
    assert set(principals) == {LEDGER_ID, WORKER_ID, STORE_ID}
    worker = principals[WORKER_ID]
    assert worker["workloads"] == ["payments/worker"]
    assert [(m["policy"], m["field"], m["rule"]) for m in worker["policies"]] == [
        ("payments/allow-settle", "principals", 0)
    ]
    assert [m["policy"] for m in principals[LEDGER_ID]["policies"]] == ["payments/store-clients"]
    assert principals[STORE_ID]["policies"] == []
    proxy = worker["proxies"][0]
    assert proxy["address"] == mesh.plan.find("payments/worker").address
    assert int(proxy["certificate"]["serial"], 16) == int(await envoy_serial(mesh, "payments/worker"), 16)


async def test_principals_table_lists_every_namespace(mesh) -> None:
    code, out, _ = meshctl(mesh, "principals")

    assert code == 0
    first_cells = [line.split()[0] for line in out.splitlines()[1:]]
    assert first_cells == [LEDGER_ID, STORE_ID, WORKER_ID, "spiffe://cluster.local/ns/shop/sa/web"]
    worker_row = next(line for line in out.splitlines() if line.startswith(WORKER_ID))
    assert "payments/allow-settle(ALLOW)" in worker_row


# ----- certs --------------------------------------------------------------------------------------


async def test_certs_shows_the_chain_envoy_holds(mesh) -> None:
    code, out, err = meshctl(mesh, "certs", "payments/ledger", "-o", "json")

    assert code == 0, err
    assert err == ""
    records = json.loads(out)
    leaf = records[0]
    assert leaf["role"] == "leaf"
    assert leaf["uri_san"] == LEDGER_ID
    assert int(leaf["serial"], 16) == int(await envoy_serial(mesh, "payments/ledger"), 16)
    assert leaf["in_use"] is True
    roots = [r for r in records if r["role"] == "trust bundle root"]
    assert len(roots) == 1
    assert roots[0]["subject"] == roots[0]["issuer"] == leaf["issuer"]


async def test_certs_match_openssl_reading(mesh) -> None:
    code, out, _ = meshctl(mesh, "certs", "ledger", "-n", "payments", "-o", "json")
    pem = leaf_pem(mesh, "payments/ledger")
    openssl = subprocess.run(["openssl", "x509", "-noout", "-serial", "-enddate"], input=pem,
                             capture_output=True, check=True, timeout=10).stdout.decode()

    assert code == 0
    leaf = json.loads(out)[0]
    serial_line = next(line for line in openssl.splitlines() if line.startswith("serial="))
    assert int(serial_line.removeprefix("serial="), 16) == int(leaf["serial"], 16)
    assert "notAfter=" in openssl


async def test_certs_warn_within_expiry_threshold(mesh) -> None:
    code, out, err = meshctl(mesh, "certs", "payments/ledger", "--expiry-threshold", "48h")

    assert code == 0
    assert out.splitlines()[0].split()[:3] == ["ROLE", "SUBJECT", "URI"]
    assert err.startswith("warning: leaf ")
    assert f"({LEDGER_ID}) expires in " in err
    assert "within the 2d0h threshold" in err


# ----- describe ----------------------------------------------------------------------------------


async def test_describe_explains_mtls_policies_and_services(mesh) -> None:
    code, out, err = meshctl(mesh, "describe", "payments/ledger", "-o", "json")

    assert code == 0, err
    document = json.loads(out)
    assert document["identity"] == LEDGER_ID
    assert document["mtls"]["ports"] == [{
        "port": 8080, "protocol": "http", "mode": "STRICT", "decided_by": "namespace",
        "policy": "payments/strict", "policy_error": None,
    }]
    assert [p["name"] for p in document["authorization_policies"]] == ["allow-settle"]
    rule = document["authorization_policies"][0]["rules"][0]
    assert rule["from"] == [{"source": {"principals": ["cluster.local/ns/payments/sa/worker"]}}]
    assert rule["to"] == [{"operation": {"methods": ["POST"], "paths": ["/v1/settlements"]}}]
    assert [s["service"] for s in document["inbound_services"]] == ["payments/ledger"]
    store = next(t for t in document["outbound_services"] if t["service"] == "payments/ledger-store")
    assert store["spiffe_ids"] == [STORE_ID]
    assert store["endpoints"] == 1


async def test_describe_text_names_the_deciding_policy(mesh) -> None:
    code, out, _ = meshctl(mesh, "describe", "ledger", "-n", "payments")

    assert code == 0
    assert f"Identity:         {LEDGER_ID}" in out
    assert "port 8080/http: STRICT  (decided by namespace PeerAuthentication payments/strict)" in out
    assert "payments/allow-settle  ALLOW  selector: app=ledger" in out


# ----- proxy-config ------------------------------------------------------------------------------


async def test_proxy_config_listeners_agree_between_sources(mesh) -> None:
    _, served, _ = meshctl(mesh, "proxy-config", "payments/ledger", "listeners", "-o", "json")
    code, loaded, err = meshctl(mesh, "proxy-config", "payments/ledger", "listeners", "--source", "envoy", "-o", "json")

    assert code == 0, err
    served_names = {e["resource"]["name"] for e in json.loads(served)}
    active = {e["resource"]["name"] for e in json.loads(loaded) if e["state"] == "active"}
    assert served_names
    assert served_names == active


async def test_proxy_config_table_summarises_listeners(mesh) -> None:
    address = mesh.plan.find("payments/ledger").address
    code, out, _ = meshctl(mesh, "proxy-config", "payments/ledger", "listeners")

    assert code == 0
    assert out.splitlines()[0].split() == ["NAME", "ADDRESS", "DIRECTION", "FILTER", "CHAINS"]
    assert f"{address}:8080" in out
    assert f"{address}:15001" in out


async def test_proxy_config_secrets_differ_by_source(mesh) -> None:
    _, served, _ = meshctl(mesh, "proxy-config", "payments/ledger", "secrets", "-o", "json")
    code, loaded, _ = meshctl(mesh, "proxy-config", "payments/ledger", "secrets", "--source", "envoy", "-o", "json")

    assert code == 0
    # The control plane serves only the trust bundle; the workload key comes from the agent.
    assert [e["resource"]["name"] for e in json.loads(served)] == ["ROOTCA"]
    assert {e["resource"]["name"] for e in json.loads(loaded)} == {"ROOTCA", "default"}


@pytest.mark.parametrize("source", ["controlplane", "envoy"])
async def test_proxy_config_clusters_show_eds_and_tls(mesh, source) -> None:
    code, out, _ = meshctl(mesh, "proxy-config", "payments/ledger", "clusters", "-o", "wide", "--source", source)

    assert code == 0
    row = next(line for line in out.splitlines() if line.startswith("outbound|9000||ledger-store"))
    assert row.split()[1:4] == ["EDS", "tls-by-endpoint", "1"]
    inbound = next(line for line in out.splitlines() if line.startswith("inbound|8080||"))
    assert inbound.split()[1:3] == ["STATIC", "plaintext"]


# ----- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [
    ("describe", "payments/nope"),
    ("certs", "payments/nope"),
    ("proxy-config", "payments/nope", "listeners"),
])
async def test_unknown_workload_fails_with_one_line(mesh, argv) -> None:
    code, out, err = meshctl(mesh, *argv)

    assert code == 1
    assert out == ""
    assert err == f"meshctl {argv[0]}: error: workload payments/nope is not in the mesh; check the name and -n\n"


async def test_unreachable_control_plane_names_the_url(mesh) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    out, err = io.StringIO(), io.StringIO()
    code = main(["status", "--admin-url", url], stdout=out, stderr=err)

    assert code == 1
    assert err.getvalue().startswith(f"meshctl status: error: cannot reach the control plane admin API at {url}: ")
    assert err.getvalue().rstrip().endswith("pass --admin-url URL, set IDMESH_ADMIN_URL, or use --kubernetes for a cluster")
    assert err.getvalue().count("\n") == 1


@pytest.mark.parametrize("command", ["status", "principals", "describe", "certs", "proxy-config"])
async def test_bad_output_format_is_a_usage_error(mesh, command) -> None:
    argv = {"describe": ["payments/ledger"], "certs": ["payments/ledger"], "proxy-config": ["payments/ledger", "routes"]}
    code, out, err = meshctl(mesh, command, *argv.get(command, []), "-o", "xml")

    assert code == 2
    assert out == ""
    assert "argument -o/--output: invalid choice: 'xml'" in err
