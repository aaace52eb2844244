"""`meshctl inject`: multi-document manifests in and out, idempotent, valid for Kubernetes."""

from __future__ import annotations

import io
import json

import kubernetes_validate
import pytest
import yaml

from meshctl.cli import main

K8S_VERSION = kubernetes_validate.latest_version()

MANIFESTS = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: ledger, namespace: payments}
spec:
  selector: {matchLabels: {app: ledger}}
  template:
    metadata:
      labels: {app: ledger}
      annotations: {idmesh.io/inject: "true", idmesh.io/exclude-outbound-ports: "5432"}
    spec:
      serviceAccountName: ledger
      containers: [{name: ledger, image: registry.example/ledger:1.4.2}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: vault, namespace: payments}
spec:
  serviceName: vault
  selector: {matchLabels: {app: vault}}
  template:
    metadata:
      labels: {app: vault}
      annotations: {idmesh.io/inject: "true"}
    spec:
      containers: [{name: vault, image: registry.example/vault:2.0}]
---
apiVersion: v1
kind: Service
metadata: {name: ledger, namespace: payments}
spec:
  selector: {app: ledger}
  ports: [{name: http, port: 8080}]
---
apiVersion: v1
kind: Pod
metadata:
  name: debug
  namespace: payments
  annotations: {idmesh.io/inject: "true"}
spec:
  containers: [{name: shell, image: registry.example/shell:1}]
"""

OWN_METADATA_ONLY = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: reports
  namespace: payments
  annotations: {idmesh.io/inject: "true"}
spec:
  selector: {matchLabels: {app: reports}}
  template:
    metadata: {labels: {app: reports}}
    spec:
      containers: [{name: reports, image: registry.example/reports:3}]
"""

JOBS = """\
apiVersion: v1
kind: Namespace
metadata: {name: batch, labels: {idmesh.io/injection: enabled}}
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: nightly, namespace: batch}
spec:
  schedule: "0 3 * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: OnFailure
          containers: [{name: nightly, image: registry.example/nightly:1}]
---
apiVersion: batch/v1
kind: Job
metadata: {name: once, namespace: batch}
spec:
  template:
    spec:
      restartPolicy: Never
      containers: [{name: once, image: registry.example/once:1}]
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: node-agent, namespace: batch}
spec:
  selector: {matchLabels: {app: node-agent}}
  template:
    metadata: {labels: {app: node-agent}}
    spec:
      hostNetwork: true
      containers: [{name: node-agent, image: registry.example/node-agent:1}]
"""


def inject(tmp_path, text: str, *args: str) -> tuple[int, str, str]:
    source = tmp_path / "in.yaml"
    source.write_text(text)
    out, err = io.StringIO(), io.StringIO()
    code = main(["inject", "-f", str(source), *args], stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def assert_valid(obj: dict) -> None:
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{obj['kind']} {obj['metadata'].get('name')} fails Kubernetes {K8S_VERSION} "
                    f"validation: {exc.message} at {list(exc.path)}")


def init_names(template: dict) -> list[str]:
    return [container["name"] for container in template["spec"].get("initContainers", [])]


def test_multi_document_output_injected_and_valid(tmp_path):
    code, out, _ = inject(tmp_path, MANIFESTS)
    assert code == 0
    deployment, statefulset, service, pod = yaml.safe_load_all(out)
    for obj in (deployment, statefulset, service, pod):
        assert_valid(obj)
    assert init_names(deployment["spec"]["template"]) == ["idmesh-init", "idmesh-proxy"]
    assert init_names(statefulset["spec"]["template"]) == ["idmesh-init", "idmesh-proxy"]
    assert init_names(pod) == ["idmesh-init", "idmesh-proxy"]


def test_service_passes_through_unchanged(tmp_path):
    _, out, _ = inject(tmp_path, MANIFESTS)
    assert list(yaml.safe_load_all(out))[2] == list(yaml.safe_load_all(MANIFESTS))[2]


def test_second_run_changes_nothing(tmp_path):
    _, first, _ = inject(tmp_path, MANIFESTS)
    code, second, err = inject(tmp_path, first)
    assert code == 0
    assert second == first
    assert "Deployment payments/ledger: not injected: already injected: the pod has the idmesh.io/status annotation" in err


def test_workload_name_comes_from_the_object(tmp_path):
    _, out, _ = inject(tmp_path, MANIFESTS)
    deployment = next(yaml.safe_load_all(out))
    proxy = deployment["spec"]["template"]["spec"]["initContainers"][1]
    env = {item["name"]: item.get("value") for item in proxy["env"]}
    assert env["IDMESH_WORKLOAD"] == "ledger"


def test_pod_exclusion_annotation_reaches_init_container(tmp_path):
    _, out, _ = inject(tmp_path, MANIFESTS)
    deployment = next(yaml.safe_load_all(out))
    init = deployment["spec"]["template"]["spec"]["initContainers"][0]
    assert init["args"][-2:] == ["--exclude-outbound-ports", "5432"]


def test_annotation_on_deployment_metadata_ignored(tmp_path):
    code, out, err = inject(tmp_path, OWN_METADATA_ONLY)
    assert code == 0
    assert yaml.safe_load(out) == yaml.safe_load(OWN_METADATA_ONLY)
    assert err == (
        "meshctl inject: Deployment payments/reports: not injected: neither Deployment pod template "
        "annotation idmesh.io/inject nor namespace label idmesh.io/injection asks for injection\n"
    )


def test_namespace_labels_option_enables_injection(tmp_path):
    _, out, _ = inject(tmp_path, OWN_METADATA_ONLY, "--namespace-labels", "idmesh.io/injection=enabled")
    assert init_names(yaml.safe_load(out)["spec"]["template"]) == ["idmesh-init", "idmesh-proxy"]


def test_disabled_namespace_label_wins(tmp_path):
    code, out, _ = inject(tmp_path, MANIFESTS, "--namespace-labels", "idmesh.io/injection=disabled")
    assert code == 0
    assert list(yaml.safe_load_all(out)) == list(yaml.safe_load_all(MANIFESTS))


def test_jobs_injected_and_host_network_skipped(tmp_path):
    code, out, err = inject(tmp_path, JOBS)
    assert code == 0
    namespace, cronjob, job, daemonset = yaml.safe_load_all(out)
    for obj in (namespace, cronjob, job, daemonset):
        assert_valid(obj)
    assert init_names(cronjob["spec"]["jobTemplate"]["spec"]["template"]) == ["idmesh-init", "idmesh-proxy"]
    assert init_names(job["spec"]["template"]) == ["idmesh-init", "idmesh-proxy"]
    assert init_names(daemonset["spec"]["template"]) == []
    assert "DaemonSet batch/node-agent: not injected: hostNetwork pods are never injected" in err


def test_native_sidecar_keeps_job_containers_unchanged(tmp_path):
    _, out, _ = inject(tmp_path, JOBS)
    job = list(yaml.safe_load_all(out))[2]
    assert [c["name"] for c in job["spec"]["template"]["spec"]["containers"]] == ["once"]
    assert job["spec"]["template"]["spec"]["initContainers"][1]["restartPolicy"] == "Always"


def test_json_output_is_a_list(tmp_path):
    code, out, _ = inject(tmp_path, MANIFESTS, "-o", "json")
    assert code == 0
    body = json.loads(out)
    assert body["kind"] == "List"
    assert [item["kind"] for item in body["items"]] == ["Deployment", "StatefulSet", "Service", "Pod"]


def test_json_output_of_one_object_is_the_object(tmp_path):
    _, out, _ = inject(tmp_path, OWN_METADATA_ONLY, "-o", "json")
    assert json.loads(out)["kind"] == "Deployment"


def test_list_input_items_injected(tmp_path):
    listing = json.dumps({"apiVersion": "v1", "kind": "List", "items": list(yaml.safe_load_all(MANIFESTS))})
    _, out, _ = inject(tmp_path, listing)
    assert [doc["kind"] for doc in yaml.safe_load_all(out)] == ["Deployment", "StatefulSet", "Service", "Pod"]


def test_dash_reads_stdin(monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(MANIFESTS))
    out, err = io.StringIO(), io.StringIO()
    assert main(["inject", "-f", "-"], stdout=out, stderr=err) == 0
    assert len(list(yaml.safe_load_all(out.getvalue()))) == 4


def test_invalid_yaml_is_an_error(tmp_path):
    code, out, err = inject(tmp_path, "kind: Pod\n  metadata: [\n")
    assert code == 1
    assert out == ""
    assert err.startswith(f"meshctl inject: error: {tmp_path / 'in.yaml'}: invalid YAML: ")


def test_scalar_document_is_an_error(tmp_path):
    code, _, err = inject(tmp_path, "--- just text\n")
    assert code == 1
    assert err == f"meshctl inject: error: {tmp_path / 'in.yaml'}: document 1 is a str, not a Kubernetes object\n"


def test_missing_file_is_a_usage_error(tmp_path):
    out, err = io.StringIO(), io.StringIO()
    code = main(["inject", "-f", str(tmp_path / "absent.yaml")], stdout=out, stderr=err)
    assert code == 2
    assert err.getvalue() == f"meshctl inject: error: {tmp_path / 'absent.yaml'}: cannot read: No such file or directory\n"


def test_bad_namespace_labels_is_a_usage_error(tmp_path):
    code, _, err = inject(tmp_path, MANIFESTS, "--namespace-labels", "enabled")
    assert code == 2
    assert err == "meshctl inject: error: --namespace-labels: 'enabled' is not KEY=VALUE\n"
