"""How an informer treats each watch event type: unknown, BOOKMARK, ERROR, and stale DELETED."""

from __future__ import annotations

import structlog

from tests.kubernetes.conftest import wait_until, within


def _pod(name):
    return {"metadata": {"name": name}, "spec": {"containers": [{"name": "app", "image": "app:1"}]}}


def _key(name):
    return ("v1/Pod", "payments", name)


async def _watching_source(make_source, kube, emulator):
    await kube(kube.core.create_namespaced_pod, "payments", _pod("ledger"))
    source = await make_source()
    await within(source.ready.wait())
    await wait_until(lambda: emulator.is_watching("pods"), what="an open pod watch")
    return source


def _pod_watch_versions(emulator):
    return [
        request.params.get("resourceVersion")
        for request in emulator
        if request.action == emulator.action.WATCH and request.resource.plural == "pods"
    ]


async def test_unknown_event_type_is_warned_and_skipped(make_source, kube, emulator, change_log):
    source = await _watching_source(make_source, kube, emulator)

    with structlog.testing.capture_logs() as logs:
        assert emulator.send_to_watches("pods", {"type": "RENAMED", "object": _pod("ledger")}) == 1
        await kube(kube.core.create_namespaced_pod, "payments", _pod("after"))
        await wait_until(lambda: change_log.of(_key("after")) == ["ADDED"], what="the next change")

    unknown = [entry for entry in logs if entry["event"] == "kubernetes.watch.event_unknown"]
    assert [(entry["type"], entry["log_level"]) for entry in unknown] == [("RENAMED", "warning")]
    assert change_log.of(_key("ledger")) == ["ADDED"]
    assert source.get(_key("ledger")) is not None


async def test_bookmark_moves_the_watch_position(make_source, kube, emulator):
    await _watching_source(make_source, kube, emulator)
    # Changes to other collections move the server's resourceVersion past the pod watch.
    await kube(kube.core.create_namespace, {"metadata": {"name": "payments"}})
    await kube(kube.core.create_namespace, {"metadata": {"name": "shop"}})
    bookmark_version = str(emulator.revision)
    watches_before = len(_pod_watch_versions(emulator))

    emulator.send_to_watches("pods", {"type": "BOOKMARK", "object": {"kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": bookmark_version}}})
    emulator.drop_watches()
    await wait_until(lambda: len(_pod_watch_versions(emulator)) > watches_before, what="a new pod watch")

    assert _pod_watch_versions(emulator)[watches_before] == bookmark_version


async def test_deletion_of_unknown_object_is_not_reported(make_source, kube, emulator, change_log):
    await _watching_source(make_source, kube, emulator)

    emulator.send_to_watches("pods", {"type": "DELETED", "object": {"metadata": {"name": "never-seen", "namespace": "payments", "resourceVersion": "1"}}})
    await kube(kube.core.delete_namespaced_pod, "ledger", "payments")
    await wait_until(lambda: change_log.of(_key("ledger")) == ["ADDED", "DELETED"], what="the real deletion")

    assert change_log.of(_key("never-seen")) == []


async def test_error_event_other_than_gone_leads_to_relist(make_source, kube, emulator, change_log):
    source = await _watching_source(make_source, kube, emulator)
    lists_before = emulator.list_counts["pods"]
    error = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "InternalError", "message": "etcd leader changed", "code": 500}

    with structlog.testing.capture_logs() as logs:
        emulator.send_to_watches("pods", {"type": "ERROR", "object": error})
        await wait_until(lambda: emulator.list_counts["pods"] > lists_before, what="a relist")
        await kube(kube.core.create_namespaced_pod, "payments", _pod("after"))
        await wait_until(lambda: change_log.of(_key("after")) == ["ADDED"], what="the next change")

    retrying = [entry for entry in logs if entry["event"] == "kubernetes.watch.retrying"]
    assert "etcd leader changed" in retrying[0]["error"]
    assert change_log.of(_key("ledger")) == ["ADDED"]
    assert source.get(_key("ledger")) is not None
