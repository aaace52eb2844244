"""The admission webhook over HTTPS on loopback, with AdmissionReview bodies as the API server sends them."""

from __future__ import annotations

import base64
import copy
import json
import ssl
from datetime import datetime, timezone
from pathlib import Path

import aiohttp
import jsonpatch
import kubernetes_validate
import pytest
from structlog.testing import capture_logs

from controlplane.identity.ca import CertificateAuthority
from controlplane.identity.pemfiles import write_secret_file
from controlplane.injector.settings import InjectionSettings
from controlplane.injector.webhook import InjectorWebhook, server_ssl_context
from controlplane.server.tls import control_plane_dns_names, control_plane_spiffe_id

DATA = Path(__file__).resolve().parents[1] / "data" / "admission"
K8S_VERSION = kubernetes_validate.latest_version()
SERVICE_NAME = control_plane_dns_names("idmesh-system")[0]
ENABLED = {"idmesh.io/injection": "enabled"}
DISABLED = {"idmesh.io/injection": "disabled"}
HOST_NETWORK_REASON = (
    "hostNetwork pods are never injected: the pod shares the node's network namespace, "
    "so the sidecar would capture the node's traffic"
)


def fixture(name: str) -> dict:
    return json.loads((DATA / name).read_text())


@pytest.fixture(scope="module")
def serving(tmp_path_factory):
    """A serving certificate from the mesh CA for the control plane's Service name."""
    directory = tmp_path_factory.mktemp("webhook-ca")
    now = datetime.now(timezone.utc)
    ca = CertificateAuthority.create(directory / "ca", trust_domain="cluster.local", now=now)
    issued, key_pem = ca.issue(control_plane_spiffe_id("cluster.local", "idmesh-system"), ttl=None, now=now,
                               dns_names=control_plane_dns_names("idmesh-system"))
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_text("".join(issued.cert_chain_pem))
    write_secret_file(key_file, key_pem)
    roots = (directory / "ca" / "root-cert.pem").read_text()
    return cert_file, key_file, roots


class Client:
    def __init__(self, session: aiohttp.ClientSession, port: int, roots: str) -> None:
        self.session = session
        self.base = f"https://127.0.0.1:{port}"
        self.ssl = ssl.create_default_context(cadata=roots)

    async def post(self, body: bytes | dict, path: str = "/inject") -> tuple[int, dict]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        async with self.session.post(self.base + path, data=data, ssl=self.ssl, server_hostname=SERVICE_NAME,
                                     headers={"Content-Type": "application/json"}) as response:
            return response.status, await response.json(content_type=None)

    async def get(self, path: str) -> int:
        async with self.session.get(self.base + path, ssl=self.ssl, server_hostname=SERVICE_NAME) as response:
            return response.status


@pytest.fixture
def namespaces():
    """Namespace labels returned by the webhook's lookup; tests set the entry for `shop`."""
    return {}


@pytest.fixture
async def client(serving, namespaces):
    cert_file, key_file, roots = serving

    async def lookup(namespace):
        value = namespaces.get(namespace)
        if isinstance(value, Exception):
            raise value
        return value

    webhook = InjectorWebhook(settings=InjectionSettings(), namespace_labels=lookup,
                              ssl_context=server_ssl_context(cert_file, key_file), host="127.0.0.1", port=0)
    port = await webhook.start()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            yield Client(session, port, roots)
    finally:
        await webhook.stop()


def decoded_patch(response: dict) -> list[dict]:
    assert response["response"]["patchType"] == "JSONPatch"
    return json.loads(base64.b64decode(response["response"]["patch"]))


def patched_pod(review: dict, response: dict) -> dict:
    return jsonpatch.apply_patch(review["request"]["object"], decoded_patch(response))


def assert_valid(obj: dict) -> None:
    """Validate against the Kubernetes OpenAPI schema that kubernetes-validate ships, no unknown fields."""
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{obj.get('kind')} fails Kubernetes {K8S_VERSION} validation: {exc.message} at {list(exc.path)}")


def init_container_names(pod: dict) -> list[str]:
    return [c["name"] for c in pod["spec"].get("initContainers", [])]


async def test_unlabelled_namespace_pod_true_injected(client, namespaces):
    namespaces["shop"] = {}
    review = fixture("pod-inject-true.json")
    status, body = await client.post(review)
    assert status == 200
    assert body["apiVersion"] == "admission.k8s.io/v1"
    assert body["kind"] == "AdmissionReview"
    assert body["response"]["uid"] == review["request"]["uid"]
    assert body["response"]["allowed"] is True
    pod = patched_pod(review, body)
    assert init_container_names(pod) == ["idmesh-init", "idmesh-proxy"]
    assert_valid(pod)


async def test_patched_pod_names_workload_from_replicaset(client, namespaces):
    namespaces["shop"] = {}
    review = fixture("pod-inject-true.json")
    _, body = await client.post(review)
    proxy = patched_pod(review, body)["spec"]["initContainers"][1]
    env = {item["name"]: item.get("value") for item in proxy["env"]}
    assert env["IDMESH_WORKLOAD"] == "ledger"
    assert env["IDMESH_LABELS"] == "app=ledger,pod-template-hash=6d8f7c9b5"


async def test_enabled_namespace_pod_false_not_injected(client, namespaces):
    namespaces["shop"] = ENABLED
    review = fixture("pod-inject-false.json")
    status, body = await client.post(review)
    assert status == 200
    assert body["response"] == {"uid": review["request"]["uid"], "allowed": True}


async def test_disabled_namespace_wins_over_pod_true(client, namespaces):
    namespaces["shop"] = DISABLED
    review = fixture("pod-inject-true.json")
    with capture_logs() as logs:
        _, body = await client.post(review)
    assert body["response"] == {"uid": review["request"]["uid"], "allowed": True}
    skipped = [entry for entry in logs if entry["event"] == "injector.pod.skipped"]
    assert skipped[0]["reason"] == (
        "namespace label idmesh.io/injection=disabled wins over pod annotation idmesh.io/inject=true"
    )


async def test_enabled_namespace_unannotated_pod_injected(client, namespaces):
    namespaces["shop"] = ENABLED
    review = fixture("pod-without-annotations.json")
    _, body = await client.post(review)
    pod = patched_pod(review, body)
    assert init_container_names(pod) == ["idmesh-init", "idmesh-proxy"]
    assert_valid(pod)


async def test_unlabelled_namespace_unannotated_pod_not_injected(client, namespaces):
    namespaces["shop"] = {}
    review = fixture("pod-without-annotations.json")
    _, body = await client.post(review)
    assert body["response"] == {"uid": review["request"]["uid"], "allowed": True}


async def test_host_network_never_injected_and_logged(client, namespaces):
    namespaces["shop"] = ENABLED
    review = fixture("pod-host-network.json")
    with capture_logs() as logs:
        _, body = await client.post(review)
    warning = f"injection was requested but {HOST_NETWORK_REASON}"
    assert body["response"] == {"uid": review["request"]["uid"], "allowed": True, "warnings": [warning]}
    skipped = [entry for entry in logs if entry["event"] == "injector.pod.skipped"]
    assert skipped[0]["log_level"] == "warning"
    assert skipped[0]["reason"] == HOST_NETWORK_REASON
    assert skipped[0]["pod"] == "ledger-6d8f7c9b5-"


async def test_unknown_pod_value_treated_as_unset_with_warning(client, namespaces):
    namespaces["shop"] = {}
    review = fixture("pod-inject-unknown-value.json")
    _, body = await client.post(review)
    assert body["response"] == {
        "uid": review["request"]["uid"],
        "allowed": True,
        "warnings": ['pod annotation idmesh.io/inject="enabled" is not "true" or "false"; it is treated as unset'],
    }


async def test_unknown_pod_value_in_enabled_namespace_injected(client, namespaces):
    namespaces["shop"] = ENABLED
    review = fixture("pod-inject-unknown-value.json")
    _, body = await client.post(review)
    assert "patch" in body["response"]
    assert body["response"]["warnings"] == [
        'pod annotation idmesh.io/inject="enabled" is not "true" or "false"; it is treated as unset'
    ]


async def test_reinjection_changes_nothing(client, namespaces):
    namespaces["shop"] = {}
    review = fixture("pod-inject-true.json")
    _, first = await client.post(review)
    again = copy.deepcopy(review)
    again["request"]["uid"] = "6a0e0c51-0b1b-4f6d-8d0e-3f1c2b7a9d99"
    again["request"]["object"] = patched_pod(review, first)
    _, second = await client.post(again)
    assert second["response"] == {"uid": "6a0e0c51-0b1b-4f6d-8d0e-3f1c2b7a9d99", "allowed": True}


async def test_exclusion_annotations_reach_init_container(client, namespaces):
    namespaces["shop"] = {}
    review = fixture("pod-exclusions.json")
    _, body = await client.post(review)
    init = patched_pod(review, body)["spec"]["initContainers"][0]
    assert init["args"][-6:] == [
        "--exclude-inbound-ports", "9090",
        "--exclude-outbound-ports", "5432,6379",
        "--exclude-outbound-ip-ranges", "10.96.0.0/12",
    ]


async def test_unknown_namespace_left_unchanged_with_warning(client, namespaces):
    review = fixture("pod-inject-true.json")
    _, body = await client.post(review)
    assert body["response"] == {
        "uid": review["request"]["uid"],
        "allowed": True,
        "warnings": ["idmesh does not know namespace 'shop' yet, pod left unchanged"],
    }


async def test_failed_namespace_lookup_allows_pod(client, namespaces):
    namespaces["shop"] = RuntimeError("informer stopped")
    review = fixture("pod-inject-true.json")
    status, body = await client.post(review)
    assert status == 200
    assert body["response"]["allowed"] is True
    assert "patch" not in body["response"]
    assert body["response"]["warnings"] == [
        "idmesh could not read the labels of namespace 'shop', pod left unchanged: RuntimeError('informer stopped')"
    ]


async def test_body_not_json_is_400(client):
    status, body = await client.post(b"{not json")
    assert status == 400
    assert body == {"error": "request body is not JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"}


async def test_v1beta1_review_is_400(client):
    status, body = await client.post(fixture("review-v1beta1.json"))
    assert status == 400
    assert body == {"error": "apiVersion 'admission.k8s.io/v1beta1' kind 'AdmissionReview' is not supported; "
                             "send apiVersion 'admission.k8s.io/v1' kind 'AdmissionReview'"}


async def test_review_without_request_is_400(client):
    status, body = await client.post(fixture("review-without-request.json"))
    assert status == 400
    assert body == {"error": "AdmissionReview has no request object"}


async def test_json_array_is_400(client):
    status, body = await client.post(b"[]")
    assert status == 400
    assert body == {"error": "request body is a JSON list, not an AdmissionReview object"}


async def test_configmap_review_allowed_with_warning(client, namespaces):
    review = fixture("configmap-create.json")
    status, body = await client.post(review)
    assert status == 200
    assert body["response"] == {
        "uid": review["request"]["uid"],
        "allowed": True,
        "warnings": ["the idmesh injector only handles pods; this request is for ConfigMap (core/v1), left unchanged"],
    }


async def test_pod_update_allowed_with_warning(client, namespaces):
    namespaces["shop"] = {}
    review = fixture("pod-update.json")
    _, body = await client.post(review)
    assert body["response"] == {
        "uid": review["request"]["uid"],
        "allowed": True,
        "warnings": ["the idmesh injector only handles CREATE, not 'UPDATE'; pod left unchanged"],
    }


async def test_pod_without_spec_allowed_with_warning(client, namespaces):
    namespaces["shop"] = {}
    review = fixture("pod-inject-true.json")
    del review["request"]["object"]["spec"]
    _, body = await client.post(review)
    assert body["response"]["warnings"] == ["the request's object is not a pod with a spec; left unchanged"]


async def test_get_on_inject_is_405(client):
    assert await client.get("/inject") == 405


async def test_healthz_is_200(client):
    assert await client.get("/healthz") == 200
