"""The install objects of a cluster: read from manifests/base, set to the admin's values, applied.

`kustomize` reads the base kustomization, `render` applies `InstallValues` to its objects as a
pure function, and `cluster` creates, updates, waits for and deletes them through the official
Kubernetes client. `meshctl install` and `meshctl uninstall` are the commands on top.
"""
