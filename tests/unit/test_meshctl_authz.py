"""`meshctl authz check`: arguments, caller resolution, decisions and output formats.

The debug API is served by a fake client whose documents come from the real translator on the
payments-ledger example plus a few extra objects, so the command reads the same listeners a
control plane would send.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf.json_format import MessageToDict

import meshctl.authz as authz_command
from controlplane.admin.debug import find_workload, workload_document
from controlplane.local.up import load_state
from controlplane.model.types import MeshState, Proxy
from controlplane.server.mesh import with_local_addresses
from controlplane.translate import translate
from meshctl.cli import main
from meshctl.client import AdminClient, NotFoundError

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "payments-ledger"
EXTRA = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: batch, namespace: shop}
spec:
  selector: {matchLabels: {app: batch}}
  template:
    metadata: {labels: {app: batch}}
    spec:
      serviceAccountName: web
      containers: [{name: batch, image: example/batch}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: reports, namespace: shop}
spec:
  selector: {matchLabels: {app: reports}}
  template:
    metadata:
      labels: {app: reports}
      annotations: {idmesh.io/inject: "true"}
    spec:
      serviceAccountName: web
      containers: [{name: reports, image: example/reports, ports: [{containerPort: 8080, name: http}, {containerPort: 8081, name: http-plain}]}]
---
apiVersion: v1
kind: Service
metadata: {name: reports, namespace: shop}
spec:
  selector: {app: reports}
  ports: [{name: http, port: 8080, targetPort: 8080}, {name: http-plain, port: 8081, targetPort: 8081}]
---
apiVersion: security.idmesh.io/v1
kind: PeerAuthentication
metadata: {name: reports-plain, namespace: shop}
spec:
  selector: {matchLabels: {app: reports}}
  portLevelMtls: {"8081": {mode: DISABLE}}
---
apiVersion: security.idmesh.io/v1
kind: AuthorizationPolicy
metadata: {name: audit-writes, namespace: shop}
spec:
  selector: {matchLabels: {app: reports}}
  action: AUDIT
  rules: [{to: [{operation: {methods: [POST]}}]}]
---
apiVersion: security.idmesh.io/v1
kind: AuthorizationPolicy
metadata: {name: try-deny-admin, namespace: shop, annotations: {idmesh.io/dry-run: "true"}}
spec:
  selector: {matchLabels: {app: reports}}
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin*"]}}]}]
---
apiVersion: security.idmesh.io/v1
kind: AuthorizationPolicy
metadata: {name: no-deletes, namespace: shop}
spec:
  selector: {matchLabels: {app: reports}}
  action: DENY
  rules: [{to: [{operation: {methods: [DELETE]}}]}]
---
apiVersion: security.idmesh.io/v1
kind: AuthorizationPolicy
metadata: {name: jwt-only, namespace: shop}
spec:
  selector: {matchLabels: {app: storefront}}
  rules: [{from: [{source: {requestPrincipals: ["*"]}}]}]
"""
ADDRESSES = {
    "payments/ledger": "127.9.0.1",
    "payments/ledger-store": "127.9.0.2",
    "payments/worker": "127.9.0.3",
    "shop/storefront": "127.9.0.4",
    "shop/reports": "127.9.0.5",
    "shop/batch": "127.9.0.6",
}


class FakeAdminClient(AdminClient):
    """Serves /debug documents computed from a mesh state, as the control plane would."""

    description = "fake"

    def __init__(self, state: MeshState) -> None:
        self.state = state
        self.requests: list[str] = []

    def get_json(self, path: str) -> Any:
        self.requests.append(path)
        parts = path.strip("/").split("/")
        if parts == ["debug", "mesh"]:
            return {"trust_domain": self.state.config.trust_domain}
        kind, namespace, name = parts[1], parts[2], parts[3]
        workload = find_workload(self.state, namespace, name)
        if workload is None or (kind == "config" and not workload.injected):
            raise NotFoundError(f"no proxy of workload {namespace}/{name} is connected")
        if kind == "workloads":
            return workload_document(self.state, workload, [])
        return self._config(workload)

    def _config(self, workload) -> dict[str, Any]:
        ip = ADDRESSES[f"{workload.namespace}/{workload.name}"]
        node_id = f"sidecar~{ip}~{workload.name}.{workload.namespace}~{workload.namespace}.svc.cluster.local"
        proxy = Proxy(
            node_id=node_id, namespace=workload.namespace, workload=workload.name,
            service_account=workload.service_account, ip=ip,
            spiffe_id=workload.spiffe_id(self.state.config.trust_domain),
            labels=workload.labels, mode="local", app_address="127.9.1.1",
        )
        built = translate(self.state, proxy)
        resources = {
            type_url: {name: MessageToDict(message) for name, message in by_name.items()}
            for type_url, by_name in built.resources.items()
        }
        return {"node_id": node_id, "namespace": workload.namespace, "workload": workload.name,
                "resources": resources, "problems": [str(p) for p in built.problems]}


@pytest.fixture(scope="module")
def state(tmp_path_factory) -> MeshState:
    folder = tmp_path_factory.mktemp("mesh")
    for source in EXAMPLE.glob("*.yaml"):
        if source.name != "scenario.yaml":
            (folder / source.name).write_text(source.read_text())
    (folder / "extra.yaml").write_text(EXTRA)
    loaded, _problems = load_state(folder)
    return with_local_addresses(loaded, ADDRESSES)


@pytest.fixture
def client(state, monkeypatch) -> FakeAdminClient:
    fake = FakeAdminClient(state)
    monkeypatch.setattr(authz_command, "admin_client", lambda args: fake)
    return fake


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(["authz", "check", *argv], stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def check_json(*argv: str) -> dict[str, Any]:
    code, out, err = run(*argv, "-o", "json")
    assert code == 0, err
    records = json.loads(out)
    assert len(records) == 1
    return records[0]


SETTLE = ("--to", "payments/ledger", "--port", "8080", "--method", "POST", "--path", "/v1/settlements")


# ----- decisions -----------------------------------------------------------------------------


def test_allowed_call_names_the_allow_policy_and_rule(client):
    record = check_json("--from", "payments/worker", *SETTLE)
    assert record["decision"] == "ALLOW"
    assert record["reason"] == "allowed by ALLOW policy payments/allow-settle rule 0"
    assert record["deciding"] == {
        "filter": "idmesh.rbac.allow",
        "holds": "ALLOW policies",
        "rbac_policy": "ns[payments]-policy[allow-settle]-rule[0]",
        "policy": "payments/allow-settle",
        "rule": 0,
        "fail_closed": False,
    }
    assert record["from"]["principal"] == "spiffe://cluster.local/ns/payments/sa/worker"
    assert record["from"]["source_ip"] == "127.9.0.3"
    assert record["to"]["listener"] == "inbound_127.9.0.1_8080"
    assert record["to"]["filter_chain"] == "inbound|8080|mtls"


def test_denied_call_says_no_allow_policy_matched(client):
    record = check_json("--from", "shop/storefront", *SETTLE)
    assert record["decision"] == "DENY"
    assert record["reason"] == "no ALLOW policy matched"
    assert record["deciding"]["rbac_policy"] is None
    assert record["response_code_details"] == "rbac_access_denied_matched_policy[none]"


def test_exit_code_is_zero_for_a_denial(client):
    code, out, _err = run("--from", "shop/storefront", *SETTLE)
    assert code == 0
    assert out.splitlines()[0].split() == ["Decision:", "DENY"]


def test_dot_segments_are_normalized_before_authorization(client):
    record = check_json("--from", "payments/worker", "--to", "payments/ledger", "--port", "8080",
                        "--method", "POST", "--path", "/v1/settlements/../admin")
    assert record["decision"] == "DENY"
    assert record["request"]["path"] == {
        "sent": "/v1/settlements/../admin",
        "normalized": "/v1/admin",
        "normalize_path": True,
        "merge_slashes": True,
        "escaped_slashes": "UNESCAPE_AND_FORWARD",
    }
    assert "Envoy normalizes the path /v1/settlements/../admin to /v1/admin before authorization" in record["notes"]


def test_escaped_slashes_and_double_slashes_reach_the_same_policy(client):
    record = check_json("--from", "payments/worker", "--to", "payments/ledger", "--port", "8080",
                        "--method", "POST", "--path", "//v1%2Fsettlements?x=1")
    assert record["request"]["path"]["normalized"] == "/v1/settlements?x=1"
    assert record["decision"] == "ALLOW"


def test_path_with_fragment_is_rejected_before_authorization(client):
    record = check_json("--from", "payments/worker", *SETTLE[:-1], "/v1/settlements#x")
    assert record["decision"] == "DENY"
    assert record["stage"] == "path"
    assert record["reason"] == "Envoy answers 400 before authorization: the path has a fragment (#)"


def test_caller_without_certificate_is_reset_on_strict_port(client):
    record = check_json("--from", "none", *SETTLE)
    assert record["decision"] == "DENY"
    assert record["stage"] == "transport"
    assert record["deciding"] is None
    assert record["from"]["transport"] == "plaintext"


def test_tcp_port_uses_network_rbac(client):
    allowed = check_json("--from", "payments/ledger", "--to", "payments/ledger-store", "--port", "9000")
    denied = check_json("--from", "payments/worker", "--to", "payments/ledger-store", "--port", "9000")
    assert allowed["decision"] == "ALLOW"
    assert allowed["stage"] == "network-rbac"
    assert allowed["to"]["protocol"] == "tcp"
    assert allowed["request"] == {"method": None, "host": None, "headers": {}, "path": None}
    assert denied["decision"] == "DENY"
    assert denied["reason"] == "no ALLOW policy matched"


def test_deny_policy_is_named_with_its_rule(client):
    record = check_json("--from", "payments/worker", "--to", "shop/reports", "--port", "8080", "--method", "DELETE")
    assert record["decision"] == "DENY"
    assert record["reason"] == "denied by DENY policy shop/no-deletes rule 0"
    assert record["deciding"]["filter"] == "idmesh.rbac.deny"


def test_dry_run_and_audit_results_are_reported(client):
    record = check_json("--from", "payments/worker", "--to", "shop/reports", "--port", "8080",
                        "--method", "POST", "--path", "/admin/users")
    assert record["decision"] == "ALLOW"
    assert record["reason"] == "allowed: no ALLOW policy selects the workload and no DENY policy matched"
    assert record["dry_run"] == [{
        "filter": "idmesh.rbac.dry_run.shop.try-deny-admin",
        "dry_run_policy": "shop/try-deny-admin",
        "action": "DENY",
        "result": "deny",
        "rbac_policy": "ns[shop]-policy[try-deny-admin]-rule[0]",
        "policy": "shop/try-deny-admin",
        "rule": 0,
        "fail_closed": False,
    }]
    assert [entry["policy"] for entry in record["audit"]] == ["shop/audit-writes"]


def test_fail_closed_policy_is_named_with_its_problem(client):
    record = check_json("--from", "payments/worker", "--to", "shop/storefront", "--port", "8080")
    assert record["decision"] == "DENY"
    assert record["deciding"]["policy"] == "shop/jwt-only"
    assert record["deciding"]["fail_closed"] is True
    assert record["reason"].startswith("denied by DENY policy shop/jwt-only (failed closed")
    assert len(record["problems"]) == 1
    assert record["problems"][0].startswith("AuthorizationPolicy shop/jwt-only:")


def test_plaintext_only_port_never_sees_the_caller_principal(client):
    record = check_json("--from", "payments/worker", "--to", "shop/reports", "--port", "8081")
    assert record["from"]["principal"] == "spiffe://cluster.local/ns/payments/sa/worker"
    assert record["from"]["principal_seen"] is None
    assert record["from"]["transport"] == "plaintext"
    assert any("accepts plaintext only" in note for note in record["notes"])


def test_plaintext_flag_picks_the_plaintext_chain_of_a_permissive_port(client):
    record = check_json("--from", "payments/worker", "--to", "shop/reports", "--port", "8080", "--plaintext")
    assert record["to"]["filter_chain"] == "inbound|8080|plaintext"
    assert record["from"]["principal_seen"] is None


# ----- callers -------------------------------------------------------------------------------


def test_istio_principal_uses_the_mesh_trust_domain(client):
    record = check_json("--from", "cluster.local/ns/payments/sa/worker", *SETTLE)
    assert record["from"]["principal"] == "spiffe://cluster.local/ns/payments/sa/worker"
    assert record["decision"] == "ALLOW"
    assert "/debug/mesh" in client.requests


def test_spiffe_id_caller_is_used_as_given(client):
    record = check_json("--from", "spiffe://cluster.local/ns/payments/sa/worker", *SETTLE)
    assert record["decision"] == "ALLOW"
    assert record["from"]["source_ip"] == "127.0.0.1"
    assert any(note.startswith("source IP 127.0.0.1 is assumed") for note in record["notes"])


def test_workload_without_sidecar_calls_without_certificate(client):
    record = check_json("--from", "batch", "-n", "shop", "--to", "shop/reports", "--port", "8080")
    assert record["from"]["caller"] == "shop/batch"
    assert record["from"]["principal"] is None
    assert record["to"]["filter_chain"] == "inbound|8080|plaintext"


def test_invalid_spiffe_id_is_a_usage_error(client):
    code, _out, err = run("--from", "spiffe://cluster.local/ns/./sa/x", *SETTLE)
    assert code == 2
    assert err.startswith("meshctl authz: error: --from: ")


# ----- errors --------------------------------------------------------------------------------


def test_unknown_callee_exits_one(client):
    code, out, err = run("--from", "none", "--to", "payments/nothing", "--port", "8080")
    assert code == 1
    assert out == ""
    assert "cannot read the configuration of payments/nothing" in err


def test_port_without_listener_lists_inbound_ports(client):
    code, _out, err = run("--from", "none", "--to", "shop/reports", "--port", "7000")
    assert code == 1
    assert "no inbound listener serves port 7000; inbound ports: 8080, 8081" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("--port", "70000"), "--port 70000 is not a port number (1-65535)"),
        (("--port", "8080", "--method", "GET POST"), "--method 'GET POST' is not an HTTP method token"),
        (("--port", "8080", "--path", "v1"), "--path 'v1' must start with /"),
        (("--port", "8080", "--source-ip", "10.0.0"), "--source-ip '10.0.0' is not an IP address"),
        (("--port", "8080", "--header", "x-team"), "--header 'x-team' is not KEY=VALUE"),
        (("--port", "8080", "--header", ":method=GET"), "--header ':method=GET': set :method with --method or --path, not --header"),
    ],
)
def test_invalid_request_options_exit_two_before_any_request(client, argv, message):
    code, _out, err = run("--from", "none", "--to", "payments/ledger", *argv)
    assert code == 2
    assert err == f"meshctl authz: error: {message}\n"
    assert client.requests == []


def test_parse_headers_joins_repeats_and_reads_host():
    host, headers = authz_command.parse_headers(["Host=ledger:8080", "X-Team=red", "x-team=blue", "x-empty="])
    assert host == "ledger:8080"
    assert headers == {"x-team": ("red", "blue"), "x-empty": ("",)}


def test_default_host_is_callee_name_namespace_and_port(client):
    record = check_json("--from", "payments/worker", *SETTLE)
    assert record["request"]["host"] == "ledger.payments:8080"


# ----- output formats ------------------------------------------------------------------------


def test_yaml_output_matches_json(client):
    code, out, _err = run("--from", "payments/worker", *SETTLE, "-o", "yaml")
    assert code == 0
    assert yaml.safe_load(out) == [check_json("--from", "payments/worker", *SETTLE)]


def test_table_output_lists_one_fact_per_line(client):
    code, out, _err = run("--from", "payments/worker", "--to", "shop/reports", "--port", "8080",
                          "--method", "POST", "--path", "/admin/../admin/x")
    assert code == 0
    lines = {line.split(":", 1)[0]: line.split(":", 1)[1].strip() for line in out.splitlines()}
    assert lines["Decision"] == "ALLOW"
    assert lines["From"] == "payments/worker (spiffe://cluster.local/ns/payments/sa/worker), mtls, source IP 127.9.0.3"
    assert lines["Request"] == "POST /admin/x host reports.shop:8080"
    assert lines["Path"] == "/admin/../admin/x normalized to /admin/x"
    assert lines["Dry run"] == (
        "shop/try-deny-admin would deny (DENY, matched shop/try-deny-admin rule 0 "
        "[ns[shop]-policy[try-deny-admin]-rule[0]])"
    )
    assert lines["Audit"] == "logged by shop/audit-writes rule 0 [ns[shop]-policy[audit-writes]-rule[0]]"
