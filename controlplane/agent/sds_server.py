"""The agent's SDS server: Envoy fetches `default` and `ROOTCA` from it over a Unix socket.

The socket is the only way to the workload's private key, so it lives in a directory only the
agent's user can enter (created 0700 when missing) and the socket itself is made 0600, or 0660
when the sidecar runs Envoy as another user of the same group (`socket_mode`).
"""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path
from typing import AsyncIterator, Iterable

import grpc
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc

from controlplane.agent.errors import AgentError
from controlplane.agent.sds_state import Ack, DeltaStream, Event, Nack, SecretSet, SotwStream, UnknownNames
from controlplane.errors import XdsError
from controlplane.log import get_logger

log = get_logger("agent.sds")

ALLOWED_SOCKET_MODES = (0o600, 0o660)
_SECRETS_CHANGED = object()
_STREAM_CLOSED = object()


class SdsServicer(sds_pb2_grpc.SecretDiscoveryServiceServicer):
    """Serves the current `SecretSet` and pushes each new one to every open stream."""

    def __init__(self) -> None:
        self._secrets = SecretSet()
        self._queues: set[asyncio.Queue[object]] = set()
        self._warned_names: set[str] = set()

    @property
    def secrets(self) -> SecretSet:
        return self._secrets

    @property
    def stream_count(self) -> int:
        return len(self._queues)

    def update(self, secrets: SecretSet) -> None:
        """Replace the served secrets and wake every stream so it can push them."""
        self._secrets = secrets
        for queue in self._queues:
            queue.put_nowait(_SECRETS_CHANGED)

    async def StreamSecrets(self, request_iterator, context) -> AsyncIterator[discovery_pb2.DiscoveryResponse]:
        stream = SotwStream()
        async for response in self._serve(request_iterator, context, stream, "sotw"):
            yield response

    async def DeltaSecrets(self, request_iterator, context) -> AsyncIterator[discovery_pb2.DeltaDiscoveryResponse]:
        stream = DeltaStream()
        async for response in self._serve(request_iterator, context, stream, "delta"):
            yield response

    async def FetchSecrets(self, request, context) -> discovery_pb2.DiscoveryResponse:
        try:
            responses, events = SotwStream().on_request(request, self._secrets)
        except XdsError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        self._log_events(events, "fetch")
        if not responses:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no secret named any of {sorted(request.resource_names)}")
        return responses[0]

    async def _serve(self, request_iterator, context, stream, kind: str):
        queue: asyncio.Queue[object] = asyncio.Queue()
        reader = asyncio.create_task(_read_into(request_iterator, queue))
        self._queues.add(queue)
        log.debug("sds.stream.opened", kind=kind, peer=context.peer())
        try:
            while True:
                item = await queue.get()
                if item is _STREAM_CLOSED:
                    return
                if isinstance(item, BaseException):
                    raise item
                if item is _SECRETS_CHANGED:
                    responses = stream.on_secrets(self._secrets)
                else:
                    try:
                        responses, events = stream.on_request(item, self._secrets)
                    except XdsError as exc:
                        log.warning("sds.request.rejected", kind=kind, error=str(exc))
                        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
                    self._log_events(events, kind)
                for response in responses:
                    log.info("sds.push", kind=kind, version=self._secrets.version, nonce=response.nonce,
                             names=_names(response))
                    yield response
        finally:
            self._queues.discard(queue)
            reader.cancel()
            log.debug("sds.stream.closed", kind=kind)

    def _log_events(self, events: Iterable[Event], kind: str) -> None:
        for event in events:
            if isinstance(event, Ack):
                log.debug("sds.ack", kind=kind, version=event.version, nonce=event.nonce)
            elif isinstance(event, Nack):
                log.error("sds.nack", kind=kind, nonce=event.nonce, accepted_version=event.accepted_version,
                          message=event.message)
            elif isinstance(event, UnknownNames):
                new = event.names - self._warned_names
                if new:
                    self._warned_names |= new
                    log.warning("sds.secret.unknown", names=sorted(new), served=sorted(self._secrets.secrets))


def _names(response) -> list[str]:
    if isinstance(response, discovery_pb2.DeltaDiscoveryResponse):
        return [r.name for r in response.resources] + [f"-{n}" for n in response.removed_resources]
    return [_any_name(r) for r in response.resources]


def _any_name(packed) -> str:
    secret = secret_pb2.Secret()
    packed.Unpack(secret)
    return secret.name


async def _read_into(request_iterator, queue: asyncio.Queue[object]) -> None:
    try:
        async for request in request_iterator:
            queue.put_nowait(request)
    except asyncio.CancelledError:
        raise
    except grpc.RpcError:
        pass
    except Exception as exc:  # handed to the stream loop, which re-raises it in the handler
        queue.put_nowait(exc)
        return
    queue.put_nowait(_STREAM_CLOSED)


def prepare_socket_path(path: Path) -> None:
    """Create the socket's directory 0700 when missing, and remove a stale socket file.

    Raise `AgentError` when an existing directory can be entered by other users, or when the
    path exists and is not a socket.
    """
    directory = path.parent
    if not directory.exists():
        directory.mkdir(mode=0o700, parents=True)
    mode = stat.S_IMODE(directory.stat().st_mode)
    if mode & 0o007:
        raise AgentError(
            f"SDS socket directory {str(directory)!r} has mode {mode:o}, open to other users; "
            "use a directory with mode 0700 or 0750",
            path=str(directory),
        )
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise AgentError(f"{str(path)!r} exists and is not a socket; refusing to replace it", path=str(path))
        path.unlink()


class SdsServer:
    """A grpc.aio server for `SdsServicer` bound to a Unix socket."""

    def __init__(self, socket_path: Path, *, socket_mode: int = 0o600) -> None:
        if socket_mode not in ALLOWED_SOCKET_MODES:
            raise AgentError(f"SDS socket mode {socket_mode:o} is not one of 600, 660", socket_mode=socket_mode)
        self.socket_path = Path(socket_path)
        self.socket_mode = socket_mode
        self.servicer = SdsServicer()
        self._server: grpc.aio.Server | None = None

    async def start(self) -> None:
        prepare_socket_path(self.socket_path)
        server = grpc.aio.server()
        sds_pb2_grpc.add_SecretDiscoveryServiceServicer_to_server(self.servicer, server)
        # The umask keeps the socket private from the moment it exists, before the chmod below.
        old_umask = os.umask(0o177 if self.socket_mode == 0o600 else 0o117)
        try:
            server.add_insecure_port(f"unix:{self.socket_path}")
            await server.start()
        finally:
            os.umask(old_umask)
        os.chmod(self.socket_path, self.socket_mode)
        self._server = server
        log.info("sds.server.started", socket=str(self.socket_path))

    def update(self, secrets: SecretSet) -> None:
        self.servicer.update(secrets)

    async def stop(self, grace: float = 1.0) -> None:
        if self._server is None:
            return
        await self._server.stop(grace)
        self._server = None
        try:
            self.socket_path.unlink()
        except FileNotFoundError:
            pass
        log.info("sds.server.stopped", socket=str(self.socket_path))
