"""Responses and events that one input to an xDS stream produces."""

from __future__ import annotations

from dataclasses import dataclass, field

from google.protobuf.message import Message


@dataclass(frozen=True, slots=True)
class ResponseSent:
    type_url: str
    version: str
    nonce: str
    names: tuple[str, ...]
    removed: tuple[str, ...]
    size: int


@dataclass(frozen=True, slots=True)
class Acked:
    type_url: str
    version: str
    nonce: str
    # Seconds from the change being seen (or the request that subscribed) to this ACK.
    latency: float


@dataclass(frozen=True, slots=True)
class Nacked:
    type_url: str
    rejected_version: str
    kept_version: str
    nonce: str
    message: str


@dataclass(frozen=True, slots=True)
class StaleNonceIgnored:
    type_url: str
    nonce: str


Event = ResponseSent | Acked | Nacked | StaleNonceIgnored


@dataclass(slots=True)
class Outcome:
    """Responses to send in order, and events to report, after one input."""

    responses: list[Message] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)

    def extend(self, other: Outcome) -> Outcome:
        self.responses.extend(other.responses)
        self.events.extend(other.events)
        return self
