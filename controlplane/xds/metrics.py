"""Prometheus metrics of the xDS server."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

# Push latency runs from a change being seen (debounce included) to the ACK.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class XdsMetrics:
    """The xDS collectors, registered in `registry` (a private one in tests)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.connected = Gauge(
            "idmesh_xds_connected_proxies", "ADS streams currently open", registry=registry
        )
        self.pushes = Counter(
            "idmesh_xds_pushes", "xDS responses sent, by type", ["type"], registry=registry
        )
        self.push_latency = Histogram(
            "idmesh_xds_push_latency_seconds",
            "Seconds from a configuration change being seen to the proxy's ACK, by type",
            ["type"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.nacks = Counter(
            "idmesh_xds_nacks", "xDS responses rejected by proxies, by type", ["type"], registry=registry
        )
        self.resource_bytes = Counter(
            "idmesh_xds_resource_bytes",
            "Serialized resource bytes sent in xDS responses, by type",
            ["type"],
            registry=registry,
        )
        self.rejected_streams = Counter(
            "idmesh_xds_rejected_streams",
            "ADS streams refused before serving, by gRPC status code",
            ["code"],
            registry=registry,
        )
