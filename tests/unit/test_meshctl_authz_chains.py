"""Inbound chain selection for `meshctl authz check`, in local and kubernetes mode."""

from __future__ import annotations

import pytest
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from google.protobuf.json_format import MessageToDict

from controlplane.authz.check import Call, check_call
from controlplane.authz.errors import UnsupportedRbacError
from controlplane.authz.inbound import NoInboundChainError, chains_for_port, inbound_ports, parse_listeners, select_chain
from controlplane.identity.spiffe_id import SpiffeId
from controlplane.model.parse import parse_objects
from controlplane.model.types import Proxy
from controlplane.translate import translate
from controlplane.translate.resources import LISTENER

OBJECTS = [
    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "payments"}},
    {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "ledger", "namespace": "payments", "labels": {"app": "ledger"},
                     "annotations": {"idmesh.io/inject": "true"}},
        "spec": {"serviceAccountName": "api", "containers": [{"name": "ledger", "image": "x", "ports": [
            {"containerPort": 8080, "name": "http"}, {"containerPort": 9000, "name": "tcp-store"}]}]},
    },
    {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "ledger", "namespace": "payments"},
        "spec": {"selector": {"app": "ledger"}, "ports": [{"name": "http", "port": 8080}, {"name": "tcp-store", "port": 9000}]},
    },
    {
        "apiVersion": "security.idmesh.io/v1", "kind": "PeerAuthentication",
        "metadata": {"name": "store-strict", "namespace": "payments"},
        "spec": {"selector": {"matchLabels": {"app": "ledger"}}, "portLevelMtls": {"9000": {"mode": "STRICT"}}},
    },
    {
        "apiVersion": "security.idmesh.io/v1", "kind": "AuthorizationPolicy",
        "metadata": {"name": "allow-worker", "namespace": "payments"},
        "spec": {"selector": {"matchLabels": {"app": "ledger"}},
                 "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/payments/sa/worker"]}}]}]},
    },
]
WORKER = "spiffe://cluster.local/ns/payments/sa/worker"


def listeners_for(mode: str) -> list[listener_pb2.Listener]:
    """The ledger's listeners, through the same JSON round trip as the debug API."""
    state = parse_objects(OBJECTS)
    proxy = Proxy(
        node_id="sidecar~10.1.0.7~ledger.payments~payments.svc.cluster.local", namespace="payments", workload="ledger",
        service_account="api", ip="10.1.0.7", spiffe_id=SpiffeId.for_workload("cluster.local", "payments", "api"),
        labels={"app": "ledger"}, mode=mode,
    )
    resources = translate(state, proxy).resources
    documents = {LISTENER: {name: MessageToDict(message) for name, message in resources[LISTENER].items()}}
    return parse_listeners(documents)


@pytest.mark.parametrize("mode", ["local", "kubernetes"])
def test_inbound_ports_are_found_in_both_modes(mode):
    assert inbound_ports(listeners_for(mode)) == [8080, 9000]


def test_kubernetes_mode_selects_virtual_inbound_chain_by_port():
    chains = chains_for_port(listeners_for("kubernetes"), 8080)
    assert chains.listener == "virtualInbound"
    assert select_chain(chains, tls=True).name == "inbound|8080|mtls"
    assert select_chain(chains, tls=False).name == "inbound|8080|plaintext"


@pytest.mark.parametrize("mode", ["local", "kubernetes"])
def test_strict_port_has_no_chain_for_plaintext(mode):
    chains = chains_for_port(listeners_for(mode), 9000)
    assert select_chain(chains, tls=False) is None
    assert select_chain(chains, tls=True).name == "inbound|9000|mtls"


@pytest.mark.parametrize("mode", ["local", "kubernetes"])
def test_decisions_are_the_same_in_both_modes(mode):
    listeners = listeners_for(mode)
    base = {"source_ip": "10.1.0.9", "destination_ip": "10.1.0.7"}
    assert check_call(listeners, Call(port=8080, principal=WORKER, **base)).allowed
    assert not check_call(listeners, Call(port=8080, **base)).allowed
    assert check_call(listeners, Call(port=9000, principal=WORKER, **base)).stage == "network-rbac"
    assert check_call(listeners, Call(port=9000, **base)).stage == "transport"


def test_unknown_port_lists_the_inbound_ports():
    with pytest.raises(NoInboundChainError) as raised:
        chains_for_port(listeners_for("kubernetes"), 7000)
    assert str(raised.value) == "no inbound listener serves port 7000; inbound ports: 8080, 9000"


def test_chain_matching_on_server_names_is_not_supported():
    virtual = next(item for item in listeners_for("kubernetes") if item.name == "virtualInbound")
    chain = next(c for c in virtual.filter_chains if c.name == "inbound|8080|mtls")
    chain.filter_chain_match.server_names.append("ledger.example")
    with pytest.raises(UnsupportedRbacError, match="matches on server_names"):
        select_chain(chains_for_port([virtual], 8080), tls=True)


def test_listener_that_cannot_be_parsed_is_reported_by_name():
    document = {LISTENER: {"broken": {"filterChains": [{"filters": [{"name": "x", "typedConfig": {"@type": "type.googleapis.com/unknown.Type"}}]}]}}}
    with pytest.raises(UnsupportedRbacError, match="listener 'broken' cannot be read"):
        parse_listeners(document)


def test_chain_without_rbac_filters_allows_everything():
    chain = listener_components_pb2.FilterChain(name="bare")
    listener = listener_pb2.Listener(name="inbound_10.1.0.7_8080", filter_chains=[chain])
    listener.address.socket_address.port_value = 8080
    outcome = check_call([listener], Call(port=8080, source_ip="10.1.0.9", destination_ip="10.1.0.7"))
    assert outcome.allowed
    assert outcome.chain.protocol == "tcp"
