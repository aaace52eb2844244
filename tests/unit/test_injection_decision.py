"""Who gets a sidecar: the namespace label, the pod annotation and hostNetwork."""

from __future__ import annotations

from controlplane.injector.decision import injection_decision
from controlplane.model.parse import parse_objects

ENABLED = {"idmesh.io/injection": "enabled"}
DISABLED = {"idmesh.io/injection": "disabled"}
POD_TRUE = {"idmesh.io/inject": "true"}
POD_FALSE = {"idmesh.io/inject": "false"}


def decide(namespace_labels, pod_annotations, host_network=False, owner_kind="Pod"):
    return injection_decision(
        namespace_labels=namespace_labels,
        pod_annotations=pod_annotations,
        host_network=host_network,
        owner_kind=owner_kind,
    )


def test_enabled_namespace_pod_false_not_injected():
    decision = decide(ENABLED, POD_FALSE)
    assert decision.inject is False
    assert decision.reason == "pod annotation idmesh.io/inject=false"
    assert decision.warning is None


def test_disabled_namespace_wins_over_pod_true():
    decision = decide(DISABLED, POD_TRUE)
    assert decision.inject is False
    assert decision.reason == "namespace label idmesh.io/injection=disabled wins over pod annotation idmesh.io/inject=true"


def test_unlabelled_namespace_pod_true_injected():
    decision = decide({}, POD_TRUE)
    assert decision.inject is True
    assert decision.reason == "pod annotation idmesh.io/inject=true"


def test_enabled_namespace_without_annotation_injected():
    decision = decide(ENABLED, {})
    assert decision.inject is True
    assert decision.reason == "namespace label idmesh.io/injection=enabled"


def test_unlabelled_namespace_without_annotation_not_injected():
    decision = decide({}, {})
    assert decision.inject is False
    assert decision.warning is None


def test_host_network_never_injected_and_warns():
    decision = decide(ENABLED, POD_TRUE, host_network=True)
    assert decision.inject is False
    assert decision.reason.startswith("hostNetwork pods are never injected")
    assert decision.warning == (
        "injection was requested but hostNetwork pods are never injected: the pod shares the "
        "node's network namespace, so the sidecar would capture the node's traffic"
    )


def test_host_network_without_request_has_no_warning():
    decision = decide({}, {}, host_network=True)
    assert decision.inject is False
    assert decision.warning is None


def test_unknown_pod_value_treated_as_unset_with_warning():
    decision = decide({}, {"idmesh.io/inject": "enabled"})
    assert decision.inject is False
    assert decision.warning == 'pod annotation idmesh.io/inject="enabled" is not "true" or "false"; it is treated as unset'


def test_unknown_pod_value_follows_enabled_namespace():
    decision = decide(ENABLED, {"idmesh.io/inject": "True"})
    assert decision.inject is True
    assert decision.warning is not None


def test_unknown_namespace_value_treated_as_unset_with_warning():
    decision = decide({"idmesh.io/injection": "on"}, {})
    assert decision.inject is False
    assert decision.warning == 'namespace label idmesh.io/injection="on" is not "enabled" or "disabled"; it is treated as unset'


def test_reason_names_pod_template_for_deployment():
    decision = decide({}, POD_TRUE, owner_kind="Deployment")
    assert decision.reason == "Deployment pod template annotation idmesh.io/inject=true"


def deployment(annotations=None, template_annotations=None):
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "api", "namespace": "shop", "annotations": annotations or {}},
        "spec": {
            "template": {
                "metadata": {"labels": {"app": "api"}, "annotations": template_annotations or {}},
                "spec": {"containers": [{"name": "api", "image": "example/api"}]},
            }
        },
    }


def test_deployment_own_annotation_ignored():
    state = parse_objects([deployment(annotations={"idmesh.io/inject": "true"})])
    (workload,) = state.workloads
    assert workload.injected is False


def test_deployment_template_annotation_counts():
    state = parse_objects([deployment(template_annotations={"idmesh.io/inject": "true"})])
    (workload,) = state.workloads
    assert workload.injected is True


def test_namespace_label_applies_to_pods():
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "labels": DISABLED}}
    state = parse_objects([namespace, deployment(template_annotations={"idmesh.io/inject": "true"})])
    (workload,) = state.workloads
    assert workload.injected is False
