"""Turning an xDS node (id and metadata) into a `Proxy`, checked against the client certificate.

The client certificate is the identity; node metadata is only a claim. `NAMESPACE` and
`SERVICE_ACCOUNT` must name the same workload identity as the certificate's SPIFFE ID, otherwise
a sidecar could ask for another workload's configuration.
"""

from __future__ import annotations

import json
from typing import Mapping

from envoy.config.core.v3 import base_pb2
from google.protobuf import struct_pb2

from controlplane.errors import XdsError
from controlplane.identity.spiffe_id import SpiffeId
from controlplane.model.types import Proxy, frozen_map
from controlplane.translate.resources import (
    META_APP_ADDRESS,
    META_INSTANCE_IP,
    META_LABELS,
    META_MODE,
    META_NAMESPACE,
    META_SERVICE_ACCOUNT,
    META_WORKLOAD,
)

PROXY_MODES = ("kubernetes", "local")


class NodeRejected(XdsError):
    """A node that may not open an xDS stream; `node_id` names it."""


class IdentityMismatch(NodeRejected):
    """Node metadata that claims another identity than the verified client certificate."""


class InvalidNodeMetadata(NodeRejected, ValueError):
    """Node metadata with a missing or malformed field; `field` names it."""


def _string(metadata: Mapping[str, struct_pb2.Value], key: str) -> str | None:
    value = metadata.get(key)
    if value is None:
        return None
    if value.WhichOneof("kind") != "string_value":
        raise InvalidNodeMetadata(
            f"node metadata {key} must be a string, got {value.WhichOneof('kind')}", field=key
        )
    return value.string_value


def _labels(metadata: Mapping[str, struct_pb2.Value]) -> dict[str, str]:
    """Read LABELS, given either as a struct of strings or as a JSON object string."""
    value = metadata.get(META_LABELS)
    if value is None:
        return {}
    kind = value.WhichOneof("kind")
    if kind == "struct_value":
        raw = {key: item.string_value if item.WhichOneof("kind") == "string_value" else None
               for key, item in value.struct_value.fields.items()}
    elif kind == "string_value":
        try:
            raw = json.loads(value.string_value) if value.string_value else {}
        except json.JSONDecodeError as exc:
            raise InvalidNodeMetadata(
                f"node metadata {META_LABELS} is not a JSON object: {exc}", field=META_LABELS
            ) from exc
    else:
        raw = None
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise InvalidNodeMetadata(
            f"node metadata {META_LABELS} must map label names to strings", field=META_LABELS
        )
    return raw


def check_identity(node_id: str, identity: SpiffeId, namespace: str | None, service_account: str | None) -> None:
    """Raise IdentityMismatch unless the claimed namespace and service account match `identity`."""
    if identity.namespace is None:
        raise IdentityMismatch(
            f"client certificate SPIFFE ID {identity} is not a workload ID of the form "
            "spiffe://<trust domain>/ns/<namespace>/sa/<service account>",
            node_id=node_id,
        )
    claims = ((META_NAMESPACE, namespace, identity.namespace),
              (META_SERVICE_ACCOUNT, service_account, identity.service_account))
    for key, claimed, verified in claims:
        if claimed != verified:
            shown = "missing" if claimed is None else repr(claimed)
            raise IdentityMismatch(
                f"node {node_id!r}: metadata {key} is {shown} but the client certificate "
                f"{identity} has {verified!r}",
                node_id=node_id,
                field=key,
            )


def proxy_from_node(node: base_pb2.Node, identity: SpiffeId) -> Proxy:
    """Build the Proxy for `node`, whose stream presented `identity` in its client certificate."""
    node_id = node.id
    if not node_id:
        raise InvalidNodeMetadata("the first request has no node id; set node.id", node_id="", field="id")
    metadata = node.metadata.fields
    check_identity(node_id, identity, _string(metadata, META_NAMESPACE), _string(metadata, META_SERVICE_ACCOUNT))
    mode = _string(metadata, META_MODE) or "kubernetes"
    if mode not in PROXY_MODES:
        raise InvalidNodeMetadata(
            f"node metadata {META_MODE} is {mode!r}; use one of {', '.join(PROXY_MODES)}",
            node_id=node_id,
            field=META_MODE,
        )
    return Proxy(
        node_id=node_id,
        namespace=identity.namespace or "",
        workload=_string(metadata, META_WORKLOAD) or node_id,
        service_account=identity.service_account or "",
        ip=_string(metadata, META_INSTANCE_IP) or "",
        spiffe_id=identity,
        labels=frozen_map(_labels(metadata)),
        mode=mode,  # type: ignore[arg-type]
        app_address=_string(metadata, META_APP_ADDRESS) or "127.0.0.1",
    )
