"""Attest a workload with its projected ServiceAccount token, checked by the Kubernetes API.

The agent sends the pod's projected token (audience `idmesh` by default) as
`authorization: Bearer <token>`. `KubernetesTokenAttestor` sends it to the API server in a
TokenReview that names the mesh's audience, so the API server checks the signature, the
validity period and the audience. The attestor then requires:

- `status.authenticated` and the mesh audience in `status.audiences`;
- a username of the form `system:serviceaccount:<namespace>:<service account>`;
- a token bound to a pod (`authentication.kubernetes.io/pod-name` and `pod-uid` in
  `status.user.extra`), and that pod must exist with the same uid, must not be terminating,
  and must run as that service account;
- when the caller names its node in the `idmesh-node-name` metadata entry, the pod runs on it
  (the token's `authentication.kubernetes.io/node-name`, when present, must agree too).

The proven identity is `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`.

Accepted tokens are cached for `cache_ttl` (never past the token's own expiry), keyed by the
SHA-256 of the token, so a burst of CSRs from one pod costs one TokenReview. The cost is that a
pod deleted within that window can still renew once. Refusals are not cached.

Bearer tokens that are not JWTs (join tokens: `idmesh-jt1.<payload>.<mac>`) are left to the
next attestor: put this attestor before `JoinTokenAttestor` in a `FirstCredentialAttestor`.

`attest` blocks on HTTP; async code calls `attest_async`, which runs it in a worker thread.
The token is never logged, and neither is its hash.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import hashlib
import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from kubernetes.client import ApiClient, AuthenticationV1Api, CoreV1Api

from controlplane.errors import AttestationError, KubernetesApiError, SpiffeIdError
from controlplane.identity.spiffe_id import SpiffeId
from controlplane.kube.rest import DEFAULT_TIMEOUT, Timeout, call_json
from controlplane.log import get_logger
from controlplane.server.attestation import bearer_token

DEFAULT_AUDIENCE = "idmesh"
NODE_NAME_METADATA = "idmesh-node-name"
SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"
EXTRA_POD_NAME = "authentication.kubernetes.io/pod-name"
EXTRA_POD_UID = "authentication.kubernetes.io/pod-uid"
EXTRA_NODE_NAME = "authentication.kubernetes.io/node-name"
DEFAULT_CACHE_SIZE = 4096
# A projected token is about 1 KB; anything far longer is not one and is not sent anywhere.
MAX_TOKEN_CHARS = 16384

log = get_logger("k8s_attestor")


def is_jwt(token: str) -> bool:
    """Return whether `token` has the JWS compact form: three base64url parts, a JSON header with `alg`."""
    parts = token.split(".")
    if len(parts) != 3 or not all(parts):
        return False
    header = _decode_json_part(parts[0])
    return isinstance(header, dict) and "alg" in header


def _decode_json_part(part: str) -> Any:
    try:
        raw = base64.b64decode(part + "=" * (-len(part) % 4), altchars=b"-_", validate=True)
        return json.loads(raw)
    except (binascii.Error, ValueError):
        return None


def _unverified_claims(token: str) -> dict[str, Any]:
    """Return the JWT payload without checking it; used only to explain a refusal or shorten caching."""
    claims = _decode_json_part(token.split(".")[1])
    return claims if isinstance(claims, dict) else {}


@dataclass(frozen=True, slots=True)
class ReviewedToken:
    """The identity and pod an accepted token proved, cached until `expires`."""

    identity: SpiffeId
    namespace: str
    service_account: str
    pod_name: str
    node_name: str | None
    expires: datetime


class TokenCache:
    """Accepted tokens by SHA-256 digest, least recently used evicted beyond `max_entries`."""

    def __init__(self, *, max_entries: int) -> None:
        self._entries: collections.OrderedDict[bytes, ReviewedToken] = collections.OrderedDict()
        self._max_entries = max_entries
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, digest: bytes, now: datetime) -> ReviewedToken | None:
        with self._lock:
            entry = self._entries.get(digest)
            if entry is None:
                return None
            if now >= entry.expires:
                del self._entries[digest]
                return None
            self._entries.move_to_end(digest)
            return entry

    def put(self, digest: bytes, entry: ReviewedToken) -> None:
        with self._lock:
            self._entries[digest] = entry
            self._entries.move_to_end(digest)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)


def _rejected(message: str, reason: str, **fields: Any) -> AttestationError:
    log.warning("attestation.k8s.rejected", reason=reason, detail=message, **fields)
    return AttestationError(f"ServiceAccount token rejected: {message}", reason=reason, **fields)


class KubernetesTokenAttestor:
    """Proves `spiffe://<trust domain>/ns/<ns>/sa/<sa>` from a projected ServiceAccount token."""

    def __init__(
        self,
        api_client: ApiClient,
        *,
        trust_domain: str,
        audience: str = DEFAULT_AUDIENCE,
        cache_ttl: timedelta = timedelta(seconds=30),
        cache_size: int = DEFAULT_CACHE_SIZE,
        timeout: Timeout = DEFAULT_TIMEOUT,
    ) -> None:
        self._authentication = AuthenticationV1Api(api_client)
        self._core = CoreV1Api(api_client)
        self._trust_domain = trust_domain
        self._audience = audience
        self._cache_ttl = cache_ttl
        self._cache = TokenCache(max_entries=cache_size)
        self._timeout = timeout

    @property
    def cached_tokens(self) -> int:
        return len(self._cache)

    async def attest_async(self, metadata: Mapping[str, str], peer: SpiffeId | None, now: datetime) -> SpiffeId | None:
        """Run `attest` in a worker thread, so the API requests do not block the event loop."""
        return await asyncio.to_thread(self.attest, metadata, peer, now)

    def attest(self, metadata: Mapping[str, str], peer: SpiffeId | None, now: datetime) -> SpiffeId | None:
        """Return the identity the token proves, None without a JWT bearer token, or raise `AttestationError`."""
        token = bearer_token(metadata)
        if token is None or len(token) > MAX_TOKEN_CHARS or not is_jwt(token):
            return None
        claimed_node = metadata.get(NODE_NAME_METADATA) or None
        digest = hashlib.sha256(token.encode("utf-8")).digest()

        reviewed = self._cache.get(digest, now)
        if reviewed is None:
            reviewed = self._review(token, now)
            self._cache.put(digest, reviewed)
            log.info("attestation.k8s.accepted", principal=str(reviewed.identity), pod=reviewed.pod_name,
                     node=reviewed.node_name)
        else:
            log.debug("attestation.k8s.cache_hit", principal=str(reviewed.identity), pod=reviewed.pod_name)
        self._check_claimed_node(reviewed, claimed_node)
        return reviewed.identity

    def _review(self, token: str, now: datetime) -> ReviewedToken:
        status = self._token_review(token)
        claims = _unverified_claims(token)
        if not status.get("authenticated"):
            raise self._unauthenticated(status, claims, now)
        if self._audience not in (status.get("audiences") or []):
            raise _rejected(
                f"the API server did not confirm audience {self._audience!r} (confirmed: {status.get('audiences') or []}); "
                f"project the token with audience {self._audience!r}",
                "wrong-audience",
            )

        user = status.get("user") or {}
        namespace, service_account = self._service_account(user.get("username", ""))
        extra = user.get("extra") or {}
        pod_name = _single_extra(extra, EXTRA_POD_NAME)
        pod_uid = _single_extra(extra, EXTRA_POD_UID)
        if pod_name is None or pod_uid is None:
            raise _rejected(
                f"the token of {namespace}/{service_account} is not bound to a pod; send the pod's projected "
                "ServiceAccount token, not a long-lived Secret token",
                "not-pod-bound", namespace=namespace, service_account=service_account,
            )

        pod = self._get_pod(namespace, pod_name)
        node_name = self._check_pod(pod, namespace=namespace, service_account=service_account, pod_uid=pod_uid,
                                    token_node=_single_extra(extra, EXTRA_NODE_NAME))
        try:
            identity = SpiffeId.for_workload(self._trust_domain, namespace, service_account)
        except SpiffeIdError as exc:
            raise _rejected(f"{namespace}/{service_account} is not a valid SPIFFE ID path: {exc}", "invalid-identity",
                            namespace=namespace, service_account=service_account) from exc

        expires = now + self._cache_ttl
        if isinstance(claims.get("exp"), int):
            expires = min(expires, datetime.fromtimestamp(claims["exp"], tz=UTC))
        return ReviewedToken(identity, namespace, service_account, pod_name, node_name, expires)

    def _token_review(self, token: str) -> dict[str, Any]:
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": [self._audience]},
        }
        try:
            review = call_json(self._authentication.create_token_review, body, what="POST tokenreviews",
                               timeout=self._timeout)
        except KubernetesApiError as exc:
            raise self._api_failure("the TokenReview", exc) from exc
        return review.get("status") or {}

    def _get_pod(self, namespace: str, name: str) -> dict[str, Any]:
        try:
            return call_json(self._core.read_namespaced_pod, name, namespace, what=f"GET pods {namespace}/{name}",
                             timeout=self._timeout)
        except KubernetesApiError as exc:
            if exc.status == 404:
                raise _rejected(f"the token is bound to pod {namespace}/{name}, which no longer exists", "pod-not-found",
                                namespace=namespace, pod=name) from exc
            raise self._api_failure(f"reading pod {namespace}/{name}", exc) from exc

    def _unauthenticated(self, status: Mapping[str, Any], claims: Mapping[str, Any], now: datetime) -> AttestationError:
        # The unverified claims only choose the words of the refusal; the API server has decided.
        server_error = status.get("error") or "no error given"
        expiry = claims.get("exp")
        audiences = claims.get("aud")
        audiences = [audiences] if isinstance(audiences, str) else audiences or []
        if isinstance(expiry, int) and datetime.fromtimestamp(expiry, tz=UTC) <= now:
            expired_at = datetime.fromtimestamp(expiry, tz=UTC).isoformat()
            return _rejected(f"it expired at {expired_at}; the kubelet rotates projected tokens, so read the file again "
                             f"(API server: {server_error})", "expired")
        if self._audience not in audiences:
            return _rejected(f"its audiences {audiences} do not include {self._audience!r}; project the token with "
                             f"audience {self._audience!r} (API server: {server_error})", "wrong-audience")
        return _rejected(f"the API server did not authenticate it: {server_error}", "unauthenticated")

    def _service_account(self, username: str) -> tuple[str, str]:
        parts = username.split(":")
        if not username.startswith(SERVICE_ACCOUNT_PREFIX) or len(parts) != 4 or not all(parts[2:]):
            raise _rejected(
                f"it authenticates {username!r}, which is not a service account; expected "
                "system:serviceaccount:<namespace>:<name>",
                "not-service-account",
            )
        return parts[2], parts[3]

    def _check_pod(
        self, pod: Mapping[str, Any], *, namespace: str, service_account: str, pod_uid: str, token_node: str | None
    ) -> str | None:
        metadata = pod.get("metadata") or {}
        spec = pod.get("spec") or {}
        name = metadata.get("name", "")
        fields = {"namespace": namespace, "pod": name}
        if metadata.get("uid") != pod_uid:
            raise _rejected(f"the token is bound to pod {namespace}/{name} with uid {pod_uid}, but that pod now has "
                            f"uid {metadata.get('uid')}; the pod was replaced", "pod-uid-mismatch", **fields)
        if metadata.get("deletionTimestamp"):
            raise _rejected(f"pod {namespace}/{name} is terminating (deletionTimestamp "
                            f"{metadata['deletionTimestamp']}); a terminating pod gets no new certificate",
                            "pod-terminating", **fields)
        pod_account = spec.get("serviceAccountName") or "default"
        if pod_account != service_account:
            raise _rejected(f"pod {namespace}/{name} runs as service account {pod_account!r}, not {service_account!r}",
                            "service-account-mismatch", **fields)
        pod_node = spec.get("nodeName") or None
        if token_node is not None and pod_node is not None and token_node != pod_node:
            raise _rejected(f"the token was issued on node {token_node!r} but pod {namespace}/{name} runs on "
                            f"{pod_node!r}", "node-mismatch", **fields)
        return pod_node or token_node

    def _check_claimed_node(self, reviewed: ReviewedToken, claimed_node: str | None) -> None:
        if claimed_node is None or claimed_node == reviewed.node_name:
            return
        raise _rejected(
            f"the caller claims node {claimed_node!r} but pod {reviewed.namespace}/{reviewed.pod_name} runs on "
            f"{reviewed.node_name!r}",
            "node-mismatch", namespace=reviewed.namespace, pod=reviewed.pod_name,
        )

    def _api_failure(self, action: str, exc: KubernetesApiError) -> AttestationError:
        if exc.status in (401, 403):
            return _rejected(f"the control plane may not perform {action} ({exc.message}); grant it "
                             "tokenreviews create and pods get", "api-forbidden")
        return _rejected(f"{action} failed, so the token cannot be checked now; retry later ({exc.message})",
                         "api-unavailable")


def _single_extra(extra: Mapping[str, Any], key: str) -> str | None:
    values = extra.get(key)
    if isinstance(values, list) and len(values) == 1 and isinstance(values[0], str) and values[0]:
        return values[0]
    return None
