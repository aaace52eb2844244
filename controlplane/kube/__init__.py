"""Kubernetes-mode duties of the control plane: leader election, the root ConfigMaps and policy status."""
