"""410 Gone during a watch: a quiet relist that loses no change and repeats no deletion."""

from __future__ import annotations

import pytest
import structlog

from tests.kubernetes.conftest import wait_until, within


def _pod(name):
    return {"metadata": {"name": name}, "spec": {"containers": [{"name": "app", "image": "app:1"}]}}


def _key(name):
    return ("v1/Pod", "payments", name)


@pytest.mark.parametrize("gone_as_http_status", [False, True], ids=["error-event", "http-status"])
async def test_gone_relists_and_reports_missed_changes(make_source, kube, emulator, change_log, gone_as_http_status):
    emulator.gone_as_http_status = gone_as_http_status
    for name in ("changed", "deleted", "deleted-before"):
        await kube(kube.core.create_namespaced_pod, "payments", _pod(name))
    source = await make_source()
    await within(source.ready.wait())
    await kube(kube.core.delete_namespaced_pod, "deleted-before", "payments")
    await wait_until(lambda: change_log.of(_key("deleted-before")) == ["ADDED", "DELETED"], what="the first deletion")
    await wait_until(lambda: emulator.is_watching("pods"), what="an open pod watch")

    # These changes never reach the open watch, as if its connection had silently broken.
    emulator.hold_watch_events = True
    await kube(kube.core.patch_namespaced_pod, "changed", "payments", {"metadata": {"labels": {"version": "v2"}}})
    await kube(kube.core.delete_namespaced_pod, "deleted", "payments")
    await kube(kube.core.create_namespaced_pod, "payments", _pod("added"))

    lists_before = emulator.list_counts["pods"]
    with structlog.testing.capture_logs() as logs:
        emulator.expire_watches()
        emulator.hold_watch_events = False
        await wait_until(
            lambda: change_log.of(_key("changed")) == ["ADDED", "MODIFIED"]
            and change_log.of(_key("deleted")) == ["ADDED", "DELETED"]
            and change_log.of(_key("added")) == ["ADDED"],
            what="the changes made while the watch was broken",
        )

    assert emulator.list_counts["pods"] == lists_before + 1
    if gone_as_http_status:
        # The stream ended without an event, so only the HTTP 410 of the next watch reported the expiry.
        assert emulator.refused_watches > 0
    assert change_log.of(_key("deleted-before")) == ["ADDED", "DELETED"]
    assert source.get(_key("changed"))["metadata"]["labels"] == {"version": "v2"}
    assert source.get(_key("deleted")) is None
    assert source.get(_key("added")) is not None
    expired = [entry for entry in logs if entry["event"] == "kubernetes.watch.expired"]
    assert expired, logs
    assert {entry["log_level"] for entry in expired} == {"debug"}
    assert [entry for entry in logs if entry["log_level"] in ("warning", "error", "critical")] == []


async def test_watch_resumes_after_relist(make_source, kube, emulator, change_log):
    await kube(kube.core.create_namespaced_pod, "payments", _pod("ledger"))
    source = await make_source()
    await within(source.ready.wait())
    await wait_until(lambda: emulator.is_watching("pods"), what="an open pod watch")
    listed_before = emulator.list_counts["pods"]

    emulator.expire_watches()
    await wait_until(
        lambda: emulator.list_counts["pods"] > listed_before,
        what="a pod relist",
    )
    await kube(kube.core.patch_namespaced_pod, "ledger", "payments", {"metadata": {"labels": {"version": "v3"}}})

    await wait_until(lambda: change_log.of(_key("ledger")) == ["ADDED", "MODIFIED"], what="the change after the relist")
    assert source.get(_key("ledger"))["metadata"]["labels"] == {"version": "v3"}
