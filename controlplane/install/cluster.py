"""Create, update, delete and wait for the install objects through the official Kubernetes client.

Objects are applied as create-or-merge-patch: a GET, then a POST when the object is missing, a
JSON merge patch of the whole rendered object when it differs, and nothing when every rendered
field already has its value. Server-defaulted fields are left alone because the comparison only
looks at the fields the install sets. Every API failure leaves as `KubernetesApiError`.

NOTE: a merge patch never removes a field that a later version of the manifests stops setting
(lists are replaced whole, so list items do go). Server-side apply would, but the API emulator
the tests run against does not implement it.
"""

from __future__ import annotations

import base64
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping

import urllib3
import yaml
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

from controlplane.errors import KubernetesApiError
from controlplane.identity.ca import CA_CONFIG, ROOT_CERT, CertificateAuthority
from controlplane.install.errors import InstallError, RolloutTimeoutError
from controlplane.install.kinds import kind_of, reference
from controlplane.install.values import CaSource

# (connect, read) timeouts in seconds, as urllib3 takes them.
REQUEST_TIMEOUT = (5.0, 30.0)
MERGE_PATCH = "application/merge-patch+json"
FIELD_MANAGER = "meshctl"

Progress = Callable[[str], None]


def contains(live: Any, wanted: Any) -> bool:
    """Return whether every field of `wanted` has the same value in `live`.

    Mappings may have more keys in `live` (server defaults, metadata). Lists must have the same
    length, and each item is compared the same way, so defaults inside list items do not count
    as differences.
    """
    if isinstance(wanted, Mapping):
        return isinstance(live, Mapping) and all(key in live and contains(live[key], value) for key, value in wanted.items())
    if isinstance(wanted, list):
        return isinstance(live, list) and len(live) == len(wanted) and all(map(contains, live, wanted))
    return live == wanted


class Cluster:
    """JSON requests for install objects through an `ApiClient`."""

    def __init__(self, api_client: ApiClient) -> None:
        self._api_client = api_client

    def get(self, obj: Mapping[str, Any]) -> dict[str, Any] | None:
        """Return the live object that `obj` names, or None when it does not exist."""
        try:
            return self._request("GET", _object_path(obj))
        except KubernetesApiError as exc:
            if exc.status == 404:
                return None
            raise

    def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        kind = kind_of(obj)
        path = kind.collection_path(obj["metadata"].get("namespace"))
        return self._request("POST", path, body=obj, query=[("fieldManager", FIELD_MANAGER)])

    def merge_patch(self, obj: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
        return self._request(
            "PATCH", _object_path(obj), body=patch, query=[("fieldManager", FIELD_MANAGER)], content_type=MERGE_PATCH
        )

    def delete(self, obj: Mapping[str, Any]) -> bool:
        """Delete the object that `obj` names; return False when it did not exist."""
        try:
            self._request("DELETE", _object_path(obj), query=[("propagationPolicy", "Background")])
        except KubernetesApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def _request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        what = f"{method} {path}"
        request = self._api_client.param_serialize(
            method=method,
            resource_path=path,
            query_params=query or [],
            header_params={"Accept": "application/json", "Content-Type": content_type},
            body=body,
            auth_settings=["BearerToken"],
        )
        try:
            response = self._api_client.call_api(*request, _request_timeout=REQUEST_TIMEOUT)
            response.read()
            if not 200 <= response.status <= 299:
                raise ApiException.from_response(
                    http_resp=response, body=response.data.decode("utf-8", "replace"), data=None
                )
        except ApiException as exc:
            raise _api_error(what, exc) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise KubernetesApiError(
                f"{what} failed: the API server is unreachable ({type(exc).__name__}: {exc})",
                resource=path,
                status=0,
                reason="Unreachable",
            ) from exc
        try:
            document = json.loads(response.data) if response.data else {}
        except ValueError as exc:
            raise KubernetesApiError(f"{what} returned a body that is not JSON", resource=path, status=200, reason="BadBody") from exc
        return document if isinstance(document, dict) else {}


def _object_path(obj: Mapping[str, Any]) -> str:
    kind = kind_of(obj)
    return f"{kind.collection_path(obj['metadata'].get('namespace'))}/{obj['metadata']['name']}"


def _api_error(what: str, exc: ApiException) -> KubernetesApiError:
    try:
        status = json.loads(exc.body) if exc.body else {}
    except (TypeError, ValueError):
        status = {}
    status = status if isinstance(status, dict) else {}
    reason = status.get("reason") or exc.reason or ""
    detail = status.get("message") or ""
    message = f"{what} failed with HTTP {exc.status} {reason}".rstrip()
    return KubernetesApiError(
        f"{message}: {detail}" if detail else message, resource=what, status=exc.status or 0, reason=reason
    )


def apply_object(cluster: Cluster, obj: Mapping[str, Any]) -> str:
    """Create or update one object; return `created`, `configured` or `unchanged`."""
    live = cluster.get(obj)
    if live is None:
        cluster.create(obj)
        return "created"
    if contains(live, obj):
        return "unchanged"
    cluster.merge_patch(obj, obj)
    return "configured"


def apply_objects(cluster: Cluster, objects: list[dict[str, Any]], progress: Progress) -> dict[str, str]:
    """Apply `objects` in their order; return what happened to each, keyed by `kind/name`."""
    results = {}
    for obj in objects:
        result = apply_object(cluster, obj)
        results[reference(obj)] = result
        progress(f"{reference(obj)} {result}")
    return results


def delete_objects(cluster: Cluster, objects: list[dict[str, Any]], progress: Progress) -> dict[str, str]:
    """Delete `objects` in reverse order; return `deleted` or `not found` for each."""
    results = {}
    for obj in reversed(objects):
        result = "deleted" if cluster.delete(obj) else "not found"
        results[reference(obj)] = result
        progress(f"{reference(obj)} {result}")
    return results


@dataclass(frozen=True, slots=True)
class Rollout:
    desired: int
    ready: int
    done: bool


def rollout_state(deployment: Mapping[str, Any]) -> Rollout:
    """Read whether a Deployment is fully rolled out from its status.

    Done means the controller has seen the latest spec (`observedGeneration`), and every desired
    replica is updated and ready. `updatedReplicas` and `observedGeneration` are only compared
    when the server reports them.
    """
    desired = deployment.get("spec", {}).get("replicas", 1)
    status = deployment.get("status") or {}
    ready = status.get("readyReplicas", 0)
    generation = deployment.get("metadata", {}).get("generation")
    observed = status.get("observedGeneration")
    seen = generation is None or (observed is not None and observed >= generation)
    updated = status.get("updatedReplicas", desired) >= desired
    return Rollout(desired=desired, ready=ready, done=seen and updated and ready >= desired)


def wait_for_rollout(
    cluster: Cluster,
    deployment: Mapping[str, Any],
    *,
    timeout: float,
    progress: Progress,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    interval: float = 1.0,
) -> None:
    """Poll `deployment` until it is rolled out, or raise `RolloutTimeoutError` after `timeout` seconds."""
    deadline = clock() + timeout
    last_ready = -1
    while True:
        live = cluster.get(deployment)
        state = rollout_state(live or {"spec": deployment["spec"]})
        if state.done:
            progress(f"{reference(deployment)} ready: {state.ready}/{state.desired} replicas")
            return
        if state.ready != last_ready:
            progress(f"waiting for {reference(deployment)}: {state.ready}/{state.desired} replicas ready")
            last_ready = state.ready
        remaining = deadline - clock()
        if remaining <= 0:
            namespace = deployment["metadata"]["namespace"]
            raise RolloutTimeoutError(
                f"{reference(deployment)} in namespace {namespace} is not ready after {timeout:g} s: "
                f"{state.ready} of {state.desired} replicas ready. Check `kubectl -n {namespace} get pods` "
                "and the pod events, or run again with a longer --timeout",
                object=reference(deployment),
                ready=state.ready,
                desired=state.desired,
            )
        sleep(min(interval, remaining))


def ca_secret(namespace: str, name: str, files: Mapping[str, bytes]) -> dict[str, Any]:
    """Return a Secret holding a CA directory: one key per file."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/part-of": "idmesh"}},
        "type": "Opaque",
        "data": {key: base64.b64encode(value).decode("ascii") for key, value in sorted(files.items())},
    }


def generate_ca_files(trust_domain: str, *, now: datetime) -> dict[str, bytes]:
    """Create a new CA in a private temporary directory and return its files.

    The directory is mode 0700 and removed on return, so the keys exist on disk only briefly
    and only for this user.
    """
    with tempfile.TemporaryDirectory(prefix="idmesh-ca-") as scratch:
        ca_dir = Path(scratch) / "ca"
        CertificateAuthority.create(ca_dir, trust_domain=trust_domain, now=now)
        return {path.name: path.read_bytes() for path in sorted(ca_dir.iterdir()) if path.is_file()}


def ensure_ca_secret(
    cluster: Cluster,
    *,
    namespace: str,
    source: CaSource,
    trust_domain: str,
    now: datetime,
    progress: Progress,
) -> str:
    """Make sure the CA Secret exists and matches `trust_domain`; return its roots as base64 PEM.

    A generated CA is created once: an existing Secret is kept, so reinstalling never replaces
    the roots that every workload trusts.
    """
    probe = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": source.secret_name, "namespace": namespace}}
    live = cluster.get(probe)
    if live is None and source.generated:
        secret = ca_secret(namespace, source.secret_name, generate_ca_files(trust_domain, now=now))
        cluster.create(secret)
        progress(f"{reference(secret)} created (a new CA for trust domain {trust_domain})")
        return secret["data"][ROOT_CERT]
    if live is None:
        raise InstallError(
            f"Secret {source.secret_name} not found in namespace {namespace}. Create it from a CA directory: "
            f"controlplane ca init --ca-dir ca --trust-domain {trust_domain} && "
            f"kubectl -n {namespace} create secret generic {source.secret_name} --from-file=ca/",
            object=f"secret/{source.secret_name}",
        )
    progress(f"{reference(probe)} unchanged")
    return _check_ca_secret(live, trust_domain)


def check_existing_ca_secret(cluster: Cluster, *, namespace: str, source: CaSource, trust_domain: str) -> None:
    """Raise `InstallError` when the CA Secret exists and is not a CA for `trust_domain`.

    A missing Secret, or a missing namespace, passes: `ensure_ca_secret` creates or reports it.
    """
    probe = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": source.secret_name, "namespace": namespace}}
    live = cluster.get(probe)
    if live is not None:
        _check_ca_secret(live, trust_domain)


def _check_ca_secret(secret: Mapping[str, Any], trust_domain: str) -> str:
    name = reference(secret)
    data = secret.get("data") or {}
    missing = [key for key in (CA_CONFIG, ROOT_CERT) if key not in data]
    if missing:
        raise InstallError(
            f"{name} is not a CA directory: it has no {', '.join(missing)}; create it with "
            "kubectl create secret generic --from-file=DIR from a directory made by controlplane ca init",
            object=name,
        )
    try:
        settings = yaml.safe_load(base64.b64decode(data[CA_CONFIG]))
    except (ValueError, yaml.YAMLError) as exc:
        raise InstallError(f"{name}: {CA_CONFIG} is not valid base64 YAML", object=name) from exc
    held = settings.get("trust_domain") if isinstance(settings, dict) else None
    if held != trust_domain:
        raise InstallError(
            f"{name} contains a CA for trust domain {held!r}, but the install is for {trust_domain!r}; "
            f"pass --trust-domain {held} or use another CA Secret",
            object=name,
        )
    return data[ROOT_CERT]
