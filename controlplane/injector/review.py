"""`admission.k8s.io/v1` AdmissionReview in, AdmissionReview out: the webhook's pure core.

Two kinds of bad input are handled differently on purpose:

- A body that is not an AdmissionReview at all (not JSON, another apiVersion or kind, no
  `request`, no `request.uid`) raises `AdmissionReviewError`, which the server returns as HTTP
  400. The API server never sends such a body, so the caller is something else and gets a clear
  error.
- A well-formed review that the injector does not handle (another resource than pods, another
  operation than CREATE, a pod object that cannot be read, namespace labels that cannot be
  looked up) is answered `allowed: true` with no patch and a warning saying why. Blocking pod
  creation for a mesh fault would take applications down with the mesh, whatever the
  webhook's failurePolicy says.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any, Mapping

from controlplane.errors import MeshError

API_VERSION = "admission.k8s.io/v1"
KIND = "AdmissionReview"
POD_KIND = {"group": "", "version": "v1", "kind": "Pod"}


class AdmissionReviewError(MeshError, ValueError):
    """A request body that is not an `admission.k8s.io/v1` AdmissionReview with a request."""


@dataclass(frozen=True, slots=True)
class PodRequest:
    """The parts of an admission request for pod creation that injection needs."""

    uid: str
    namespace: str
    pod: Mapping[str, Any]

    @property
    def pod_name(self) -> str:
        """Name the pod for logs: its name, else its generateName prefix (set for workload pods)."""
        metadata = self.pod.get("metadata") or {}
        return str(metadata.get("name") or metadata.get("generateName") or "")


def parse_review(body: bytes) -> dict[str, Any]:
    """Parse and check the envelope; return `request`. Raise `AdmissionReviewError` when invalid."""
    try:
        review = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdmissionReviewError(f"request body is not JSON: {exc}") from exc
    if not isinstance(review, dict):
        raise AdmissionReviewError(f"request body is a JSON {type(review).__name__}, not an AdmissionReview object")
    api_version, kind = review.get("apiVersion"), review.get("kind")
    if api_version != API_VERSION or kind != KIND:
        raise AdmissionReviewError(
            f"apiVersion {api_version!r} kind {kind!r} is not supported; send apiVersion {API_VERSION!r} kind {KIND!r}",
            api_version=api_version,
            kind=kind,
        )
    request = review.get("request")
    if not isinstance(request, dict):
        raise AdmissionReviewError("AdmissionReview has no request object")
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid:
        raise AdmissionReviewError("AdmissionReview request has no uid")
    return request


def pod_request(request: Mapping[str, Any]) -> PodRequest | str:
    """Return the pod creation in `request`, or the reason why the request is not one."""
    kind = request.get("kind")
    if kind != POD_KIND or (request.get("resource") or {}).get("resource") != "pods":
        return f"the idmesh injector only handles pods; this request is for {_describe(kind)}, left unchanged"
    if request.get("subResource"):
        return f"the idmesh injector does not handle the pods/{request.get('subResource')} subresource; left unchanged"
    if request.get("operation") != "CREATE":
        return f"the idmesh injector only handles CREATE, not {request.get('operation')!r}; pod left unchanged"
    pod = request.get("object")
    if not isinstance(pod, dict) or not isinstance(pod.get("spec"), dict):
        return "the request's object is not a pod with a spec; left unchanged"
    if not all(isinstance(pod["spec"].get(key) or [], list) for key in ("containers", "initContainers", "volumes")):
        return "the pod's containers, initContainers or volumes are not lists; left unchanged"
    namespace = request.get("namespace") or (pod.get("metadata") or {}).get("namespace") or ""
    return PodRequest(uid=request["uid"], namespace=str(namespace), pod=pod)


def _describe(kind: Any) -> str:
    if not isinstance(kind, dict):
        return repr(kind)
    group = kind.get("group") or "core"
    return f"{kind.get('kind')} ({group}/{kind.get('version')})"


def review_response(uid: str, *, patch: list[dict[str, Any]] | None = None, warnings: tuple[str, ...] | list[str] = ()) -> dict[str, Any]:
    """Build the AdmissionReview that allows the request, applying `patch` when it is not empty."""
    response: dict[str, Any] = {"uid": uid, "allowed": True}
    if patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(json.dumps(patch, separators=(",", ":")).encode()).decode("ascii")
    if warnings:
        response["warnings"] = list(warnings)
    return {"apiVersion": API_VERSION, "kind": KIND, "response": response}
