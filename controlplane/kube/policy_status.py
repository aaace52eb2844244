"""Write an `Accepted` condition into the status of each AuthorizationPolicy and PeerAuthentication.

The condition records whether the mesh enforces the policy as written:

| status | reason | when |
| --- | --- | --- |
| True | `Accepted` | the policy parsed and translated |
| False | `InvalidSpec` | the policy failed validation; the message lists each field error |
| False | `TranslationFailed` | the policy is valid but could not become Envoy configuration |

A policy with status False fails closed for the workloads it selects. The condition goes through
the `status` subresource (which the CRDs in `manifests/crds` declare) as a JSON merge patch. The
patch carries the `resourceVersion` the policy was evaluated at, so a policy edited in the
meantime is not given the old verdict: the API server returns 409 and the next sync evaluates
the new version. Writes happen only on the leader, and only when the condition changed
(`lastTransitionTime` aside), so a steady state costs no requests.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kubernetes.client import ApiClient, CustomObjectsApi

from controlplane.errors import KubernetesApiError
from controlplane.kube.rest import DEFAULT_TIMEOUT, MERGE_PATCH, Timeout, call_json
from controlplane.log import get_logger
from controlplane.model.policy import POLICY_GROUPS, parse_authorization_policy, parse_peer_authentication

ACCEPTED = "Accepted"
# The Kubernetes API limits a condition message to 32768 characters.
MAX_MESSAGE_CHARS = 32768

PARSERS = {
    "AuthorizationPolicy": (parse_authorization_policy, "authorizationpolicies"),
    "PeerAuthentication": (parse_peer_authentication, "peerauthentications"),
}

log = get_logger("kube.policy_status")

# (kind, namespace, name) of a policy object.
PolicyKey = tuple[str, str, str]


@dataclass(frozen=True, slots=True)
class Verdict:
    """The `Accepted` condition of one policy, without its timestamps."""

    accepted: bool
    reason: str
    message: str


def policy_key(obj: Mapping[str, Any]) -> PolicyKey:
    metadata = obj.get("metadata") or {}
    return obj.get("kind", ""), metadata.get("namespace", ""), metadata.get("name", "")


def is_policy(obj: Mapping[str, Any]) -> bool:
    """Return whether `obj` is an AuthorizationPolicy or PeerAuthentication of a group the mesh reads."""
    group = str(obj.get("apiVersion", "")).split("/")[0]
    return group in POLICY_GROUPS and obj.get("kind") in PARSERS


def evaluate(obj: Mapping[str, Any], *, root_namespace: str, translation_error: str | None = None) -> Verdict:
    """Return the verdict on one policy object: its own validation errors first, then the translator's."""
    parse, _ = PARSERS[obj["kind"]]
    policy, errors = parse(obj, root_namespace=root_namespace)
    problem = policy.error if policy is not None else "; ".join(str(error) for error in errors)
    if problem:
        return Verdict(False, "InvalidSpec", problem[:MAX_MESSAGE_CHARS])
    if translation_error:
        return Verdict(False, "TranslationFailed", translation_error[:MAX_MESSAGE_CHARS])
    return Verdict(True, "Accepted", "the policy is valid and enforced")


def current_condition(obj: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for condition in (obj.get("status") or {}).get("conditions") or ():
        if isinstance(condition, Mapping) and condition.get("type") == ACCEPTED:
            return condition
    return None


def condition_for(obj: Mapping[str, Any], verdict: Verdict, now: datetime) -> dict[str, Any]:
    """Return the condition to store; `lastTransitionTime` changes only when the status flips."""
    status = "True" if verdict.accepted else "False"
    previous = current_condition(obj)
    transition = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    if previous is not None and previous.get("status") == status and previous.get("lastTransitionTime"):
        transition = previous["lastTransitionTime"]
    condition = {
        "type": ACCEPTED,
        "status": status,
        "reason": verdict.reason,
        "message": verdict.message,
        "lastTransitionTime": transition,
    }
    generation = (obj.get("metadata") or {}).get("generation")
    if isinstance(generation, int):
        condition["observedGeneration"] = generation
    return condition


def is_unchanged(obj: Mapping[str, Any], condition: Mapping[str, Any]) -> bool:
    previous = current_condition(obj)
    if previous is None:
        return False
    fields = ("status", "reason", "message", "observedGeneration")
    return all(previous.get(field) == condition.get(field) for field in fields)


def status_patch(obj: Mapping[str, Any], condition: dict[str, Any]) -> dict[str, Any]:
    """Return the merge patch that sets `condition` and keeps every other condition type."""
    others = [
        item for item in (obj.get("status") or {}).get("conditions") or ()
        if isinstance(item, Mapping) and item.get("type") != ACCEPTED
    ]
    resource_version = (obj.get("metadata") or {}).get("resourceVersion")
    return {"metadata": {"resourceVersion": resource_version}, "status": {"conditions": [*others, condition]}}


class PolicyStatusWriter:
    """Writes `Accepted` conditions through the status subresource, on the leader only."""

    def __init__(
        self,
        api_client: ApiClient,
        *,
        root_namespace: str,
        is_leader: Callable[[], bool],
        clock: Callable[[], datetime],
        timeout: Timeout = DEFAULT_TIMEOUT,
    ) -> None:
        self._api = CustomObjectsApi(api_client)
        self._root_namespace = root_namespace
        self._is_leader = is_leader
        self._clock = clock
        self._timeout = timeout
        # How many status patches the API server accepted.
        self.writes = 0

    def sync(
        self, objects: Iterable[Mapping[str, Any]], *, translation_errors: Mapping[PolicyKey, str] | None = None
    ) -> int:
        """Bring the condition of every policy in `objects` up to date; return how many were written.

        Blocks on HTTP: async callers run it with `asyncio.to_thread`.
        """
        if not self._is_leader():
            return 0
        errors = translation_errors or {}
        written = 0
        for obj in objects:
            if not is_policy(obj):
                continue
            verdict = evaluate(obj, root_namespace=self._root_namespace, translation_error=errors.get(policy_key(obj)))
            if self.write(obj, verdict):
                written += 1
        return written

    def write(self, obj: Mapping[str, Any], verdict: Verdict) -> bool:
        """Store `verdict` on `obj` unless it is already there; return whether a patch was sent and accepted."""
        if not self._is_leader():
            return False
        condition = condition_for(obj, verdict, self._clock())
        if is_unchanged(obj, condition):
            return False
        group, version = str(obj["apiVersion"]).split("/", 1)
        kind, namespace, name = policy_key(obj)
        plural = PARSERS[kind][1]
        try:
            call_json(self._api.patch_namespaced_custom_object_status, group, version, namespace, plural, name,
                      status_patch(obj, condition), what=f"PATCH {plural}/status {namespace}/{name}",
                      timeout=self._timeout, _content_type=MERGE_PATCH)
        except KubernetesApiError as exc:
            if exc.status in (404, 409):
                # The policy was deleted or edited since it was read, so the next sync evaluates the new state.
                log.debug("policy_status.stale", kind=kind, namespace=namespace, name=name, status=exc.status)
                return False
            log.warning("policy_status.write_failed", kind=kind, namespace=namespace, name=name, error=exc.message)
            return False
        self.writes += 1
        log.info("policy_status.written", kind=kind, namespace=namespace, name=name, accepted=verdict.accepted,
                 reason=verdict.reason)
        return True
