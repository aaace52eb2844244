"""Serialized, content-addressed xDS resources: what one proxy group is served.

A `Snapshot` is built once per proxy group from the translator's `ProxyConfig` and shared by
every stream of that group. Each resource is serialized once; its digest (SHA-256 of the
serialized bytes) is how streams decide whether the client already holds it, and it is also the
per-resource version sent in Delta xDS.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

from envoy.config.cluster.v3 import cluster_pb2
from google.protobuf.message import Message

from controlplane.translate.resources import CLUSTER, PUSH_ORDER

SERVED_TYPES = frozenset(PUSH_ORDER)
DIGEST_HEX_CHARS = 32


def digest_of(payload: bytes) -> str:
    """Return the hex SHA-256 prefix that identifies `payload` (128 bits, enough to never collide)."""
    return hashlib.sha256(payload).hexdigest()[:DIGEST_HEX_CHARS]


@dataclass(frozen=True, slots=True)
class Resource:
    """One named resource of one type, serialized.

    `payload` is None only for resources a Delta client reported in `initial_resource_versions`:
    the server knows their version but not their bytes.
    """

    type_url: str
    name: str
    digest: str
    payload: bytes | None
    # For an EDS cluster, the ClusterLoadAssignment name it subscribes to; else "".
    eds_name: str = ""

    @property
    def size(self) -> int:
        return len(self.payload) if self.payload is not None else 0


def serialize_resource(type_url: str, name: str, message: Message) -> Resource:
    """Serialize `message` deterministically, so equal messages give equal digests."""
    payload = message.SerializeToString(deterministic=True)
    eds_name = ""
    if type_url == CLUSTER and isinstance(message, cluster_pb2.Cluster):
        if message.type == cluster_pb2.Cluster.EDS:
            eds_name = message.eds_cluster_config.service_name or message.name
    return Resource(type_url=type_url, name=name, digest=digest_of(payload), payload=payload, eds_name=eds_name)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Every resource one proxy group is served, by type URL and name.

    `seen_at` is the monotonic time at which the control plane first saw the change that led to
    this snapshot; push latency is measured from it.
    """

    resources: Mapping[str, Mapping[str, Resource]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    seen_at: float = 0.0

    def of_type(self, type_url: str) -> Mapping[str, Resource]:
        return self.resources.get(type_url, MappingProxyType({}))

    def digests(self) -> dict[str, dict[str, str]]:
        """Return `{type_url: {name: digest}}`, for comparing two snapshots."""
        return {
            type_url: {name: resource.digest for name, resource in by_name.items()}
            for type_url, by_name in self.resources.items()
        }

    def same_content(self, other: Snapshot | None) -> bool:
        return other is not None and self.digests() == other.digests()


def build_snapshot(
    resources: Mapping[str, Mapping[str, Message]], *, seen_at: float
) -> Snapshot:
    """Serialize translator output into a `Snapshot`; types outside `PUSH_ORDER` are left out."""
    built: dict[str, Mapping[str, Resource]] = {}
    for type_url, by_name in resources.items():
        if type_url not in SERVED_TYPES:
            continue
        built[type_url] = MappingProxyType(
            {name: serialize_resource(type_url, name, message) for name, message in by_name.items()}
        )
    return Snapshot(resources=MappingProxyType(built), seen_at=seen_at)
