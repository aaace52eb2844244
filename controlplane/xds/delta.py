"""Incremental (Delta) ADS as a pure state machine; the shared rules are in `stream`.

Differences from state of the world, per the xDS protocol:

- A response carries only changed resources, each with its own version (here the digest of its
  bytes), and names the client must drop in `removed_resources`.
- The first request for a type may list `initial_resource_versions`: what the client kept from an
  earlier stream. Resources at those versions are not sent again.
- Subscriptions change by `resource_names_subscribe` / `resource_names_unsubscribe`. A first
  request with neither subscribes LDS and CDS to the wildcard `*`. Subscribing to a name always
  sends it (or reports it removed if it does not exist), even if the client should have it.
- Subscription changes apply even when the request carries a stale nonce; the nonce only pairs an
  ACK or NACK with its response.
"""

from __future__ import annotations

import enum
from typing import Callable

from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf.message import Message

from controlplane.xds.snapshot import Resource
from controlplane.xds.stream import (
    WILDCARD,
    WILDCARD_TYPES,
    BaseStream,
    Changes,
    Outcome,
    Phase,
    StaleNonceIgnored,
    TypeState,
    XdsProtocolError,
    digest_of_sent,
)


class DeltaRequestKind(enum.Enum):
    SPONTANEOUS = "spontaneous"  # no nonce: a subscription change
    ACK = "ack"  # the nonce of the response in flight, no error_detail
    NACK = "nack"  # the nonce of the response in flight, with error_detail
    STALE = "stale"  # any other nonce


Handler = Callable[["DeltaStream", TypeState, discovery_pb2.DeltaDiscoveryRequest, float], Outcome]


class DeltaStream(BaseStream):
    """Incremental ADS: responses carry changed resources and removed names only."""

    is_state_of_the_world = False

    def receive(self, request: discovery_pb2.DeltaDiscoveryRequest, now: float) -> Outcome:
        """Apply one DeltaDiscoveryRequest and return the responses and events it causes."""
        state = self._state_for(request.node.id, request.type_url)
        nonce = request.response_nonce
        if not nonce:
            kind = DeltaRequestKind.SPONTANEOUS
        elif state.phase is Phase.AWAITING_ACK and nonce == state.nonce_sent:
            kind = DeltaRequestKind.NACK if request.HasField("error_detail") else DeltaRequestKind.ACK
        else:
            kind = DeltaRequestKind.STALE
        if request.initial_resource_versions and state.phase is not Phase.UNREQUESTED:
            raise XdsProtocolError(
                f"{state.short_name} request sets initial_resource_versions after the first "
                "request for this type on the stream; send them only in the first one",
                type_url=state.type_url,
                node_id=self.node_id,
            )
        handler = DELTA_TRANSITIONS.get((state.phase, kind))
        if handler is None:
            raise self._no_transition(state, kind)
        return handler(self, state, request, now)

    def _first(self, state, request, now) -> Outcome:
        for name, version in request.initial_resource_versions.items():
            state.sent[name] = Resource(state.type_url, name, version, None)
            state.acked[name] = version
        subscribe = list(request.resource_names_subscribe)
        if not subscribe and not request.resource_names_unsubscribe:
            if state.type_url in WILDCARD_TYPES:
                state.wildcard = True
                state.must_respond = True
        state.phase = Phase.IDLE
        return self._subscribe(state, request, now)

    def _subscribe(self, state, request, now) -> Outcome:
        outcome = Outcome()
        if request.response_nonce and request.response_nonce != state.nonce_sent:
            outcome.events.append(StaleNonceIgnored(state.type_url, request.response_nonce))
        self._apply_subscription(
            state, list(request.resource_names_subscribe), list(request.resource_names_unsubscribe)
        )
        return outcome.extend(self._flush(now))

    def _ack(self, state, request, now) -> Outcome:
        event = self._accept(state, now)
        return Outcome(events=[event]).extend(self._subscribe(state, request, now))

    def _nack(self, state, request, now) -> Outcome:
        event = self._reject(state, request.error_detail.message, state.version_acked)
        return Outcome(events=[event]).extend(self._subscribe(state, request, now))

    def _apply_subscription(self, state: TypeState, subscribe: list[str], unsubscribe: list[str]) -> None:
        if subscribe or unsubscribe:
            state.explicit = True
        for name in subscribe:
            if name == WILDCARD:
                state.wildcard = True
                state.must_respond = True
            else:
                state.names.add(name)
                # Subscribing always sends the resource, even one the client should hold.
                state.forced.add(name)
        for name in unsubscribe:
            if name == WILDCARD:
                state.wildcard = False
                continue
            state.names.discard(name)
            state.forced.discard(name)
            if state.wildcard:
                # Still covered by "*": the client cannot tell, so send it or report it removed.
                state.forced.add(name)
            else:
                state.sent.pop(name, None)
                state.acked.pop(name, None)
        if not state.wildcard:
            # Without "*", names the client only held through the wildcard are no longer served.
            for name in [n for n in state.sent if n not in state.names]:
                state.sent.pop(name)
                state.acked.pop(name, None)

    def changes(self, state: TypeState) -> Changes | None:
        desired = self.desired(state)
        upserts = {
            name: resource
            for name, resource in desired.items()
            if name in state.forced or digest_of_sent(state.sent.get(name)) != resource.digest
        }
        candidates = set(state.sent) | state.forced
        removals = frozenset(
            name
            for name in candidates
            if name not in desired
            and state.covers(name)
            and (state.sent.get(name) is not None or name in state.forced)
        )
        if upserts or removals or state.must_respond:
            return Changes(upserts, removals)
        return None

    def respond(self, state: TypeState, changes: Changes, version: str, nonce: str) -> Message:
        response = discovery_pb2.DeltaDiscoveryResponse(
            system_version_info=version, type_url=state.type_url, nonce=nonce
        )
        for name in sorted(changes.upserts):
            resource = changes.upserts[name]
            entry = response.resources.add(name=name, version=resource.digest)
            entry.resource.type_url = state.type_url
            entry.resource.value = resource.payload
        response.removed_resources.extend(sorted(changes.removals))
        state.in_flight = {**changes.upserts, **{name: None for name in changes.removals}}
        state.sent.update(state.in_flight)
        return response


DELTA_TRANSITIONS: dict[tuple[Phase, DeltaRequestKind], Handler] = {
    (Phase.UNREQUESTED, DeltaRequestKind.SPONTANEOUS): DeltaStream._first,
    # A client that reconnects may echo a nonce from its previous stream.
    (Phase.UNREQUESTED, DeltaRequestKind.STALE): DeltaStream._first,
    (Phase.IDLE, DeltaRequestKind.SPONTANEOUS): DeltaStream._subscribe,
    (Phase.IDLE, DeltaRequestKind.STALE): DeltaStream._subscribe,
    (Phase.AWAITING_ACK, DeltaRequestKind.ACK): DeltaStream._ack,
    (Phase.AWAITING_ACK, DeltaRequestKind.NACK): DeltaStream._nack,
    (Phase.AWAITING_ACK, DeltaRequestKind.SPONTANEOUS): DeltaStream._subscribe,
    (Phase.AWAITING_ACK, DeltaRequestKind.STALE): DeltaStream._subscribe,
}
