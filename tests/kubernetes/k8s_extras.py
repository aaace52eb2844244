"""Emulator extensions for the control plane's Kubernetes-mode duties.

`MeshApiEmulator` adds to the conftest's `ApiEmulator`:

- the resources these duties use: Secrets, `coordination.k8s.io/v1` Leases and the create-only
  `authentication.k8s.io/v1` TokenReviews;
- optimistic concurrency: a PATCH whose body carries `metadata.resourceVersion` is refused with
  HTTP 409 Conflict when the stored object has another version, as a real API server does, so
  two writers that read the same version cannot both succeed;
- TokenReview of tokens signed by `TokenIssuer`: the emulator checks the signature, the
  validity period, the issuer and the audience, and returns `status.authenticated`,
  `status.user` (username, uid, groups, extra) and `status.audiences`, or `status.error`, as
  the real API does. NOTE: the real API server also checks that the bound pod and the service
  account still exist. This emulator leaves that out, so the tests exercise the attestor's own
  pod checks;
- `write_barriers`: hold the first N writes to a plural until all N have arrived, so a test can
  force two writers to race on the same resourceVersion.

Test modules replace the conftest's `api_server` fixture by importing the one defined here; the
conftest's `emulator`, `client_configuration` and `kube` fixtures then serve this emulator.
"""

from __future__ import annotations

import asyncio
import collections
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp.web
import attrs
import jwt
import kmock
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives.asymmetric import ec
from kmock._internal import enums, rendering
from kmock._internal.k8s import KubernetesError

from tests.kubernetes.conftest import ApiEmulator, ApiServer, Kube

API_SERVER_ISSUER = "https://kubernetes.default.svc.cluster.local"
BARRIER_TIMEOUT_SECONDS = 10.0

EXTRA_RESOURCES = {
    "v1/secrets": ("Secret", True),
    "coordination.k8s.io/v1/leases": ("Lease", True),
    "authentication.k8s.io/v1/tokenreviews": ("TokenReview", False),
}

_WRITES = {enums.action.CREATE, enums.action.UPDATE, enums.action.DELETE}


class TokenIssuer:
    """Signs ES256 tokens shaped like projected ServiceAccount tokens, as the API server's issuer does."""

    def __init__(self, issuer: str = API_SERVER_ISSUER) -> None:
        self.issuer = issuer
        self._key = ec.generate_private_key(ec.SECP256R1())

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._key.public_key()

    def mint(
        self,
        *,
        pod: dict[str, Any],
        service_account: str | None = None,
        audiences: tuple[str, ...] = ("idmesh",),
        node: str | None = None,
        issued_at: datetime | None = None,
        ttl: timedelta = timedelta(hours=1),
    ) -> str:
        """Return a token bound to `pod` (an object as the API returned it) for its service account."""
        metadata = pod["metadata"]
        namespace = metadata["namespace"]
        account = service_account or pod["spec"].get("serviceAccountName", "default")
        binding: dict[str, Any] = {
            "namespace": namespace,
            "serviceaccount": {"name": account, "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{namespace}/{account}"))},
            "pod": {"name": metadata["name"], "uid": metadata["uid"]},
        }
        node_name = node or pod["spec"].get("nodeName")
        if node_name:
            binding["node"] = {"name": node_name, "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, node_name))}
        return self._sign(f"system:serviceaccount:{namespace}:{account}", audiences, issued_at, ttl, binding)

    def mint_unbound(self, namespace: str, service_account: str, *, audiences: tuple[str, ...] = ("idmesh",)) -> str:
        """Return a service account token bound to no pod, like a token from a TokenRequest without a binding."""
        account = {"name": service_account, "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{namespace}/{service_account}"))}
        binding = {"namespace": namespace, "serviceaccount": account}
        subject = f"system:serviceaccount:{namespace}:{service_account}"
        return self._sign(subject, audiences, None, timedelta(hours=1), binding)

    def mint_user_token(self, username: str, *, audiences: tuple[str, ...] = ("idmesh",)) -> str:
        """Return a token for a user that is not a service account, as an OIDC issuer would sign it."""
        return self._sign(username, audiences, None, timedelta(hours=1), None)

    def _sign(
        self,
        subject: str,
        audiences: tuple[str, ...],
        issued_at: datetime | None,
        ttl: timedelta,
        binding: dict[str, Any] | None,
    ) -> str:
        issued = issued_at or datetime.now(tz=UTC)
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": subject,
            "aud": list(audiences),
            "iat": int(issued.timestamp()),
            "nbf": int(issued.timestamp()),
            "exp": int((issued + ttl).timestamp()),
            "jti": str(uuid.uuid4()),
        }
        if binding is not None:
            claims["kubernetes.io"] = binding
        return jwt.encode(claims, self._key, algorithm="ES256")

    def review(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Return the `status` of a TokenReview of `spec` (token, audiences)."""
        requested = list(spec.get("audiences") or [API_SERVER_ISSUER])
        try:
            claims = jwt.decode(
                spec.get("token", ""),
                self.public_key,
                algorithms=["ES256"],
                audience=requested,
                issuer=self.issuer,
                options={"require": ["exp", "iat", "nbf", "iss", "sub", "aud"]},
            )
        except jwt.InvalidTokenError as exc:
            return {"user": {}, "error": f"[invalid bearer token, {exc}]"}
        audiences = [audience for audience in requested if audience in claims["aud"]]
        return {"authenticated": True, "user": _user_info(claims), "audiences": audiences}


def _user_info(claims: dict[str, Any]) -> dict[str, Any]:
    binding = claims.get("kubernetes.io")
    if binding is None:
        return {"username": claims["sub"], "groups": ["system:authenticated"]}
    namespace = binding["namespace"]
    extra = {"authentication.kubernetes.io/credential-id": [f"JTI={claims['jti']}"]}
    if "pod" in binding:
        extra["authentication.kubernetes.io/pod-name"] = [binding["pod"]["name"]]
        extra["authentication.kubernetes.io/pod-uid"] = [binding["pod"]["uid"]]
    if "node" in binding:
        extra["authentication.kubernetes.io/node-name"] = [binding["node"]["name"]]
        extra["authentication.kubernetes.io/node-uid"] = [binding["node"]["uid"]]
    return {
        "username": claims["sub"],
        "uid": binding["serviceaccount"]["uid"],
        "groups": ["system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"],
        "extra": extra,
    }


@attrs.define(eq=False)
class WriteBarrier:
    """Holds writes until `parties` of them have arrived, then lets them all through in arrival order."""

    parties: int
    arrived: int = 0
    _all_arrived: asyncio.Event = attrs.field(factory=asyncio.Event)

    async def arrive(self) -> None:
        if self.arrived >= self.parties:
            return
        self.arrived += 1
        if self.arrived == self.parties:
            self._all_arrived.set()
        await asyncio.wait_for(self._all_arrived.wait(), BARRIER_TIMEOUT_SECONDS)


@attrs.define(kw_only=True)
class MeshApiEmulator(ApiEmulator):
    token_issuer: TokenIssuer = attrs.field(factory=TokenIssuer)
    # How many TokenReviews the emulator has served.
    token_reviews: int = 0
    # How many writes of each plural were refused with 409 because of a stale resourceVersion.
    conflicts: collections.Counter[str] = attrs.field(factory=collections.Counter)
    write_barriers: dict[str, WriteBarrier] = attrs.field(factory=dict)
    _precondition_lock: asyncio.Lock = attrs.field(factory=asyncio.Lock, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        for key, (kind, namespaced) in EXTRA_RESOURCES.items():
            self.resources[key] = kmock.ResourceInfo(kind=kind, namespaced=namespaced)

    async def _handle(self, request: rendering.Request) -> Any:
        resource = request.resource
        if resource is None or request.action not in _WRITES:
            return await super()._handle(request)
        if resource.plural == "tokenreviews":
            return self._review_token(request)
        barrier = self.write_barriers.get(resource.plural)
        if barrier is not None:
            await barrier.arrive()
        # The check and the write happen under one lock, so no other write slips in between.
        async with self._precondition_lock:
            self._check_resource_version(request)
            return await super()._handle(request)

    def _check_resource_version(self, request: rendering.Request) -> None:
        if request.action != enums.action.UPDATE or not isinstance(request.data, dict):
            return
        expected = (request.data.get("metadata") or {}).get("resourceVersion")
        key = (request.resource, request.namespace, request.name)
        if expected is None or key not in self.objects or self.objects[key].deleted:
            return
        stored = self.objects[key].raw.get("metadata", {}).get("resourceVersion")
        if stored == expected:
            return
        assert request.resource is not None
        self.conflicts[request.resource.plural] += 1
        group = request.resource.group
        qualified = f"{request.resource.plural}.{group}" if group else request.resource.plural
        raise KubernetesError(
            status=409,
            reason="Conflict",
            message=(
                f'Operation cannot be fulfilled on {qualified} "{request.name}": the object has been '
                "modified; please apply your changes to the latest version and try again"
            ),
            details={"name": request.name, "group": group, "kind": request.resource.plural},
        )

    def _review_token(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        self.token_reviews += 1
        body = request.data if isinstance(request.data, dict) else {}
        spec = body.get("spec") or {}
        review = {
            "kind": "TokenReview",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"creationTimestamp": None},
            "spec": spec,
            "status": self.token_issuer.review(spec),
        }
        return aiohttp.web.json_response(review, status=201)


@pytest_asyncio.fixture()
async def api_server() -> AsyncIterator[ApiServer]:
    """The conftest's API server, serving `MeshApiEmulator`."""
    async with MeshApiEmulator() as emulator:
        server = ApiServer(emulator)
        await server.start()
        try:
            yield server
        finally:
            await server.stop()


@pytest.fixture()
def token_issuer(emulator: MeshApiEmulator) -> TokenIssuer:
    return emulator.token_issuer


async def create_pod(
    kube: Kube,
    namespace: str,
    name: str,
    *,
    service_account: str = "default",
    node: str = "node-a",
) -> dict[str, Any]:
    """Create a running pod and return it as the API server stored it (with its uid)."""
    body = {
        "metadata": {"name": name},
        "spec": {
            "serviceAccountName": service_account,
            "nodeName": node,
            "containers": [{"name": "app", "image": "app:1"}],
        },
        "status": {"phase": "Running", "podIP": "10.0.0.9"},
    }
    response = await kube(kube.core.create_namespaced_pod, namespace, body, _preload_content=False)
    return json.loads(response.data)


class FakeClock:
    """A clock and a sleep that move only when the test calls `advance`."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2030, 1, 1, tzinfo=UTC)
        self._changed = asyncio.Condition()
        # How many coroutines are waiting in sleep() right now, and how many sleeps ever began.
        self.sleepers = 0
        self.sleeps_started = 0

    def __call__(self) -> datetime:
        return self.now

    async def sleep(self, seconds: float) -> None:
        deadline = self.now + timedelta(seconds=seconds)
        async with self._changed:
            self.sleepers += 1
            self.sleeps_started += 1
            try:
                await self._changed.wait_for(lambda: self.now >= deadline)
            finally:
                self.sleepers -= 1

    async def advance(self, seconds: float, *, rounds: int = 0) -> None:
        """Move the clock on, then wait until `rounds` more sleeps have begun (loops that woke and ran once)."""
        target = self.sleeps_started + rounds
        async with self._changed:
            self.now += timedelta(seconds=seconds)
            self._changed.notify_all()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + BARRIER_TIMEOUT_SECONDS
        while self.sleeps_started < target:
            if loop.time() > deadline:
                pytest.fail(f"timed out waiting for {rounds} loop round(s) after advancing the clock")
            await asyncio.sleep(0.01)
