"""The sidecar template as a pure function: what it adds, the patch, idempotence and its contracts."""

from __future__ import annotations

import copy
import json

import jsonpatch
import pytest

from controlplane.agent.cli import parse_config
from controlplane.errors import ConfigError
from controlplane.injector.settings import InjectionSettings
from controlplane.injector.template import inject_pod, workload_name
from controlplane.iptables.cli import build_parser as iptables_parser
from controlplane.iptables.cli import settings_from_args
from controlplane.iptables.rules import CaptureSettings

SETTINGS = InjectionSettings()
ANNOTATED = {"idmesh.io/inject": "true"}


def make_pod(annotations=None, **spec) -> dict:
    metadata = {"name": "ledger-0", "namespace": "payments", "labels": {"app": "ledger"}}
    if annotations is not None:
        metadata["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata,
            "spec": {"serviceAccountName": "ledger", "containers": [{"name": "ledger", "image": "ledger:1"}], **spec}}


def inject(pod, settings=SETTINGS, labels=None, **options):
    return inject_pod(pod, namespace_labels=labels or {}, settings=settings, **options)


def by_name(items: list[dict]) -> dict[str, dict]:
    return {item["name"]: item for item in items}


def test_patch_applied_to_input_gives_patched_pod():
    pod = make_pod(ANNOTATED)
    result = inject(pod)
    assert result.injected is True
    assert jsonpatch.apply_patch(pod, result.patch) == result.patched_pod


def test_patch_appends_to_existing_lists():
    pod = make_pod(ANNOTATED, initContainers=[{"name": "migrate", "image": "migrate:1"}],
                   volumes=[{"name": "data", "emptyDir": {}}])
    result = inject(pod)
    assert jsonpatch.apply_patch(pod, result.patch) == result.patched_pod
    assert [c["name"] for c in result.patched_pod["spec"]["initContainers"]] == ["migrate", "idmesh-init", "idmesh-proxy"]
    assert [v["name"] for v in result.patched_pod["spec"]["volumes"]] == ["data", "idmesh-token", "idmesh-root-cert", "idmesh-proxy"]


def test_patch_creates_missing_annotations_and_lists():
    pod = make_pod()
    result = inject(pod, labels={"idmesh.io/injection": "enabled"})
    paths = [op["path"] for op in result.patch]
    assert paths == ["/metadata/annotations", "/spec/initContainers", "/spec/volumes"]
    assert {op["op"] for op in result.patch} == {"add"}
    assert jsonpatch.apply_patch(pod, result.patch) == result.patched_pod


def test_patch_escapes_annotation_name():
    result = inject(make_pod(ANNOTATED))
    assert result.patch[0]["path"] == "/metadata/annotations/idmesh.io~1status"


def test_input_pod_not_modified():
    pod = make_pod(ANNOTATED)
    before = copy.deepcopy(pod)
    inject(pod)
    assert pod == before


def test_status_annotation_records_injection():
    status = json.loads(inject(make_pod(ANNOTATED)).patched_pod["metadata"]["annotations"]["idmesh.io/status"])
    assert status == {
        "version": "1",
        "initContainers": ["idmesh-init", "idmesh-proxy"],
        "containers": [],
        "volumes": ["idmesh-token", "idmesh-root-cert", "idmesh-proxy"],
    }


def test_reinjection_changes_nothing():
    first = inject(make_pod(ANNOTATED)).patched_pod
    second = inject(first)
    assert second.injected is False
    assert second.patch == []
    assert second.patched_pod == first
    assert second.reason == "already injected: the pod has the idmesh.io/status annotation"


def test_existing_proxy_container_counts_as_injected():
    pod = make_pod(ANNOTATED)
    pod["spec"]["containers"].append({"name": "idmesh-proxy", "image": "old"})
    result = inject(pod)
    assert result.injected is False
    assert result.reason == "already injected: the pod has containers named idmesh-proxy"


def test_volume_name_clash_not_injected_with_warning():
    result = inject(make_pod(ANNOTATED, volumes=[{"name": "idmesh-token", "emptyDir": {}}]))
    assert result.injected is False
    assert result.warnings == (
        "not injected: the pod already has volumes named idmesh-token, which the sidecar needs",
    )


def test_host_network_never_injected():
    result = inject(make_pod(ANNOTATED, hostNetwork=True), labels={"idmesh.io/injection": "enabled"})
    assert result.injected is False
    assert result.patch == []
    assert result.reason.startswith("hostNetwork pods are never injected")


def test_proxy_runs_as_excluded_uid_without_privileges():
    proxy = by_name(inject(make_pod(ANNOTATED)).patched_pod["spec"]["initContainers"])["idmesh-proxy"]
    assert proxy["securityContext"] == {
        "runAsUser": 1337,
        "runAsGroup": 1337,
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def test_proxy_probes_agent_health_port():
    proxy = by_name(inject(make_pod(ANNOTATED)).patched_pod["spec"]["initContainers"])["idmesh-proxy"]
    assert proxy["readinessProbe"]["httpGet"] == {"path": "/healthz/ready", "port": 15020}
    assert proxy["startupProbe"]["httpGet"] == {"path": "/healthz/ready", "port": 15020}
    assert proxy["restartPolicy"] == "Always"


def test_init_container_has_only_net_capabilities():
    init = by_name(inject(make_pod(ANNOTATED)).patched_pod["spec"]["initContainers"])["idmesh-init"]
    assert init["command"] == ["idmesh-iptables"]
    assert init["securityContext"]["capabilities"] == {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]}
    assert init["securityContext"]["privileged"] is False


def test_ordinary_container_without_native_sidecar():
    result = inject(make_pod(ANNOTATED), settings=InjectionSettings(native_sidecar=False))
    spec = result.patched_pod["spec"]
    assert [c["name"] for c in spec["initContainers"]] == ["idmesh-init"]
    assert [c["name"] for c in spec["containers"]] == ["ledger", "idmesh-proxy"]
    assert "restartPolicy" not in spec["containers"][1]
    assert "startupProbe" not in spec["containers"][1]


def test_token_and_root_cert_volumes():
    volumes = by_name(inject(make_pod(ANNOTATED)).patched_pod["spec"]["volumes"])
    assert volumes["idmesh-token"]["projected"] == {"sources": [{"serviceAccountToken": {
        "audience": "idmesh", "expirationSeconds": 3600, "path": "idmesh-token"}}]}
    assert volumes["idmesh-root-cert"]["configMap"] == {"name": "idmesh-root-cert"}
    assert volumes["idmesh-proxy"]["emptyDir"] == {"medium": "Memory"}


def test_proxy_arguments_accepted_by_mesh_agent():
    proxy = by_name(inject(make_pod(ANNOTATED)).patched_pod["spec"]["initContainers"])["idmesh-proxy"]
    assert proxy["command"] == ["mesh-agent"]
    downward = {"metadata.namespace": "payments", "spec.serviceAccountName": "ledger",
                "status.podIP": "10.0.0.7", "metadata.name": "ledger-0"}
    environ = {item["name"]: item["value"] if "value" in item else downward[item["valueFrom"]["fieldRef"]["fieldPath"]]
               for item in proxy["env"]}
    config, _ = parse_config(proxy["args"], environ)
    assert str(config.spiffe_id) == "spiffe://cluster.local/ns/payments/sa/ledger"
    assert config.mode == "kubernetes"
    assert config.instance_ip == "10.0.0.7"
    assert config.workload == "ledger-0"
    assert config.labels == {"app": "ledger"}
    assert config.control_plane == "idmesh-controlplane.idmesh-system.svc:15012"
    assert str(config.token_file) == "/var/run/idmesh/token/idmesh-token"
    assert str(config.ca_root) == "/var/run/idmesh/root-cert/root-cert.pem"
    assert config.health_address == "0.0.0.0:15020"


def test_proxy_mounts_cover_agent_paths():
    proxy = by_name(inject(make_pod(ANNOTATED)).patched_pod["spec"]["initContainers"])["idmesh-proxy"]
    mounts = {m["name"]: m["mountPath"] for m in proxy["volumeMounts"]}
    args = dict(zip(proxy["args"][::2], proxy["args"][1::2]))
    assert args["--token-file"].startswith(mounts["idmesh-token"] + "/")
    assert args["--ca-root"].startswith(mounts["idmesh-root-cert"] + "/")
    # The agent creates the socket's own directory with mode 0700 inside the emptyDir.
    assert args["--sds-socket"] == mounts["idmesh-proxy"] + "/sds/sds.sock"
    assert args["--bootstrap-out"].startswith(mounts["idmesh-proxy"] + "/")


def test_init_arguments_parse_back_to_capture_settings():
    annotations = {**ANNOTATED, "idmesh.io/exclude-inbound-ports": "9090",
                   "idmesh.io/exclude-outbound-ports": "6379, 5432",
                   "idmesh.io/exclude-outbound-ip-ranges": "10.96.0.0/12,fd00::/8"}
    settings = InjectionSettings(exclude_outbound_ports=(443,), exclude_outbound_ip_ranges=("169.254.169.254/32",))
    init = by_name(inject(make_pod(annotations), settings=settings).patched_pod["spec"]["initContainers"])["idmesh-init"]
    parsed = settings_from_args(iptables_parser().parse_args(init["args"]))
    assert parsed == CaptureSettings(
        exclude_inbound_ports=(9090,),
        exclude_outbound_ports=(443, 5432, 6379),
        exclude_outbound_ip_ranges=("169.254.169.254/32", "10.96.0.0/12", "fd00::/8"),
    )


def test_invalid_exclusion_annotation_ignored_with_warning():
    result = inject(make_pod({**ANNOTATED, "idmesh.io/exclude-outbound-ports": "5432,postgres"}))
    assert result.injected is True
    assert result.warnings == (
        'annotation idmesh.io/exclude-outbound-ports: "postgres" is not a port; use comma-separated '
        "numbers from 1 to 65535; the annotation is ignored",
    )
    init = by_name(result.patched_pod["spec"]["initContainers"])["idmesh-init"]
    assert "--exclude-outbound-ports" not in init["args"]


def test_workload_from_replicaset_owner():
    metadata = {"generateName": "ledger-6d8f7c9b5-", "labels": {"pod-template-hash": "6d8f7c9b5"},
                "ownerReferences": [{"kind": "ReplicaSet", "name": "ledger-6d8f7c9b5", "controller": True}]}
    assert workload_name(metadata) == "ledger"


def test_workload_from_statefulset_owner():
    metadata = {"name": "vault-0", "ownerReferences": [{"kind": "StatefulSet", "name": "vault", "controller": True}]}
    assert workload_name(metadata) == "vault"


def test_workload_ignores_non_controller_owner():
    metadata = {"name": "debug", "ownerReferences": [{"kind": "ConfigMap", "name": "x", "controller": False}]}
    assert workload_name(metadata) == "debug"


def test_workload_unknown_uses_downward_api():
    pod = make_pod(ANNOTATED)
    del pod["metadata"]["name"]
    proxy = by_name(inject(pod).patched_pod["spec"]["initContainers"])["idmesh-proxy"]
    env = by_name(proxy["env"])
    assert env["IDMESH_WORKLOAD"]["valueFrom"] == {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}


def test_token_expiration_below_minimum_rejected():
    with pytest.raises(ConfigError, match="token expiration 300 s is below the Kubernetes minimum of 600 s"):
        InjectionSettings(token_expiration_seconds=300)


def test_proxy_uid_zero_rejected():
    with pytest.raises(ConfigError, match="the proxy UID must not be 0"):
        InjectionSettings(proxy_uid=0)
