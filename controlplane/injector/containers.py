"""The objects injected into a pod: the proxy container, the iptables init container and their volumes.

The proxy container runs `mesh-agent`, which gets the pod's SVID with the projected
ServiceAccount token, serves it to Envoy over SDS and runs Envoy, all as the proxy UID that the
iptables rules leave uncaptured. Values known only when the pod runs (namespace, pod IP,
ServiceAccount) come from the downward API through the agent's `IDMESH_*` variables.
"""

from __future__ import annotations

from typing import Any, Mapping

from controlplane.iptables.rules import CaptureSettings
from controlplane.injector.settings import InjectionSettings
from controlplane.translate.resources import AGENT_HEALTH_PORT

PROXY_CONTAINER = "idmesh-proxy"
INIT_CONTAINER = "idmesh-init"
TOKEN_VOLUME = "idmesh-token"
ROOT_CERT_VOLUME = "idmesh-root-cert"
PROXY_VOLUME = "idmesh-proxy"
VOLUMES = (TOKEN_VOLUME, ROOT_CERT_VOLUME, PROXY_VOLUME)

TOKEN_DIR = "/var/run/idmesh/token"
TOKEN_FILE = "idmesh-token"
ROOT_CERT_DIR = "/var/run/idmesh/root-cert"
ROOT_CERT_KEY = "root-cert.pem"
PROXY_DIR = "/var/run/idmesh/proxy"
# The agent refuses an SDS socket directory that other users can enter, and an emptyDir is
# world-writable, so the socket goes one level down where the agent creates a 0700 directory.
SDS_SOCKET = f"{PROXY_DIR}/sds/sds.sock"
BOOTSTRAP_FILE = f"{PROXY_DIR}/envoy.json"
READY_PATH = "/healthz/ready"


def _field_env(name: str, field_path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": field_path}}}


def proxy_container(settings: InjectionSettings, *, workload: str, labels: Mapping[str, str]) -> dict[str, Any]:
    """Build the sidecar container; `workload` empty means the pod's own name at run time."""
    env = [
        _field_env("IDMESH_NAMESPACE", "metadata.namespace"),
        _field_env("IDMESH_SERVICE_ACCOUNT", "spec.serviceAccountName"),
        _field_env("IDMESH_INSTANCE_IP", "status.podIP"),
        {"name": "IDMESH_WORKLOAD", "value": workload} if workload else _field_env("IDMESH_WORKLOAD", "metadata.name"),
        # Label values cannot contain "," or "=", so this list parses back unambiguously.
        {"name": "IDMESH_LABELS", "value": ",".join(f"{key}={value}" for key, value in sorted(labels.items()))},
    ]
    probe = {"httpGet": {"path": READY_PATH, "port": AGENT_HEALTH_PORT}, "periodSeconds": 2, "failureThreshold": 30}
    container: dict[str, Any] = {
        "name": PROXY_CONTAINER,
        "image": settings.proxy_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["mesh-agent"],
        "args": [
            "--mode", "kubernetes",
            "--control-plane", settings.control_plane_address,
            "--trust-domain", settings.trust_domain,
            "--ca-root", f"{ROOT_CERT_DIR}/{ROOT_CERT_KEY}",
            "--token-file", f"{TOKEN_DIR}/{TOKEN_FILE}",
            "--sds-socket", SDS_SOCKET,
            "--bootstrap-out", BOOTSTRAP_FILE,
            # The kubelet probes the pod IP, not loopback.
            "--health-address", f"0.0.0.0:{AGENT_HEALTH_PORT}",
            "--log-level", settings.log_level,
        ],
        "env": env,
        "ports": [{"name": "idmesh-health", "containerPort": AGENT_HEALTH_PORT, "protocol": "TCP"}],
        "readinessProbe": probe,
        "resources": {
            "requests": {"cpu": settings.proxy_cpu_request, "memory": settings.proxy_memory_request},
            "limits": {"memory": settings.proxy_memory_limit},
        },
        "securityContext": {
            "runAsUser": settings.proxy_uid,
            "runAsGroup": settings.proxy_gid,
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": True},
            {"name": ROOT_CERT_VOLUME, "mountPath": ROOT_CERT_DIR, "readOnly": True},
            {"name": PROXY_VOLUME, "mountPath": PROXY_DIR},
        ],
    }
    if settings.native_sidecar:
        # The kubelet starts the next container only after a restartable init container's
        # startup probe passes, so the application starts with its SVID and Envoy ready.
        container["restartPolicy"] = "Always"
        container["startupProbe"] = {"httpGet": {"path": READY_PATH, "port": AGENT_HEALTH_PORT},
                                     "periodSeconds": 1, "failureThreshold": 300}
    return container


def init_container(settings: InjectionSettings, capture: CaptureSettings) -> dict[str, Any]:
    """Build the init container that installs the capture rules in the pod's network namespace."""
    args = [
        "--proxy-uid", str(capture.proxy_uid),
        "--proxy-gid", str(capture.proxy_gid),
        "--inbound-capture-port", str(capture.inbound_capture_port),
        "--outbound-capture-port", str(capture.outbound_capture_port),
    ]
    for option, values in (
        ("--exclude-inbound-ports", capture.exclude_inbound_ports),
        ("--exclude-outbound-ports", capture.exclude_outbound_ports),
        ("--exclude-outbound-ip-ranges", capture.exclude_outbound_ip_ranges),
    ):
        if values:
            args += [option, ",".join(str(value) for value in values)]
    return {
        "name": INIT_CONTAINER,
        "image": settings.init_image or settings.proxy_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["idmesh-iptables"],
        "args": args,
        "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}},
        "securityContext": {
            # iptables needs root plus these two capabilities inside the pod's network namespace.
            "runAsUser": 0,
            "runAsGroup": 0,
            "runAsNonRoot": False,
            "allowPrivilegeEscalation": False,
            "privileged": False,
            # iptables writes its lock file under /run.
            "readOnlyRootFilesystem": False,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
        },
    }


def volumes(settings: InjectionSettings) -> list[dict[str, Any]]:
    """Build the token, root certificate and proxy scratch volumes."""
    return [
        {
            "name": TOKEN_VOLUME,
            "projected": {"sources": [{"serviceAccountToken": {
                "audience": settings.token_audience,
                "expirationSeconds": settings.token_expiration_seconds,
                "path": TOKEN_FILE,
            }}]},
        },
        {"name": ROOT_CERT_VOLUME, "configMap": {"name": settings.root_cert_config_map}},
        {"name": PROXY_VOLUME, "emptyDir": {"medium": "Memory"}},
    ]
