"""`meshctl analyze`: findings, exit codes and machine-readable output on small folders."""

from __future__ import annotations

import io
import json
import textwrap

import yaml

from meshctl.cli import main

NAMESPACE = """
apiVersion: v1
kind: Namespace
metadata: {name: payments}
"""
LEDGER = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: ledger, namespace: payments}
spec:
  template:
    metadata:
      labels: {app: ledger}
      annotations: {idmesh.io/inject: "true"}
    spec:
      serviceAccountName: ledger
      containers: [{name: ledger, ports: [{containerPort: 8080, name: http}, {containerPort: 9000, name: db}]}]
---
apiVersion: v1
kind: Service
metadata: {name: ledger, namespace: payments}
spec:
  selector: {app: ledger}
  ports: [{name: http, port: 8080}, {name: tcp-db, port: 9000}]
"""


def policy(name: str, spec: str, annotations: str = "") -> str:
    return textwrap.dedent(
        f"""
        apiVersion: security.idmesh.io/v1
        kind: AuthorizationPolicy
        metadata:
          name: {name}
          namespace: payments
          annotations: {{{annotations}}}
        spec:
        """
    ) + textwrap.indent(textwrap.dedent(spec).strip() + "\n", "  ")


def write(folder, **files: str):
    for name, text in files.items():
        (folder / f"{name}.yaml").write_text(text)
    return folder


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def analyze_json(folder) -> tuple[int, list[dict]]:
    code, out, err = run("analyze", "-f", str(folder), "-o", "json")
    assert err == ""
    return code, json.loads(out)


def test_clean_folder_exits_zero(tmp_path):
    write(tmp_path, app=NAMESPACE + "---" + LEDGER, allow=policy("allow", """
        selector: {matchLabels: {app: ledger}}
        rules: [{from: [{source: {principals: ["cluster.local/ns/payments/sa/worker"]}}], to: [{operation: {ports: ["8080"], methods: ["GET"]}}]}]
    """))
    code, findings = analyze_json(tmp_path)
    assert findings == []
    assert code == 0


def test_clean_folder_table_says_so(tmp_path):
    write(tmp_path, app=NAMESPACE)
    code, out, _ = run("analyze", "-f", str(tmp_path))
    assert out == "No problems found.\n"
    assert code == 0


def test_invalid_policy_exits_one_with_exact_json(tmp_path):
    write(tmp_path, app=LEDGER, bad=policy("allow-settle", """
        selector: {matchLabels: {app: ledger}}
        rules: [{to: [{operation: {methods: ["POST", "get"]}}]}]
    """))
    code, findings = analyze_json(tmp_path)
    assert code == 1
    assert findings == [
        {
            "severity": "error",
            "code": "invalid-object",
            "object": "AuthorizationPolicy payments/allow-settle",
            "path": "spec.rules[0].to[0].operation.methods[1]",
            "message": '"get" is not an HTTP method; use upper case',
        },
        {
            "severity": "error",
            "code": "fails-closed",
            "object": "AuthorizationPolicy payments/allow-settle",
            "path": "",
            "message": "the policy is invalid, so every workload it selects denies all requests; selected: Deployment payments/ledger",
        },
    ]


def test_unsupported_feature_is_an_error(tmp_path):
    write(tmp_path, app=LEDGER, jwt=policy("jwt", """
        selector: {matchLabels: {app: ledger}}
        rules: [{from: [{source: {requestPrincipals: ["*"]}}]}]
    """))
    code, findings = analyze_json(tmp_path)
    assert code == 1
    assert [f["code"] for f in findings] == ["unsupported-feature", "fails-closed"]


def test_warnings_only_exit_zero(tmp_path):
    write(tmp_path, app=LEDGER, p=policy("nobody", "selector: {matchLabels: {app: ledgr}}\nrules: [{}]"))
    code, findings = analyze_json(tmp_path)
    assert code == 0
    assert findings == [
        {
            "severity": "warning",
            "code": "selects-no-workload",
            "object": "AuthorizationPolicy payments/nobody",
            "path": "spec.selector",
            "message": "selects no workload: no workload in namespace payments has labels app=ledgr",
        }
    ]


def test_http_fields_on_tcp_port_warned(tmp_path):
    write(tmp_path, app=LEDGER, p=policy("db-readers", """
        selector: {matchLabels: {app: ledger}}
        rules: [{to: [{operation: {ports: ["9000"], methods: ["GET"]}}]}]
    """))
    code, findings = analyze_json(tmp_path)
    assert code == 0
    assert findings == [
        {
            "severity": "warning",
            "code": "http-fields-on-tcp-port",
            "object": "AuthorizationPolicy payments/db-readers",
            "path": "spec.rules[0].to[0].operation",
            "message": "methods can only be checked on HTTP, but port 9000 of Deployment payments/ledger is TCP, "
            "so this rule never matches there; name the Service port http-* (or set appProtocol) or remove those fields",
        }
    ]


def test_http_fields_on_http_port_not_warned(tmp_path):
    write(tmp_path, app=LEDGER, p=policy("readers", """
        selector: {matchLabels: {app: ledger}}
        rules: [{to: [{operation: {ports: ["8080"], paths: ["/v1/*"]}}], when: [{key: "request.headers[x-team]", values: ["a"]}]}]
    """))
    _, findings = analyze_json(tmp_path)
    assert findings == []


def test_header_condition_without_ports_warns_for_tcp_port(tmp_path):
    write(tmp_path, app=LEDGER, p=policy("deny-test", """
        selector: {matchLabels: {app: ledger}}
        action: DENY
        rules: [{when: [{key: "request.headers[x-test]", values: ["1"]}]}]
    """))
    _, findings = analyze_json(tmp_path)
    assert [(f["code"], f["path"]) for f in findings] == [("http-fields-on-tcp-port", "spec.rules[0].when")]
    assert "port 9000" in findings[0]["message"]
    assert "ignored there" in findings[0]["message"]


def test_principals_outside_trust_domain_and_wildcard_warned(tmp_path):
    write(tmp_path, app=LEDGER, p=policy("callers", """
        selector: {matchLabels: {app: ledger}}
        rules:
        - from: [{source: {principals: ["*", "cluster.local/ns/a/sa/b", "other.org/ns/a/sa/b", "spiffe://partner.example/ns/x/sa/y", "*/ns/a/sa/c"]}}]
    """))
    _, findings = analyze_json(tmp_path)
    assert [(f["code"], f["path"]) for f in findings] == [
        ("wildcard-principal", "spec.rules[0].from[0].source.principals[0]"),
        ("principal-outside-trust-domain", "spec.rules[0].from[0].source.principals[2]"),
        ("principal-outside-trust-domain", "spec.rules[0].from[0].source.principals[3]"),
    ]
    assert findings[1]["message"] == (
        '"other.org/ns/a/sa/b" is in trust domain other.org, which is not the mesh\'s trust domain '
        "or an alias (trusted: cluster.local), so no peer presents it"
    )


def test_trust_domain_alias_accepted(tmp_path):
    mesh = """
apiVersion: v1
kind: ConfigMap
metadata: {name: idmesh, namespace: idmesh-system}
data:
  mesh: |
    trustDomain: example.org
    trustDomainAliases: [old.example.org]
"""
    write(tmp_path, mesh=mesh, app=LEDGER, p=policy("callers", """
        selector: {matchLabels: {app: ledger}}
        rules: [{from: [{source: {principals: ["old.example.org/ns/a/sa/b", "example.org/ns/a/sa/b", "cluster.local/ns/a/sa/b"]}}]}]
    """))
    _, findings = analyze_json(tmp_path)
    assert findings == []


def test_injection_problems_warned(tmp_path):
    pods = """
apiVersion: v1
kind: Namespace
metadata: {name: tools, labels: {idmesh.io/injection: "yes"}}
---
apiVersion: v1
kind: Pod
metadata: {name: odd, namespace: tools, annotations: {idmesh.io/inject: enabled}}
spec: {containers: [{name: app}]}
---
apiVersion: v1
kind: Pod
metadata: {name: node-agent, namespace: tools, annotations: {idmesh.io/inject: "true"}}
spec: {hostNetwork: true, containers: [{name: app}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: tools, annotations: {idmesh.io/inject: "true"}}
spec: {template: {metadata: {labels: {app: web}}, spec: {containers: [{name: web}]}}}
"""
    write(tmp_path, pods=pods)
    code, findings = analyze_json(tmp_path)
    assert code == 0
    assert [(f["code"], f["object"], f["path"]) for f in findings] == [
        ("unknown-injection-value", "Namespace tools", 'metadata.labels["idmesh.io/injection"]'),
        ("unknown-injection-value", "Pod tools/odd", 'metadata.annotations["idmesh.io/inject"]'),
        ("host-network-injection", "Pod tools/node-agent", 'metadata.annotations["idmesh.io/inject"]'),
        ("inject-annotation-on-deployment", "Deployment tools/web", 'metadata.annotations["idmesh.io/inject"]'),
    ]
    assert findings[1]["message"] == '"enabled" is not "true" or "false"; it is treated as unset, so the workload is not injected'


def test_dry_run_value_and_stray_mesh_config_warned(tmp_path):
    stray = """
apiVersion: v1
kind: ConfigMap
metadata: {name: idmesh, namespace: payments}
data: {mesh: "trustDomain: example.org"}
"""
    write(tmp_path, app=LEDGER, stray=stray, p=policy("trial", "selector: {matchLabels: {app: ledger}}\nrules: [{}]", 'istio.io/dry-run: "yes"'))
    _, findings = analyze_json(tmp_path)
    assert [(f["code"], f["object"]) for f in findings] == [
        ("unknown-dry-run-value", "AuthorizationPolicy payments/trial"),
        ("mesh-config-ignored", "ConfigMap payments/idmesh"),
    ]


def test_unreadable_file_is_an_error(tmp_path):
    write(tmp_path, app=NAMESPACE, broken="kind: [\n")
    code, findings = analyze_json(tmp_path)
    assert code == 1
    assert findings == [
        {
            "severity": "error",
            "code": "unreadable-file",
            "object": "broken.yaml",
            "path": "document 1 line 2",
            "message": "invalid YAML: expected the node content, but found '<stream end>'",
        }
    ]


def test_yaml_output_has_same_records(tmp_path):
    write(tmp_path, app=LEDGER, p=policy("nobody", "selector: {matchLabels: {app: none}}"))
    code, out, _ = run("analyze", "-f", str(tmp_path), "-o", "yaml")
    assert code == 0
    assert [f["code"] for f in yaml.safe_load(out)] == ["selects-no-workload"]


def test_table_and_wide_output(tmp_path):
    write(tmp_path, app=LEDGER, p=policy("nobody", "selector: {matchLabels: {app: none}}"))
    _, table, _ = run("analyze", "-f", str(tmp_path))
    _, wide, _ = run("analyze", "-f", str(tmp_path), "-o", "wide")
    assert table.splitlines()[0].split() == ["SEVERITY", "CODE", "OBJECT", "PATH", "MESSAGE"]
    assert table.splitlines()[-1] == "0 error(s), 1 warning(s)"
    assert wide.splitlines()[0].split()[-1] == "FILE"
    assert wide.splitlines()[1].endswith("p.yaml#1")


def test_missing_folder_flag_is_usage_error():
    code, out, err = run("analyze")
    assert code == 2
    assert out == ""
    assert "the following arguments are required: -f/--filename" in err


def test_folder_that_does_not_exist_is_usage_error(tmp_path):
    code, out, err = run("analyze", "-f", str(tmp_path / "absent"))
    assert code == 2
    assert out == ""
    assert err == f"meshctl analyze: error: {tmp_path / 'absent'}: not a folder; pass a folder of manifests with -f\n"


def test_unknown_output_format_is_usage_error(tmp_path):
    code, _, err = run("analyze", "-f", str(tmp_path), "-o", "xml")
    assert code == 2
    assert "invalid choice: 'xml'" in err
