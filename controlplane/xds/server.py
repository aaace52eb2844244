"""The grpc.aio servicer for `envoy.service.discovery.v3.AggregatedDiscoveryService`.

A thin adapter. It authenticates the stream, builds the `Proxy` and registers a watch on the
snapshot cache. It then feeds requests and snapshots to the pure stream state machine, writes the
responses it returns, and turns its events into logs and metrics.

Authentication: the peer identity comes from the client certificate that TLS verified (the
`peer_identity` callable). No client SVID: UNAUTHENTICATED. Node metadata NAMESPACE or
SERVICE_ACCOUNT different from the certificate: PERMISSION_DENIED, with a message naming the
field. A protocol violation ends the stream with INVALID_ARGUMENT.
"""

from __future__ import annotations

import asyncio
import datetime
import secrets
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc

from controlplane.identity.spiffe_id import SpiffeId
from controlplane.log import get_logger
from controlplane.model.types import Proxy
from controlplane.translate.resources import SHORT_NAMES
from controlplane.xds.cache import SnapshotCache
from controlplane.xds.delta import DeltaStream
from controlplane.xds.metrics import XdsMetrics
from controlplane.xds.node import IdentityMismatch, InvalidNodeMetadata, proxy_from_node
from controlplane.xds.peer import peer_spiffe_id
from controlplane.xds.snapshot import Snapshot
from controlplane.xds.stream import (
    Acked,
    BaseStream,
    Nacked,
    Outcome,
    ResponseSent,
    SotwStream,
    StaleNonceIgnored,
    XdsProtocolError,
)
from controlplane.xds.versions import IdSource, make_epoch

log = get_logger("xds.server")

PeerIdentity = Callable[[Any], SpiffeId | None]
_END = object()


@dataclass(eq=False)
class Connection:
    """One open ADS stream, as the admin API shows it."""

    proxy: Proxy
    protocol: str
    connected_at: float
    stream: BaseStream

    def status(self) -> dict[str, Any]:
        """Return node id, identity, connection time and per-type sync state as JSON-able values."""
        since = datetime.datetime.fromtimestamp(self.connected_at, tz=datetime.timezone.utc)
        return {
            "node_id": self.proxy.node_id,
            "identity": str(self.proxy.spiffe_id),
            "namespace": self.proxy.namespace,
            "workload": self.proxy.workload,
            "protocol": self.protocol,
            "connected_since": since.isoformat(),
            "types": self.stream.sync_status(),
        }


class AggregatedDiscoveryServer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    """Serves SotW and Delta ADS from a `SnapshotCache` to authenticated sidecars."""

    def __init__(
        self,
        cache: SnapshotCache,
        *,
        peer_identity: PeerIdentity = peer_spiffe_id,
        ids: IdSource | None = None,
        metrics: XdsMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        first_request_timeout: float = 30.0,
    ) -> None:
        self._cache = cache
        self._peer_identity = peer_identity
        self._ids = ids or IdSource(make_epoch(wall_clock(), secrets.randbits(32)))
        self._metrics = metrics or XdsMetrics()
        self._clock = clock
        self._wall_clock = wall_clock
        self._first_request_timeout = first_request_timeout
        self._connections: set[Connection] = set()

    def add_to(self, server: grpc.aio.Server) -> None:
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(self, server)

    def connections(self) -> tuple[Connection, ...]:
        """Return the open streams, sorted by node id, for the admin API to inspect."""
        return tuple(sorted(self._connections, key=lambda c: c.proxy.node_id))

    def sync_status(self) -> list[dict[str, Any]]:
        """Return the sync state of every connected proxy, sorted by node id."""
        return sorted((c.status() for c in self._connections), key=lambda s: s["node_id"])

    async def StreamAggregatedResources(self, request_iterator, context) -> None:  # noqa: N802
        await self._serve(SotwStream, "sotw", request_iterator, context)

    async def DeltaAggregatedResources(self, request_iterator, context) -> None:  # noqa: N802
        await self._serve(DeltaStream, "delta", request_iterator, context)

    # ----- one stream ---------------------------------------------------------------------

    async def _reject(self, context, code: grpc.StatusCode, message: str, **fields: Any) -> None:
        self._metrics.rejected_streams.labels(code=code.name).inc()
        log.warning("xds.stream.rejected", code=code.name, reason=message, **fields)
        await context.abort(code, message)

    async def _authenticate(self, first, context) -> Proxy:
        identity = self._peer_identity(context)
        if identity is None:
            await self._reject(
                context,
                grpc.StatusCode.UNAUTHENTICATED,
                "no verified client X.509-SVID on this connection; connect with the workload's "
                "certificate",
                node_id=first.node.id,
            )
        try:
            return proxy_from_node(first.node, identity)
        except IdentityMismatch as exc:
            await self._reject(context, grpc.StatusCode.PERMISSION_DENIED, str(exc),
                               node_id=first.node.id, identity=str(identity))
        except InvalidNodeMetadata as exc:
            await self._reject(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc),
                               node_id=first.node.id, identity=str(identity))
        raise AssertionError("context.abort returned")  # abort always raises

    async def _serve(self, stream_class: type[BaseStream], protocol: str, requests, context) -> None:
        iterator: AsyncIterator = requests.__aiter__()
        try:
            first = await asyncio.wait_for(anext(iterator), self._first_request_timeout)
        except StopAsyncIteration:
            return
        except TimeoutError:
            await self._reject(context, grpc.StatusCode.DEADLINE_EXCEEDED,
                               f"no discovery request within {self._first_request_timeout} s")
        proxy = await self._authenticate(first, context)

        inbox: asyncio.Queue = asyncio.Queue()
        watch = self._cache.watch(proxy, inbox.put_nowait)
        stream = stream_class(ids=self._ids, snapshot=watch.snapshot)
        connection = Connection(proxy, protocol, self._wall_clock(), stream)
        self._connections.add(connection)
        self._metrics.connected.inc()
        log.info("xds.stream.started", node_id=proxy.node_id, identity=str(proxy.spiffe_id),
                 protocol=protocol)
        reader = asyncio.get_running_loop().create_task(self._read(iterator, inbox, proxy.node_id))
        try:
            await self._emit(connection, stream.receive(first, self._clock()), context)
            while (item := await inbox.get()) is not _END:
                now = self._clock()
                outcome = stream.update(item, now) if isinstance(item, Snapshot) else stream.receive(item, now)
                await self._emit(connection, outcome, context)
        except XdsProtocolError as exc:
            log.warning("xds.stream.protocol_error", node_id=proxy.node_id, error=str(exc),
                        type_url=exc.fields().get("type_url", ""))
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        finally:
            reader.cancel()
            watch.cancel()
            self._connections.discard(connection)
            self._metrics.connected.dec()
            log.info("xds.stream.closed", node_id=proxy.node_id, protocol=protocol)

    async def _read(self, iterator: AsyncIterator, inbox: asyncio.Queue, node_id: str) -> None:
        try:
            async for request in iterator:
                inbox.put_nowait(request)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the peer went away; the stream just ends
            log.debug("xds.stream.read_failed", node_id=node_id, error=repr(exc))
        inbox.put_nowait(_END)

    async def _emit(self, connection: Connection, outcome: Outcome, context) -> None:
        for event in outcome.events:
            self._record(connection, event)
        for response in outcome.responses:
            await context.write(response)

    def _record(self, connection: Connection, event) -> None:
        node_id = connection.proxy.node_id
        kind = SHORT_NAMES.get(event.type_url, event.type_url)
        if isinstance(event, ResponseSent):
            self._metrics.pushes.labels(type=kind).inc()
            self._metrics.resource_bytes.labels(type=kind).inc(event.size)
            log.debug("xds.push.sent", node_id=node_id, type=kind, version=event.version,
                      resources=len(event.names), removed=len(event.removed), bytes=event.size)
        elif isinstance(event, Acked):
            self._metrics.push_latency.labels(type=kind).observe(max(event.latency, 0.0))
            log.debug("xds.push.acked", node_id=node_id, type=kind, version=event.version)
        elif isinstance(event, Nacked):
            self._metrics.nacks.labels(type=kind).inc()
            log.warning("xds.nack", node_id=node_id, type=kind, version=event.rejected_version,
                        kept_version=event.kept_version, error=event.message)
        elif isinstance(event, StaleNonceIgnored):
            log.debug("xds.request.stale_nonce", node_id=node_id, type=kind, nonce=event.nonce)
