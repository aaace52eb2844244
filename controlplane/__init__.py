"""idmesh control plane: identity, mesh model, Envoy translation and xDS."""
