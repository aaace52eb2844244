"""The informers survive the API server going away and pick up where they left off."""

from __future__ import annotations

import collections

import structlog

from tests.kubernetes.conftest import wait_until, within


def _pod(name):
    return {"metadata": {"name": name}, "spec": {"containers": [{"name": "app", "image": "app:1"}]}}


def _key(name):
    return ("v1/Pod", "payments", name)


def _events(logs, name):
    return [entry for entry in logs if entry["event"] == name]


async def test_changes_after_api_server_restart_are_seen(make_source, kube, api_server, emulator, change_log):
    await kube(kube.core.create_namespaced_pod, "payments", _pod("before"))
    source = await make_source()
    await within(source.ready.wait())
    await wait_until(lambda: emulator.is_watching("pods"), what="an open pod watch")
    port = api_server.port

    with structlog.testing.capture_logs() as logs:
        await api_server.stop()
        await wait_until(lambda: _events(logs, "kubernetes.api.unreachable"), what="the unreachable warning")
        await api_server.start()
        assert api_server.port == port
        await kube(kube.core.create_namespaced_pod, "payments", _pod("after"))
        await kube(kube.core.patch_namespaced_pod, "before", "payments", {"metadata": {"labels": {"version": "v2"}}})
        await wait_until(
            lambda: change_log.of(_key("after")) == ["ADDED"] and change_log.of(_key("before")) == ["ADDED", "MODIFIED"],
            what="the changes made after the restart",
        )
        await wait_until(lambda: _events(logs, "kubernetes.api.reachable"), what="the reachable message")

    assert source.ready.is_set()
    assert source.get(_key("before"))["metadata"]["labels"] == {"version": "v2"}
    warnings_per_collection = collections.Counter(entry["resource"] for entry in _events(logs, "kubernetes.api.unreachable"))
    assert set(warnings_per_collection.values()) == {1}
    assert {entry["log_level"] for entry in _events(logs, "kubernetes.watch.retrying")} == {"debug"}


async def test_source_waits_for_api_server_to_appear(make_source, kube, api_server):
    await kube(kube.core.create_namespaced_pod, "payments", _pod("ledger"))
    await api_server.stop()

    with structlog.testing.capture_logs() as logs:
        source = await make_source()
        await wait_until(lambda: _events(logs, "kubernetes.api.unreachable"), what="the unreachable warning")
        assert not source.ready.is_set()
        await api_server.start()
        await within(source.ready.wait())

    assert source.get(_key("ledger")) is not None
