"""Incremental (Delta) ADS stream rules, asserted on exact DeltaDiscoveryResponses."""

from __future__ import annotations

import pytest
from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2

from controlplane.translate.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE
from controlplane.xds.delta import DeltaStream
from controlplane.xds.snapshot import build_snapshot
from controlplane.xds.stream import Acked, Nacked, StaleNonceIgnored, XdsProtocolError
from controlplane.xds.testing import (
    direct_response_route,
    eds_cluster,
    http_listener,
    load_assignment,
    proxy_config,
)
from controlplane.xds.versions import IdSource

NODE = "sidecar~10.0.0.7~ledger-1.payments"


def snap(seen_at: float = 0.0, *, timeout_ms: int = 1000, endpoint_port: int = 8080,
         route_cluster: str = "c1", clusters=("c1",)):
    return build_snapshot(
        proxy_config(
            clusters={name: eds_cluster(name, connect_timeout_ms=timeout_ms) for name in clusters},
            endpoints={name: load_assignment(name, ("10.0.0.9", endpoint_port)) for name in clusters},
            listeners={"inbound": http_listener("inbound", port=15006, route_name="r1")},
            routes={"r1": direct_response_route("r1", "v1", cluster=route_cluster)},
        ).resources,
        seen_at=seen_at,
    )


def request(type_url, subscribe=(), unsubscribe=(), *, nonce="", error=None, initial=None, node=NODE):
    message = discovery_pb2.DeltaDiscoveryRequest(
        type_url=type_url,
        resource_names_subscribe=list(subscribe),
        resource_names_unsubscribe=list(unsubscribe),
        response_nonce=nonce,
        initial_resource_versions=initial or {},
    )
    message.node.id = node
    if error is not None:
        message.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
    return message


def ack(response):
    return request(response.type_url, nonce=response.nonce)


def sent(response) -> dict[str, str]:
    """Resource name -> version in a delta response."""
    return {r.name: r.version for r in response.resources}


def digest(snapshot, type_url, name) -> str:
    return snapshot.of_type(type_url)[name].digest


def synced_stream(snapshot=None):
    snapshot = snapshot or snap()
    stream = DeltaStream(ids=IdSource("e1"), snapshot=snapshot)
    for type_url, names in ((CLUSTER, ()), (ENDPOINT, ("c1",)), (LISTENER, ()), (ROUTE, ("r1",))):
        (response,) = stream.receive(request(type_url, names), now=1.0).responses
        stream.receive(ack(response), now=1.0)
    return stream


def test_wildcard_sends_versioned_clusters():
    snapshot = snap(clusters=("c1", "c2"))
    stream = DeltaStream(ids=IdSource("e1"), snapshot=snapshot)

    (response,) = stream.receive(request(CLUSTER), now=1.0).responses

    assert response.type_url == CLUSTER
    assert response.system_version_info == "e1.v1"
    assert response.nonce == "e1.n2"
    assert sent(response) == {
        "c1": digest(snapshot, CLUSTER, "c1"),
        "c2": digest(snapshot, CLUSTER, "c2"),
    }
    assert list(response.removed_resources) == []
    assert stream.types[CLUSTER].wildcard


def test_initial_resource_versions_skip_what_the_client_holds():
    snapshot = snap(clusters=("c1", "c3"))
    stream = DeltaStream(ids=IdSource("e1"), snapshot=snapshot)
    held = {"c1": digest(snapshot, CLUSTER, "c1"), "c2": "from-the-previous-server"}

    (response,) = stream.receive(request(CLUSTER, initial=held), now=1.0).responses

    assert sent(response) == {"c3": digest(snapshot, CLUSTER, "c3")}
    assert list(response.removed_resources) == ["c2"]


def test_ack_records_versions_and_sends_nothing():
    stream = DeltaStream(ids=IdSource("e1"), snapshot=snap(seen_at=0.5))
    (response,) = stream.receive(request(CLUSTER), now=1.0).responses

    outcome = stream.receive(ack(response), now=1.5)

    assert outcome.responses == []
    assert outcome.events == [Acked(CLUSTER, "e1.v1", "e1.n2", 0.5)]
    assert stream.types[CLUSTER].acked == {"c1": digest(snap(), CLUSTER, "c1")}
    assert stream.sync_status()["CDS"]["status"] == "SYNCED"


def test_nack_keeps_acked_versions_and_does_not_resend():
    stream = synced_stream()
    acked_before = dict(stream.types[CLUSTER].acked)
    bad = stream.update(snap(seen_at=2.0, timeout_ms=0), now=2.0).responses[0]

    nacked = stream.receive(request(CLUSTER, nonce=bad.nonce, error="connect_timeout must be positive"), now=2.1)
    same_again = stream.update(snap(seen_at=3.0, timeout_ms=0), now=3.0)

    assert nacked.responses == []
    assert nacked.events == [
        Nacked(CLUSTER, bad.system_version_info, "e1.v1", bad.nonce, "connect_timeout must be positive")
    ]
    assert stream.types[CLUSTER].acked == acked_before
    assert same_again.responses == []
    assert stream.sync_status()["CDS"]["status"] == "NACKED"
    assert stream.sync_status()["CDS"]["error"] == "connect_timeout must be positive"


def test_stale_nonce_acks_nothing_but_subscription_still_applies():
    snapshot = snap(clusters=("c1", "c2"))
    stream = DeltaStream(ids=IdSource("e1"), snapshot=snapshot)
    (first,) = stream.receive(request(ENDPOINT, ("c1",)), now=1.0).responses
    stream.receive(ack(first), now=1.0)
    (in_flight,) = stream.update(snap(seen_at=2.0, clusters=("c1", "c2"), endpoint_port=9090), now=2.0).responses

    stale = stream.receive(request(ENDPOINT, ("c2",), nonce=first.nonce), now=2.1)
    acked = stream.receive(ack(in_flight), now=2.2)

    assert stale.responses == []
    assert stale.events == [StaleNonceIgnored(ENDPOINT, first.nonce)]
    assert stream.types[ENDPOINT].names == {"c1", "c2"}
    (response,) = acked.responses
    assert list(sent(response)) == ["c2"]


def test_unsubscribe_sends_nothing_and_resubscribe_resends():
    stream = synced_stream()

    dropped = stream.receive(request(ENDPOINT, unsubscribe=("c1",)), now=2.0)
    again = stream.receive(request(ENDPOINT, ("c1",)), now=2.1)

    assert dropped.responses == []
    assert stream.types[ENDPOINT].names == {"c1"}
    (response,) = again.responses
    assert list(sent(response)) == ["c1"]


def test_subscribing_to_a_missing_resource_reports_it_removed():
    stream = DeltaStream(ids=IdSource("e1"), snapshot=snap())

    (response,) = stream.receive(request(ROUTE, ("no-such-route",)), now=1.0).responses

    assert list(response.resources) == []
    assert list(response.removed_resources) == ["no-such-route"]


def test_unsubscribing_a_name_also_under_wildcard_resends_it():
    stream = DeltaStream(ids=IdSource("e1"), snapshot=snap(clusters=("c1", "c2")))
    (first,) = stream.receive(request(CLUSTER, ("*", "c1")), now=1.0).responses
    stream.receive(ack(first), now=1.0)

    (response,) = stream.receive(request(CLUSTER, unsubscribe=("c1", "gone")), now=2.0).responses

    assert list(sent(response)) == ["c1"]
    assert list(response.removed_resources) == ["gone"]


def test_removed_cluster_goes_last_after_routes_are_acked():
    stream = synced_stream(snap(clusters=("c1", "c2"), route_cluster="c2"))
    (endpoints_c2,) = stream.receive(request(ENDPOINT, ("c2",)), now=1.0).responses
    stream.receive(ack(endpoints_c2), now=1.0)

    (routes,) = stream.update(snap(seen_at=2.0, clusters=("c1",), route_cluster="c1"), now=2.0).responses
    after_ack = stream.receive(ack(routes), now=2.1)

    assert routes.type_url == ROUTE
    clusters, endpoints = after_ack.responses
    assert (clusters.type_url, list(clusters.resources), list(clusters.removed_resources)) == (CLUSTER, [], ["c2"])
    assert (endpoints.type_url, list(endpoints.removed_resources)) == (ENDPOINT, ["c2"])


def test_cluster_change_resends_same_assignment():
    stream = synced_stream()
    snapshot = snap(seen_at=2.0, timeout_ms=2000)

    clusters, endpoints = stream.update(snapshot, now=2.0).responses

    assert (clusters.type_url, list(sent(clusters))) == (CLUSTER, ["c1"])
    assert (endpoints.type_url, sent(endpoints)) == (ENDPOINT, {"c1": digest(snapshot, ENDPOINT, "c1")})
    assert digest(snapshot, ENDPOINT, "c1") == digest(snap(), ENDPOINT, "c1")


def test_late_initial_versions_rejected():
    stream = synced_stream()

    with pytest.raises(XdsProtocolError, match="initial_resource_versions after the first"):
        stream.receive(request(ENDPOINT, ("c2",), initial={"c1": "x"}), now=2.0)
