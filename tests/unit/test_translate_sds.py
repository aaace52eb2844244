"""SDS references: exact secret names, and the same bytes in every resource and version.

Envoy keys an SDS subscription by secret name and `sds_config` bytes; a change in those bytes
between pushes opens a subscription that may never be answered.
"""

from __future__ import annotations

from collections import defaultdict

import pytest

from controlplane.model.types import AuthorizationPolicy, Operation, Rule
from controlplane.translate import translate
from controlplane.translate.resources import CLUSTER, LISTENER, ROOTCA_SECRET, WORKLOAD_SECRET
from tests.golden.meshes import LEDGER, proxy_for, small_mesh
from tests.golden.walk import find

SDS_CONFIG = "envoy.extensions.transport_sockets.tls.v3.SdsSecretConfig"
EXTRA_POLICY = AuthorizationPolicy(
    "payments", "ledger-deny-delete", action="DENY", selector={"app": "ledger"},
    rules=(Rule(operations=(Operation(methods=("DELETE",)),)),),
)


def sds_bytes_by_name(config) -> dict[str, set[bytes]]:
    found: dict[str, set[bytes]] = defaultdict(set)
    for type_url in (LISTENER, CLUSTER):
        for message in config.resources[type_url].values():
            for reference in find(message, SDS_CONFIG):
                found[reference.name].add(reference.SerializeToString(deterministic=True))
    return found


@pytest.mark.parametrize("mode", ["local", "kubernetes"])
def test_sds_references_identical_across_versions(mode: str) -> None:
    proxy = proxy_for(LEDGER, ip=LEDGER.ip, mode=mode)
    before = translate(small_mesh(), proxy)
    after = translate(small_mesh(extra_policies=(EXTRA_POLICY,)), proxy)
    assert before.resources[LISTENER] != after.resources[LISTENER], "the two versions must differ"
    merged: dict[str, set[bytes]] = defaultdict(set)
    for config in (before, after):
        for name, values in sds_bytes_by_name(config).items():
            merged[name] |= values
    assert len(merged[WORKLOAD_SECRET]) == 1
    assert len(merged[ROOTCA_SECRET]) == 1


@pytest.mark.parametrize("mode", ["local", "kubernetes"])
def test_sds_secret_names_are_default_and_rootca(mode: str) -> None:
    config = translate(small_mesh(), proxy_for(LEDGER, ip=LEDGER.ip, mode=mode))
    assert set(sds_bytes_by_name(config)) == {WORKLOAD_SECRET, ROOTCA_SECRET}


def test_workload_certificate_comes_from_agent_socket() -> None:
    config = translate(small_mesh(), proxy_for(LEDGER, ip=LEDGER.ip))
    references = [
        reference
        for message in config.resources[LISTENER].values()
        for reference in find(message, SDS_CONFIG)
    ]
    default = next(r for r in references if r.name == WORKLOAD_SECRET)
    rootca = next(r for r in references if r.name == ROOTCA_SECRET)
    assert default.sds_config.api_config_source.grpc_services[0].envoy_grpc.cluster_name == "sds-grpc"
    assert rootca.sds_config.HasField("ads")
