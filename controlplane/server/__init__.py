"""The control plane's gRPC server (TLS, the CA service) and the `serve` command behind it."""

from controlplane.server.grpc_server import GrpcServer
from controlplane.server.tls import ServingCredentials, ServingMaterial, peer_spiffe_id

__all__ = ["GrpcServer", "ServingCredentials", "ServingMaterial", "peer_spiffe_id"]
