"""The MutatingWebhookConfiguration for the install manifests."""

from __future__ import annotations

import base64

import kubernetes_validate
import pytest

from controlplane.errors import ConfigError
from controlplane.injector.webhook_config import mutating_webhook_configuration

CA_PEM = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def test_configuration_validates():
    config = mutating_webhook_configuration(ca_bundle_pem=CA_PEM)
    kubernetes_validate.validate(config, kubernetes_validate.latest_version(), strict=True)


def test_points_at_control_plane_service():
    webhook = mutating_webhook_configuration(ca_bundle_pem=CA_PEM)["webhooks"][0]
    assert webhook["clientConfig"]["service"] == {
        "name": "idmesh-controlplane", "namespace": "idmesh-system", "path": "/inject", "port": 15017,
    }
    assert base64.b64decode(webhook["clientConfig"]["caBundle"]) == CA_PEM


def test_only_pod_creation_reaches_webhook():
    webhook = mutating_webhook_configuration(ca_bundle_pem=CA_PEM)["webhooks"][0]
    assert webhook["rules"] == [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                                 "resources": ["pods"], "scope": "Namespaced"}]
    assert webhook["admissionReviewVersions"] == ["v1"]
    assert webhook["sideEffects"] == "None"


def test_disabled_and_system_namespaces_excluded():
    selector = mutating_webhook_configuration(ca_bundle_pem=CA_PEM)["webhooks"][0]["namespaceSelector"]
    assert selector == {"matchExpressions": [
        {"key": "idmesh.io/injection", "operator": "NotIn", "values": ["disabled"]},
        {"key": "kubernetes.io/metadata.name", "operator": "NotIn",
         "values": ["idmesh-system", "kube-node-lease", "kube-public", "kube-system"]},
    ]}


def test_failure_policy_default_ignore_and_configurable():
    assert mutating_webhook_configuration(ca_bundle_pem=CA_PEM)["webhooks"][0]["failurePolicy"] == "Ignore"
    assert mutating_webhook_configuration(ca_bundle_pem=CA_PEM, failure_policy="Fail")["webhooks"][0]["failurePolicy"] == "Fail"


def test_object_selector_passed_through():
    selector = {"matchLabels": {"mesh": "yes"}}
    webhook = mutating_webhook_configuration(ca_bundle_pem=CA_PEM, object_selector=selector)["webhooks"][0]
    assert webhook["objectSelector"] == selector


def test_unknown_failure_policy_rejected():
    with pytest.raises(ConfigError, match="failure policy 'Retry' is not Ignore or Fail"):
        mutating_webhook_configuration(ca_bundle_pem=CA_PEM, failure_policy="Retry")


def test_timeout_over_30_seconds_rejected():
    with pytest.raises(ConfigError, match="webhook timeout 31 s is outside the 1 to 30 s"):
        mutating_webhook_configuration(ca_bundle_pem=CA_PEM, timeout_seconds=31)
