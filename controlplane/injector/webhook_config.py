"""The MutatingWebhookConfiguration that points the API server at the injector, for the install manifests."""

from __future__ import annotations

import base64
from typing import Any, Literal

from controlplane.errors import ConfigError
from controlplane.injector.decision import INJECTION_LABEL
from controlplane.injector.webhook import INJECT_PATH
from controlplane.model.types import DEFAULT_ROOT_NAMESPACE
from controlplane.server.tls import CONTROL_PLANE_SERVICE_ACCOUNT
from controlplane.translate.resources import WEBHOOK_PORT

WEBHOOK_CONFIGURATION_NAME = "idmesh-sidecar-injector"
WEBHOOK_NAME = "sidecar-injector.idmesh.io"
# Namespaces whose pods never reach the webhook: the control plane's own (its pods must start
# for the webhook to exist at all) and the cluster's system namespaces.
EXCLUDED_NAMESPACES = ("kube-system", "kube-public", "kube-node-lease")


def mutating_webhook_configuration(
    *,
    ca_bundle_pem: bytes,
    failure_policy: Literal["Ignore", "Fail"] = "Ignore",
    service_name: str = CONTROL_PLANE_SERVICE_ACCOUNT,
    service_namespace: str = DEFAULT_ROOT_NAMESPACE,
    port: int = WEBHOOK_PORT,
    timeout_seconds: int = 10,
    object_selector: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build the configuration object; `ca_bundle_pem` contains the roots that signed the webhook's certificate.

    The namespace selector leaves out namespaces labelled `idmesh.io/injection=disabled`, so the
    API server does not even call the webhook for them. It cannot select on pod annotations,
    so every other pod creation reaches the webhook, which decides per pod.
    """
    if failure_policy not in ("Ignore", "Fail"):
        raise ConfigError(f"failure policy {failure_policy!r} is not Ignore or Fail", value=failure_policy)
    if not 1 <= timeout_seconds <= 30:
        raise ConfigError(f"webhook timeout {timeout_seconds} s is outside the 1 to 30 s the API server accepts", value=timeout_seconds)
    webhook: dict[str, Any] = {
        "name": WEBHOOK_NAME,
        "admissionReviewVersions": ["v1"],
        "sideEffects": "None",
        "failurePolicy": failure_policy,
        "matchPolicy": "Equivalent",
        # What is injected does not depend on other containers, and a second call would find the
        # status annotation and change nothing.
        "reinvocationPolicy": "Never",
        "timeoutSeconds": timeout_seconds,
        "clientConfig": {
            "service": {"name": service_name, "namespace": service_namespace, "path": INJECT_PATH, "port": port},
            "caBundle": base64.b64encode(ca_bundle_pem).decode("ascii"),
        },
        "rules": [{
            "operations": ["CREATE"],
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "resources": ["pods"],
            "scope": "Namespaced",
        }],
        "namespaceSelector": {"matchExpressions": [
            {"key": INJECTION_LABEL, "operator": "NotIn", "values": ["disabled"]},
            {"key": "kubernetes.io/metadata.name", "operator": "NotIn",
             "values": sorted({service_namespace, *EXCLUDED_NAMESPACES})},
        ]},
    }
    if object_selector is not None:
        webhook["objectSelector"] = object_selector
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": WEBHOOK_CONFIGURATION_NAME, "labels": {"app.kubernetes.io/part-of": "idmesh"}},
        "webhooks": [webhook],
    }
