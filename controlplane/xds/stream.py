"""The xDS stream as a pure state machine: requests and snapshots in, responses and events out.

`SotwStream` speaks the state-of-the-world protocol (`StreamAggregatedResources`); `DeltaStream`
in `controlplane.xds.delta` speaks the incremental one (`DeltaAggregatedResources`). Both keep,
per type URL, an explicit `Phase` and a transition table keyed by (phase, kind of request). A
request that matches no row is a protocol error (`XdsProtocolError`) that ends the stream.

Rules from the xDS protocol (envoy/docs/root/api-docs/xds_protocol.rst) that shape the code:

- ACK echoes the latest nonce without `error_detail`; NACK echoes it with `error_detail` and the
  previous version. A request carrying an older nonce is stale. SotW ignores stale requests
  entirely; Delta still applies their subscription changes.
- After a NACK the client keeps its last accepted resources. The server records the NACK and does
  not send the rejected bytes again; the next response goes out only when the content changes.
- Make before break: a type is sent only when no type before it in `PUSH_ORDER` (SDS, CDS, EDS,
  LDS, RDS) still has unsent changes. Clusters and load assignments that left the snapshot stay
  served until the client has ACKed listeners and routes equal to the snapshot, so no route
  points at a cluster Envoy already dropped.
- Envoy keeps a changed EDS cluster warming until it receives a new ClusterLoadAssignment, even
  an identical one, so every CDS response is followed by EDS for each changed or new EDS cluster.
- At most one response per type is in flight; changes that arrive meanwhile go out after the
  ACK or NACK.

No clocks: every input carries `now` (monotonic seconds) and a snapshot carries `seen_at`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Callable

__all__ = [
    "Acked",
    "BaseStream",
    "Event",
    "Nacked",
    "Outcome",
    "ResponseSent",
    "SotwStream",
    "StaleNonceIgnored",
    "XdsProtocolError",
]

from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf.message import Message

from controlplane.errors import XdsError
from controlplane.translate.resources import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    PUSH_ORDER,
    ROUTE,
    SHORT_NAMES,
)
from controlplane.xds.events import (
    Acked,
    Event,
    Nacked,
    Outcome,
    ResponseSent,
    StaleNonceIgnored,
)
from controlplane.xds.snapshot import Resource, Snapshot
from controlplane.xds.versions import IdSource

# Types with a wildcard subscription and state-of-the-world deletion by omission.
WILDCARD_TYPES = frozenset({LISTENER, CLUSTER})
WILDCARD = "*"
# Types whose resources left the snapshot stay served until routing no longer needs them.
RETAINED_TYPES = (CLUSTER, ENDPOINT)


class XdsProtocolError(XdsError):
    """A request that breaks the xDS protocol; `type_url` and `node_id` identify the stream."""


class Phase(enum.Enum):
    UNREQUESTED = "unrequested"  # no request for this type on the stream yet
    IDLE = "idle"  # requested, no response awaiting ACK
    AWAITING_ACK = "awaiting-ack"  # a response is in flight


class RequestKind(enum.Enum):
    PLAIN = "plain"  # current nonce (or none expected), no error_detail
    ERROR = "error"  # current nonce with error_detail
    STALE = "stale"  # a nonce other than the latest one sent


class SyncStatus(str, enum.Enum):
    SYNCED = "SYNCED"  # the client ACKed everything it should have
    STALE = "STALE"  # a response is in flight or changes wait to be sent
    NACKED = "NACKED"  # the client rejected the latest response


@dataclass(frozen=True, slots=True)
class Nack:
    version: str
    nonce: str
    message: str


@dataclass(frozen=True, slots=True)
class Changes:
    """Resources to (re)send and names to report removed, for one type."""

    upserts: dict[str, Resource]
    removals: frozenset[str]


@dataclass(slots=True)
class TypeState:
    """Bookkeeping for one type URL on one stream."""

    type_url: str
    phase: Phase = Phase.UNREQUESTED
    wildcard: bool = False
    # Whether the client ever named resources; after that an empty list no longer means "*".
    explicit: bool = False
    names: set[str] = field(default_factory=set)
    # What the client was sent, by name: a Resource, or None after a Delta removal.
    sent: dict[str, Resource | None] = field(default_factory=dict)
    # Digests the client ACKed (or reported in Delta `initial_resource_versions`).
    acked: dict[str, str] = field(default_factory=dict)
    in_flight: dict[str, Resource | None] = field(default_factory=dict)
    in_flight_since: float = 0.0
    version_sent: str = ""
    nonce_sent: str = ""
    version_acked: str = ""
    nack: Nack | None = None
    # Names to send again even if unchanged: newly subscribed, or EDS after a cluster change.
    forced: set[str] = field(default_factory=set)
    # A new wildcard subscription gets a response even when it selects nothing.
    must_respond: bool = False
    dirty_since: float | None = None

    @property
    def short_name(self) -> str:
        return SHORT_NAMES.get(self.type_url, self.type_url)

    def covers(self, name: str) -> bool:
        return self.wildcard or name in self.names


class BaseStream:
    """State shared by both protocol variants; subclasses add the wire format and table."""

    # SotW replaces the whole LDS/CDS set on every response; Delta changes it name by name.
    is_state_of_the_world = True

    def __init__(self, *, ids: IdSource, snapshot: Snapshot | None = None) -> None:
        self._ids = ids
        self.snapshot = snapshot
        self.node_id = ""
        self.types = {type_url: TypeState(type_url) for type_url in PUSH_ORDER}
        self.retained: dict[str, dict[str, Resource]] = {t: {} for t in RETAINED_TYPES}

    # ----- inputs -------------------------------------------------------------------------

    def update(self, snapshot: Snapshot, now: float) -> Outcome:
        """Take a new snapshot and return the responses it makes due, in make-before-break order."""
        del now  # latency is measured from snapshot.seen_at
        self.snapshot = snapshot
        for type_url in RETAINED_TYPES:
            current = snapshot.of_type(type_url)
            self.retained[type_url] = {
                name: resource
                for name, resource in self.types[type_url].sent.items()
                if resource is not None and resource.payload is not None and name not in current
            }
        return self._flush(snapshot.seen_at)

    def _state_for(self, node_id: str, type_url: str) -> TypeState:
        if not self.node_id:
            if not node_id:
                raise XdsProtocolError(
                    "the first request on an xDS stream has no node id; set node.id",
                    type_url=type_url,
                    node_id="",
                )
            self.node_id = node_id
        elif node_id and node_id != self.node_id:
            raise XdsProtocolError(
                f"node id changed from {self.node_id!r} to {node_id!r} within one stream",
                type_url=type_url,
                node_id=self.node_id,
            )
        state = self.types.get(type_url)
        if state is None:
            served = ", ".join(PUSH_ORDER)
            raise XdsProtocolError(
                f"type URL {type_url!r} is not served; request one of {served}",
                type_url=type_url,
                node_id=self.node_id,
            )
        return state

    def _no_transition(self, state: TypeState, kind: enum.Enum) -> XdsProtocolError:
        return XdsProtocolError(
            f"{state.short_name} request of kind {kind.value} is not valid in phase "
            f"{state.phase.value}",
            type_url=state.type_url,
            node_id=self.node_id,
        )

    # ----- ACK / NACK ---------------------------------------------------------------------

    def _accept(self, state: TypeState, now: float) -> Acked:
        if state.type_url in WILDCARD_TYPES and self.is_state_of_the_world:
            state.acked = {}
        for name, resource in state.in_flight.items():
            if resource is None:
                state.acked.pop(name, None)
            else:
                state.acked[name] = resource.digest
        state.version_acked = state.version_sent
        state.nack = None
        state.in_flight = {}
        state.phase = Phase.IDLE
        return Acked(state.type_url, state.version_sent, state.nonce_sent, now - state.in_flight_since)

    def _reject(self, state: TypeState, message: str, kept_version: str) -> Nacked:
        state.nack = Nack(state.version_sent, state.nonce_sent, message)
        state.in_flight = {}
        state.phase = Phase.IDLE
        return Nacked(state.type_url, state.version_sent, kept_version, state.nonce_sent, message)

    # ----- what to send -------------------------------------------------------------------

    def desired(self, state: TypeState) -> dict[str, Resource]:
        """Return the resources the client should hold for this type under its subscription."""
        current = dict(self.snapshot.of_type(state.type_url)) if self.snapshot else {}
        for name, resource in self.retained.get(state.type_url, {}).items():
            current.setdefault(name, resource)
        if state.wildcard:
            return current
        return {name: current[name] for name in state.names if name in current}

    def changes(self, state: TypeState) -> Changes | None:
        raise NotImplementedError

    def respond(self, state: TypeState, changes: Changes, version: str, nonce: str) -> Message:
        raise NotImplementedError

    def _routing_settled(self) -> bool:
        """Check whether the client ACKed listeners and routes equal to the current snapshot."""
        for type_url in (LISTENER, ROUTE):
            state = self.types[type_url]
            if state.phase is Phase.UNREQUESTED:
                continue
            if state.phase is Phase.AWAITING_ACK:
                return False
            desired = self.desired(state)
            if any(state.acked.get(name) != r.digest for name, r in desired.items()):
                return False
            if type_url == LISTENER and set(state.acked) - set(desired):
                return False
        return True

    def _flush(self, origin: float) -> Outcome:
        """Send every type that has changes and is not held back by an earlier type."""
        if self.snapshot is None:
            return Outcome()
        if any(self.retained.values()) and self._routing_settled():
            self.retained = {t: {} for t in RETAINED_TYPES}
        outcome = Outcome()
        blocked = False
        for type_url in PUSH_ORDER:
            state = self.types[type_url]
            if state.phase is Phase.UNREQUESTED:
                continue
            pending = self.changes(state)
            if pending is None:
                continue
            if state.dirty_since is None:
                state.dirty_since = origin
            if blocked or state.phase is Phase.AWAITING_ACK:
                blocked = True
                continue
            outcome.extend(self._send(state, pending))
        return outcome

    def _send(self, state: TypeState, changes: Changes) -> Outcome:
        version, nonce = self._ids.next_version(), self._ids.next_nonce()
        response = self.respond(state, changes, version, nonce)
        state.version_sent, state.nonce_sent = version, nonce
        state.phase = Phase.AWAITING_ACK
        state.in_flight_since = state.dirty_since if state.dirty_since is not None else 0.0
        state.dirty_since = None
        state.must_respond = False
        state.forced -= set(changes.upserts) | changes.removals
        if state.type_url == CLUSTER:
            self._force_endpoints(changes.upserts.values())
        sent_names = tuple(sorted(name for name, r in state.in_flight.items() if r is not None))
        removed = tuple(sorted(name for name, r in state.in_flight.items() if r is None))
        size = sum(r.size for r in state.in_flight.values() if r is not None)
        event = ResponseSent(state.type_url, version, nonce, sent_names, removed, size)
        return Outcome(responses=[response], events=[event])

    def _force_endpoints(self, clusters) -> None:
        endpoints = self.types[ENDPOINT]
        for cluster in clusters:
            if cluster.eds_name and endpoints.covers(cluster.eds_name):
                endpoints.forced.add(cluster.eds_name)

    # ----- status -------------------------------------------------------------------------

    def sync_status(self) -> dict[str, dict[str, str]]:
        """Return, per requested type (short name), versions sent and ACKed and the status."""
        result: dict[str, dict[str, str]] = {}
        for type_url in PUSH_ORDER:
            state = self.types[type_url]
            if state.phase is Phase.UNREQUESTED:
                continue
            entry = {"version_sent": state.version_sent, "version_acked": state.version_acked}
            if state.nack is not None and state.nack.nonce == state.nonce_sent:
                entry["status"] = SyncStatus.NACKED.value
                entry["error"] = state.nack.message
            elif state.phase is Phase.AWAITING_ACK or self.changes(state) is not None:
                entry["status"] = SyncStatus.STALE.value
            else:
                entry["status"] = SyncStatus.SYNCED.value
            result[state.short_name] = entry
        return result


Handler = Callable[["SotwStream", TypeState, discovery_pb2.DiscoveryRequest, float], Outcome]


class SotwStream(BaseStream):
    """State-of-the-world ADS: every response for a type carries its whole subscribed set."""

    def receive(self, request: discovery_pb2.DiscoveryRequest, now: float) -> Outcome:
        """Apply one DiscoveryRequest and return the responses and events it causes."""
        state = self._state_for(request.node.id, request.type_url)
        expected_nonce = state.nonce_sent
        if request.response_nonce != expected_nonce:
            kind = RequestKind.STALE
        elif request.HasField("error_detail"):
            kind = RequestKind.ERROR
        else:
            kind = RequestKind.PLAIN
        handler = SOTW_TRANSITIONS.get((state.phase, kind))
        if handler is None:
            raise self._no_transition(state, kind)
        return handler(self, state, request, now)

    def _ignore(self, state, request, now) -> Outcome:
        return Outcome(events=[StaleNonceIgnored(state.type_url, request.response_nonce)])

    def _subscribe(self, state, request, now) -> Outcome:
        self._set_names(state, list(request.resource_names))
        if state.phase is Phase.UNREQUESTED:
            state.phase = Phase.IDLE
        return self._flush(now)

    def _ack(self, state, request, now) -> Outcome:
        event = self._accept(state, now)
        return Outcome(events=[event]).extend(self._subscribe(state, request, now))

    def _nack(self, state, request, now) -> Outcome:
        event = self._reject(state, request.error_detail.message, request.version_info)
        return Outcome(events=[event]).extend(self._subscribe(state, request, now))

    def _set_names(self, state: TypeState, names: list[str]) -> None:
        """Apply a SotW resource_names list, including the legacy empty-list wildcard."""
        if not names and not state.explicit:
            if state.type_url in WILDCARD_TYPES and not state.wildcard:
                state.wildcard = True
                state.must_respond = True
            return
        state.explicit = True
        wildcard = WILDCARD in names
        if wildcard and not state.wildcard:
            state.must_respond = True
        state.wildcard = wildcard
        new_names = set(names) - {WILDCARD}
        for name in state.names - new_names:
            state.forced.discard(name)
            if state.type_url not in WILDCARD_TYPES:
                # LDS and CDS drop unsubscribed resources by leaving them out of the next
                # response; other types have no removal, the client just stops caring.
                state.sent.pop(name, None)
                state.acked.pop(name, None)
        state.forced |= new_names - state.names
        state.names = new_names

    def changes(self, state: TypeState) -> Changes | None:
        desired = self.desired(state)
        upserts = {
            name: resource
            for name, resource in desired.items()
            if name in state.forced or digest_of_sent(state.sent.get(name)) != resource.digest
        }
        removals: frozenset[str] = frozenset()
        if state.type_url in WILDCARD_TYPES:
            removals = frozenset(set(state.sent) - set(desired))
        if upserts or removals or state.must_respond:
            return Changes(upserts, removals)
        return None

    def respond(self, state: TypeState, changes: Changes, version: str, nonce: str) -> Message:
        # SotW sends the whole subscribed set, changed or not.
        desired = self.desired(state)
        response = discovery_pb2.DiscoveryResponse(
            version_info=version, type_url=state.type_url, nonce=nonce
        )
        for name in sorted(desired):
            response.resources.add(type_url=state.type_url, value=desired[name].payload)
        if state.type_url in WILDCARD_TYPES:
            state.sent = dict(desired)
        else:
            state.sent.update(desired)
        state.in_flight = dict(desired)
        return response


def digest_of_sent(resource: Resource | None) -> str | None:
    """Return the digest of a resource last sent, or None for one removed or never sent."""
    return resource.digest if resource is not None else None


SOTW_TRANSITIONS: dict[tuple[Phase, RequestKind], Handler] = {
    (Phase.UNREQUESTED, RequestKind.PLAIN): SotwStream._subscribe,
    (Phase.UNREQUESTED, RequestKind.STALE): SotwStream._ignore,
    (Phase.IDLE, RequestKind.PLAIN): SotwStream._subscribe,
    # The same nonce again with error_detail: that NACK is already recorded.
    (Phase.IDLE, RequestKind.ERROR): SotwStream._subscribe,
    (Phase.IDLE, RequestKind.STALE): SotwStream._ignore,
    (Phase.AWAITING_ACK, RequestKind.PLAIN): SotwStream._ack,
    (Phase.AWAITING_ACK, RequestKind.ERROR): SotwStream._nack,
    (Phase.AWAITING_ACK, RequestKind.STALE): SotwStream._ignore,
}
