"""stop() ends every informer thread, even one blocked reading an open watch."""

from __future__ import annotations

import dataclasses
import threading

import structlog

from controlplane.sources.kubernetes import KubernetesSource
from tests.kubernetes.conftest import FAST_SETTINGS, ChangeLog, wait_until, within


def _informer_threads():
    return [thread for thread in threading.enumerate() if thread.name.startswith("informer ") and thread.is_alive()]


async def test_stop_ends_threads_with_open_watches(client_configuration, kube, emulator):
    # The server would keep these watches open for a minute, so stop() must cut them short.
    settings = dataclasses.replace(FAST_SETTINGS, watch_timeout_seconds=60)
    changes = ChangeLog()
    source = KubernetesSource(client_configuration, settings=settings, on_change=changes)
    await source.start()
    await within(source.ready.wait())
    await wait_until(lambda: emulator.is_watching("pods") and emulator.is_watching("namespaces"), what="open watches")

    await within(source.stop())

    assert _informer_threads() == []
    await kube(kube.core.create_namespace, {"metadata": {"name": "late"}})
    assert changes.of(("v1/Namespace", "", "late")) == []


async def test_stop_while_api_server_is_down(make_source, api_server):
    await api_server.stop()
    with structlog.testing.capture_logs() as logs:
        source = await make_source()
        await wait_until(lambda: any(entry["event"] == "kubernetes.watch.retrying" for entry in logs), what="a failed request")

    await within(source.stop())

    assert _informer_threads() == []
    assert not source.ready.is_set()
