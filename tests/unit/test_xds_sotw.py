"""State-of-the-world ADS stream rules, asserted on exact DiscoveryResponses."""

from __future__ import annotations

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2

from controlplane.translate.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET
from controlplane.xds.snapshot import build_snapshot
from controlplane.xds.stream import (
    Acked,
    Nacked,
    ResponseSent,
    SotwStream,
    StaleNonceIgnored,
    XdsProtocolError,
)
from controlplane.xds.testing import (
    direct_response_route,
    eds_cluster,
    http_listener,
    load_assignment,
    proxy_config,
)
from controlplane.xds.versions import IdSource, make_epoch

NODE = "sidecar~10.0.0.7~ledger-1.payments"
DECODERS = {
    CLUSTER: cluster_pb2.Cluster,
    ENDPOINT: endpoint_pb2.ClusterLoadAssignment,
    ROUTE: route_pb2.RouteConfiguration,
}


def snap(seen_at: float = 0.0, *, timeout_ms: int = 1000, endpoint_port: int = 8080,
         route_cluster: str = "c1", body: str = "v1", clusters=("c1",)):
    return build_snapshot(
        proxy_config(
            clusters={name: eds_cluster(name, connect_timeout_ms=timeout_ms) for name in clusters},
            endpoints={name: load_assignment(name, ("10.0.0.9", endpoint_port)) for name in clusters},
            listeners={"inbound": http_listener("inbound", port=15006, route_name="r1")},
            routes={"r1": direct_response_route("r1", body, cluster=route_cluster)},
        ).resources,
        seen_at=seen_at,
    )


def request(type_url, names=(), *, nonce="", version="", error=None, node=NODE):
    message = discovery_pb2.DiscoveryRequest(
        type_url=type_url, resource_names=list(names), response_nonce=nonce, version_info=version
    )
    message.node.id = node
    if error is not None:
        message.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
    return message


def ack(response, names=()):
    return request(response.type_url, names, nonce=response.nonce, version=response.version_info)


def names_in(response) -> list[str]:
    decoder = DECODERS.get(response.type_url)
    if decoder is None:
        return [str(len(any_.value)) for any_ in response.resources]
    decoded = [decoder.FromString(any_.value) for any_ in response.resources]
    return [getattr(m, "cluster_name", "") or m.name for m in decoded]


def synced_stream(snapshot=None) -> tuple[SotwStream, list]:
    """A stream where the client subscribed to CDS, EDS c1, LDS, RDS r1 and ACKed everything."""
    stream = SotwStream(ids=IdSource("e1"), snapshot=snapshot or snap())
    sent = []
    for type_url, names in ((CLUSTER, ()), (ENDPOINT, ("c1",)), (LISTENER, ()), (ROUTE, ("r1",))):
        (response,) = stream.receive(request(type_url, names), now=1.0).responses
        sent.append(response)
        stream.receive(ack(response, names), now=1.0)
    return stream, sent


def test_initial_cds_request_gets_every_cluster():
    stream = SotwStream(ids=IdSource("e1"), snapshot=snap(clusters=("c1", "c2")))

    outcome = stream.receive(request(CLUSTER), now=1.0)

    (response,) = outcome.responses
    assert response.type_url == CLUSTER
    assert response.version_info == "e1.v1"
    assert response.nonce == "e1.n2"
    assert names_in(response) == ["c1", "c2"]
    assert outcome.events == [
        ResponseSent(CLUSTER, "e1.v1", "e1.n2", ("c1", "c2"), (), sum(len(a.value) for a in response.resources))
    ]


def test_ack_records_version_and_sends_nothing():
    stream = SotwStream(ids=IdSource("e1"), snapshot=snap(seen_at=0.5))
    (response,) = stream.receive(request(CLUSTER), now=1.0).responses

    outcome = stream.receive(ack(response), now=1.25)

    assert outcome.responses == []
    assert outcome.events == [Acked(CLUSTER, "e1.v1", "e1.n2", 0.25)]
    assert stream.sync_status() == {
        "CDS": {"version_sent": "e1.v1", "version_acked": "e1.v1", "status": "SYNCED"}
    }


def test_ack_latency_counts_from_change_seen():
    stream, _ = synced_stream()
    (response,) = stream.update(snap(seen_at=10.0, route_cluster="c1", body="v2"), now=10.2).responses

    outcome = stream.receive(ack(response, ("r1",)), now=10.5)

    assert outcome.events == [Acked(ROUTE, response.version_info, response.nonce, 0.5)]


def test_nack_keeps_last_good_version_and_does_not_resend():
    stream, sent = synced_stream()
    good_version = sent[0].version_info
    (bad,) = stream.update(snap(timeout_ms=0), now=2.0).responses[:1]
    assert bad.type_url == CLUSTER

    outcome = stream.receive(
        request(CLUSTER, nonce=bad.nonce, version=good_version, error="invalid connect_timeout"), now=2.1
    )

    assert outcome.responses == []
    assert outcome.events == [
        Nacked(CLUSTER, bad.version_info, good_version, bad.nonce, "invalid connect_timeout")
    ]
    status = stream.sync_status()["CDS"]
    assert status == {
        "version_sent": bad.version_info,
        "version_acked": good_version,
        "status": "NACKED",
        "error": "invalid connect_timeout",
    }


def test_nacked_content_is_not_sent_again_until_it_changes():
    stream, sent = synced_stream()
    bad = stream.update(snap(timeout_ms=0), now=2.0).responses[0]
    stream.receive(request(CLUSTER, nonce=bad.nonce, version=sent[0].version_info, error="bad"), now=2.1)

    same_again = stream.update(snap(seen_at=3.0, timeout_ms=0), now=3.0)
    repeated_nack = stream.receive(
        request(CLUSTER, nonce=bad.nonce, version=sent[0].version_info, error="bad"), now=3.1
    )
    fixed = stream.update(snap(seen_at=4.0, timeout_ms=250), now=4.0)

    assert same_again.responses == []
    assert repeated_nack.responses == []
    assert repeated_nack.events == []
    assert [r.type_url for r in fixed.responses] == [CLUSTER]
    assert fixed.responses[0].version_info not in (bad.version_info, sent[0].version_info)


def test_stale_nonce_is_ignored():
    stream, sent = synced_stream()
    endpoints_response = stream.update(snap(endpoint_port=9090), now=2.0).responses[0]
    assert endpoints_response.type_url == ENDPOINT

    # An old nonce carrying a new subscription: ignored, including the subscription change.
    outcome = stream.receive(request(ENDPOINT, ("c1", "c2"), nonce=sent[1].nonce), now=2.1)

    assert outcome.responses == []
    assert outcome.events == [StaleNonceIgnored(ENDPOINT, sent[1].nonce)]
    assert stream.types[ENDPOINT].names == {"c1"}
    assert stream.sync_status()["EDS"]["status"] == "STALE"


def test_push_order_is_cds_eds_lds_rds():
    stream, _ = synced_stream()
    changed = snap(timeout_ms=2000, endpoint_port=9090, body="v2")
    changed = build_snapshot(
        {
            **{t: {n: _decode(t, r.payload) for n, r in changed.of_type(t).items()} for t in (CLUSTER, ENDPOINT, ROUTE)},
            LISTENER: {"inbound": http_listener("inbound", port=15007, route_name="r1")},
        },
        seen_at=2.0,
    )

    outcome = stream.update(changed, now=2.0)

    assert [r.type_url for r in outcome.responses] == [CLUSTER, ENDPOINT, LISTENER, ROUTE]


def _decode(type_url, payload):
    return {**DECODERS, LISTENER: listener_pb2.Listener}[type_url].FromString(payload)


def test_later_types_wait_while_an_earlier_type_has_unsent_changes():
    stream, _ = synced_stream()
    first = stream.update(snap(timeout_ms=2000), now=2.0).responses
    assert [r.type_url for r in first] == [CLUSTER, ENDPOINT]

    # CDS is in flight; a new cluster and a route to it must not overtake the cluster.
    held = stream.update(
        snap(seen_at=3.0, timeout_ms=2000, clusters=("c1", "c2"), route_cluster="c2"), now=3.0
    )
    assert held.responses == []

    released = stream.receive(ack(first[0]), now=3.1)
    assert [r.type_url for r in released.responses] == [CLUSTER, ROUTE]
    assert names_in(released.responses[0]) == ["c1", "c2"]


def test_eds_is_resent_after_a_cluster_change_with_same_endpoints():
    stream, sent = synced_stream()

    outcome = stream.update(snap(timeout_ms=2000), now=2.0)

    cds, eds = outcome.responses
    assert (cds.type_url, names_in(cds)) == (CLUSTER, ["c1"])
    assert (eds.type_url, names_in(eds)) == (ENDPOINT, ["c1"])
    assert eds.resources[0].value == sent[1].resources[0].value


def test_stale_cluster_is_removed_after_routes_stop_using_it():
    stream = SotwStream(ids=IdSource("e1"), snapshot=snap(clusters=("c1", "c2"), route_cluster="c2"))
    for type_url, names in ((CLUSTER, ()), (ENDPOINT, ("c1", "c2")), (LISTENER, ()), (ROUTE, ("r1",))):
        (response,) = stream.receive(request(type_url, names), now=1.0).responses
        stream.receive(ack(response, names), now=1.0)

    # c2 leaves the snapshot and the route moves to c1: the route goes first, c2 stays.
    outcome = stream.update(snap(seen_at=2.0, clusters=("c1",), route_cluster="c1"), now=2.0)
    (routes,) = outcome.responses
    assert routes.type_url == ROUTE
    assert [n for n in stream.desired(stream.types[CLUSTER])] == ["c1", "c2"]

    after_ack = stream.receive(ack(routes, ("r1",)), now=2.1)

    (clusters,) = after_ack.responses
    assert clusters.type_url == CLUSTER
    assert names_in(clusters) == ["c1"]


def test_stale_cluster_is_removed_at_once_when_routes_do_not_change():
    stream = SotwStream(ids=IdSource("e1"), snapshot=snap(clusters=("c1", "c2")))
    for type_url, names in ((CLUSTER, ()), (LISTENER, ()), (ROUTE, ("r1",))):
        (response,) = stream.receive(request(type_url, names), now=1.0).responses
        stream.receive(ack(response, names), now=1.0)

    outcome = stream.update(snap(seen_at=2.0, clusters=("c1",)), now=2.0)

    (clusters,) = outcome.responses
    assert names_in(clusters) == ["c1"]


def test_stale_cluster_stays_while_the_new_routes_are_nacked():
    stream = SotwStream(ids=IdSource("e1"), snapshot=snap(clusters=("c1", "c2"), route_cluster="c2"))
    for type_url, names in ((CLUSTER, ()), (LISTENER, ()), (ROUTE, ("r1",))):
        (response,) = stream.receive(request(type_url, names), now=1.0).responses
        stream.receive(ack(response, names), now=1.0)
    (routes,) = stream.update(snap(seen_at=2.0, clusters=("c1",), route_cluster="c1"), now=2.0).responses

    outcome = stream.receive(request(ROUTE, ("r1",), nonce=routes.nonce, error="rejected"), now=2.1)

    assert outcome.responses == []
    assert sorted(stream.desired(stream.types[CLUSTER])) == ["c1", "c2"]


def test_wildcard_request_is_answered_even_when_empty():
    stream = SotwStream(ids=IdSource("e1"), snapshot=build_snapshot({}, seen_at=0.0))

    (response,) = stream.receive(request(LISTENER), now=1.0).responses

    assert response.type_url == LISTENER
    assert list(response.resources) == []


def test_named_request_for_missing_resource_gets_no_response():
    stream = SotwStream(ids=IdSource("e1"), snapshot=snap())

    outcome = stream.receive(request(ROUTE, ("no-such-route",)), now=1.0)

    assert outcome.responses == []


def test_new_subscription_resends_already_sent_resources():
    stream, sent = synced_stream(snap(clusters=("c1", "c2")))
    eds_ack = sent[1]

    outcome = stream.receive(request(ENDPOINT, ("c1", "c2"), nonce=eds_ack.nonce, version=eds_ack.version_info), now=2.0)

    (response,) = outcome.responses
    assert names_in(response) == ["c1", "c2"]


def test_empty_names_after_explicit_unsubscribe_all():
    stream = SotwStream(ids=IdSource("e1"), snapshot=snap())
    (first,) = stream.receive(request(CLUSTER), now=1.0).responses
    assert stream.types[CLUSTER].wildcard

    (named,) = stream.receive(request(CLUSTER, ("*", "c1"), nonce=first.nonce, version=first.version_info), now=1.0).responses
    stream.receive(ack(named, ("*", "c1")), now=1.0)
    assert stream.types[CLUSTER].wildcard

    stream.receive(request(CLUSTER, ("c1",), nonce=named.nonce, version=named.version_info), now=1.0)
    assert not stream.types[CLUSTER].wildcard
    assert stream.types[CLUSTER].names == {"c1"}

    (emptied,) = stream.receive(request(CLUSTER, (), nonce=named.nonce, version=named.version_info), now=1.0).responses
    assert not stream.types[CLUSTER].wildcard
    assert list(emptied.resources) == []


def test_no_response_until_a_snapshot_exists():
    stream = SotwStream(ids=IdSource("e1"), snapshot=None)
    waiting = stream.receive(request(CLUSTER), now=1.0)

    arrived = stream.update(snap(seen_at=2.0), now=2.0)

    assert waiting.responses == []
    assert [names_in(r) for r in arrived.responses] == [["c1"]]


def test_versions_and_nonces_differ_across_two_server_instances():
    def run(ids: IdSource) -> set[str]:
        stream = SotwStream(ids=ids, snapshot=snap())
        strings = set()
        for type_url, names in ((CLUSTER, ()), (ENDPOINT, ("c1",)), (LISTENER, ()), (ROUTE, ("r1",))):
            (response,) = stream.receive(request(type_url, names), now=1.0).responses
            strings |= {response.version_info, response.nonce}
            stream.receive(ack(response, names), now=1.0)
        return strings

    # Same start second, as after a fast restart: the random part still separates them.
    first = run(IdSource(make_epoch(1_700_000_000.0, 0x1234)))
    second = run(IdSource(make_epoch(1_700_000_000.0, 0x9ABC)))
    restarted_later = run(IdSource(make_epoch(1_700_000_001.0, 0x1234)))

    assert len(first) == 8
    assert first.isdisjoint(second)
    assert first.isdisjoint(restarted_later)


def test_first_request_without_node_id_is_a_protocol_error():
    stream = SotwStream(ids=IdSource("e1"), snapshot=snap())

    with pytest.raises(XdsProtocolError, match="no node id"):
        stream.receive(request(CLUSTER, node=""), now=1.0)


def test_node_id_change_is_a_protocol_error():
    stream = SotwStream(ids=IdSource("e1"), snapshot=snap())
    stream.receive(request(CLUSTER), now=1.0)

    with pytest.raises(XdsProtocolError, match="node id changed"):
        stream.receive(request(LISTENER, node="someone-else"), now=1.0)


def test_unknown_type_url_is_a_protocol_error():
    stream = SotwStream(ids=IdSource("e1"), snapshot=snap())

    with pytest.raises(XdsProtocolError, match="is not served"):
        stream.receive(request("type.googleapis.com/envoy.config.route.v3.VirtualHost"), now=1.0)


def test_nack_before_any_response_is_a_protocol_error():
    stream = SotwStream(ids=IdSource("e1"), snapshot=snap())

    with pytest.raises(XdsProtocolError, match="kind error is not valid in phase unrequested"):
        stream.receive(request(SECRET, ("ROOTCA",), error="nothing was sent"), now=1.0)
