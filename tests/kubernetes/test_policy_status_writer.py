"""The Accepted condition on AuthorizationPolicy and PeerAuthentication, written by the leader."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import kubernetes
import pytest

from controlplane.kube.policy_status import PolicyStatusWriter
from tests.kubernetes.conftest import declare_policy_crds
from tests.kubernetes.k8s_extras import FakeClock, api_server  # noqa: F401 - fixture

GROUP, VERSION = "security.idmesh.io", "v1"
NAMESPACE = "payments"
INVALID_METHOD = {"action": "ALLOW", "rules": [{"to": [{"operation": {"methods": ["get"]}}]}]}
VALID_RULES = {"action": "ALLOW", "rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]}


@pytest.fixture()
def clock() -> FakeClock:
    return FakeClock(datetime(2030, 1, 1, tzinfo=UTC))


@pytest.fixture()
def leader() -> dict[str, bool]:
    return {"leading": True}


@pytest.fixture()
def writer(client_configuration, emulator, clock, leader):
    declare_policy_crds(emulator, GROUP)
    api_client = kubernetes.client.ApiClient(client_configuration)
    try:
        yield PolicyStatusWriter(
            api_client, root_namespace="idmesh-system", is_leader=lambda: leader["leading"], clock=clock
        )
    finally:
        api_client.close()


async def create_policy(kube, plural: str, kind: str, name: str, spec: dict) -> None:
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": {"name": name}, "spec": spec}
    await kube(kube.custom.create_namespaced_custom_object, GROUP, VERSION, NAMESPACE, plural, body)


async def policies(kube) -> list[dict]:
    """Return the policies as a source stores them: listed, with apiVersion and kind set."""
    objects = []
    for plural, kind in (("authorizationpolicies", "AuthorizationPolicy"), ("peerauthentications", "PeerAuthentication")):
        response = await kube(kube.custom.list_namespaced_custom_object, GROUP, VERSION, NAMESPACE, plural,
                              _preload_content=False)
        for item in json.loads(response.data)["items"]:
            objects.append({**item, "apiVersion": f"{GROUP}/{VERSION}", "kind": kind})
    return objects


async def accepted_condition(kube, plural: str, name: str) -> dict | None:
    obj = await kube(kube.custom.get_namespaced_custom_object, GROUP, VERSION, NAMESPACE, plural, name)
    for condition in (obj.get("status") or {}).get("conditions", []):
        if condition["type"] == "Accepted":
            return condition
    return None


async def sync(writer, kube, **kwargs) -> int:
    return await asyncio.to_thread(writer.sync, await policies(kube), **kwargs)


async def test_invalid_policy_not_accepted(writer, kube, emulator):
    await create_policy(kube, "authorizationpolicies", "AuthorizationPolicy", "ledger", INVALID_METHOD)

    await sync(writer, kube)

    patches = [(request.name, request.subresource) for request in emulator if request.method == "PATCH"]
    assert patches == [("ledger", "status")]
    condition = await accepted_condition(kube, "authorizationpolicies", "ledger")
    assert condition == {
        "type": "Accepted",
        "status": "False",
        "reason": "InvalidSpec",
        "message": 'spec.rules[0].to[0].operation.methods[0]: "get" is not an HTTP method; use upper case',
        "lastTransitionTime": "2030-01-01T00:00:00Z",
    }


async def test_invalid_peer_authentication_not_accepted(writer, kube):
    await create_policy(kube, "peerauthentications", "PeerAuthentication", "strict", {"mtls": {"mode": "SOMETIMES"}})

    await sync(writer, kube)

    condition = await accepted_condition(kube, "peerauthentications", "strict")
    assert condition["status"] == "False"
    assert condition["reason"] == "InvalidSpec"
    assert condition["message"] == 'spec.mtls.mode: "SOMETIMES" is not an mTLS mode; use one of UNSET, DISABLE, PERMISSIVE, STRICT'


async def test_valid_policy_accepted(writer, kube):
    await create_policy(kube, "authorizationpolicies", "AuthorizationPolicy", "ledger", VALID_RULES)

    await sync(writer, kube)

    condition = await accepted_condition(kube, "authorizationpolicies", "ledger")
    assert condition["status"] == "True"
    assert condition["reason"] == "Accepted"


async def test_translation_error_not_accepted(writer, kube):
    await create_policy(kube, "authorizationpolicies", "AuthorizationPolicy", "ledger", VALID_RULES)
    problem = 'spec.rules[0].to[0].operation.paths[0]: "/api/[" is not a valid RE2 regular expression'

    await sync(writer, kube, translation_errors={("AuthorizationPolicy", NAMESPACE, "ledger"): problem})

    condition = await accepted_condition(kube, "authorizationpolicies", "ledger")
    assert condition["status"] == "False"
    assert condition["reason"] == "TranslationFailed"
    assert condition["message"] == problem


async def test_unchanged_condition_not_rewritten(writer, kube):
    await create_policy(kube, "authorizationpolicies", "AuthorizationPolicy", "ledger", INVALID_METHOD)

    first = await sync(writer, kube)
    second = await sync(writer, kube)

    assert first == 1
    assert second == 0
    assert writer.writes == 1


async def test_fixed_policy_flips_to_accepted(writer, kube, clock):
    await create_policy(kube, "authorizationpolicies", "AuthorizationPolicy", "ledger", INVALID_METHOD)
    await sync(writer, kube)
    await kube(kube.custom.patch_namespaced_custom_object, GROUP, VERSION, NAMESPACE, "authorizationpolicies", "ledger",
               {"spec": VALID_RULES})
    clock.now += timedelta(minutes=5)

    await sync(writer, kube)

    condition = await accepted_condition(kube, "authorizationpolicies", "ledger")
    assert condition["status"] == "True"
    assert condition["lastTransitionTime"] == "2030-01-01T00:05:00Z"


async def test_follower_writes_nothing(writer, kube, leader):
    leader["leading"] = False
    await create_policy(kube, "authorizationpolicies", "AuthorizationPolicy", "ledger", INVALID_METHOD)

    written = await sync(writer, kube)

    assert written == 0
    assert await accepted_condition(kube, "authorizationpolicies", "ledger") is None


async def test_stale_policy_not_given_old_verdict(writer, kube, emulator):
    await create_policy(kube, "authorizationpolicies", "AuthorizationPolicy", "ledger", INVALID_METHOD)
    read_before_edit = await policies(kube)
    await kube(kube.custom.patch_namespaced_custom_object, GROUP, VERSION, NAMESPACE, "authorizationpolicies", "ledger",
               {"spec": VALID_RULES})

    written = await asyncio.to_thread(writer.sync, read_before_edit)

    assert written == 0
    assert emulator.conflicts["authorizationpolicies"] == 1
    assert await accepted_condition(kube, "authorizationpolicies", "ledger") is None
