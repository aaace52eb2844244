"""The control plane's gRPC server (TLS, the CA service) and the `serve` command behind it.

Import from the modules: `grpc_server.GrpcServer`, `tls.peer_spiffe_id`, `serve.run`. This
package module stays empty so that the CLI can read `addresses` without loading grpc.
"""
