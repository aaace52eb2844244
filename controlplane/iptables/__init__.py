"""Traffic capture for a pod's sidecar: nat rules (pure) and the `idmesh-iptables` command."""
