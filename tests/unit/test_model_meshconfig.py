"""Mesh settings from the `idmesh` ConfigMap: values, bad values and which ConfigMap counts."""

from __future__ import annotations

import pytest

from controlplane.model.meshconfig import parse_duration
from controlplane.model.parse import parse_objects
from controlplane.model.types import MeshConfig


def configmap(mesh: str, namespace: str = "idmesh-system", name: str = "idmesh") -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": namespace}, "data": {"mesh": mesh}}


def test_every_setting_read():
    state = parse_objects([configmap(
        "trustDomain: example.org\n"
        "trustDomainAliases: [old.example.org, legacy.example]\n"
        "rootNamespace: idmesh-system\n"
        "defaultCertificateTTL: 1h30m\n"
        "maxCertificateTTL: 72h\n"
        "defaultMtlsMode: STRICT\n"
        "clusterDomain: corp.local\n"
        "pushDebounce: 250ms\n"
        "pushMaxDelay: 3s\n"
    )])
    assert state.errors == ()
    assert state.config == MeshConfig(
        trust_domain="example.org",
        trust_domain_aliases=("old.example.org", "legacy.example"),
        root_namespace="idmesh-system",
        cluster_domain="corp.local",
        default_cert_ttl_seconds=5400,
        max_cert_ttl_seconds=72 * 3600,
        default_mtls_mode="STRICT",
        push_debounce_seconds=0.25,
        push_max_delay_seconds=3.0,
    )
    assert state.config.trust_domains == ("example.org", "old.example.org", "legacy.example")


def test_empty_document_keeps_defaults():
    state = parse_objects([configmap("")])
    assert state.errors == ()
    assert state.config == MeshConfig()


def test_bad_value_keeps_default_and_rest_applies():
    state = parse_objects([configmap("trustDomain: example.org\ndefaultMtlsMode: strict\n")])
    assert state.config.trust_domain == "example.org"
    assert state.config.default_mtls_mode == "PERMISSIVE"
    assert [str(e) for e in state.errors] == [
        'ConfigMap idmesh-system/idmesh: data.mesh.defaultMtlsMode: "strict" is not an mTLS mode; use one of STRICT, PERMISSIVE, DISABLE'
    ]


def test_all_bad_values_reported_together():
    state = parse_objects([configmap("trustDomain: a/b\ndefaultCertificateTTL: 10\npushDebounce: fast\n")])
    assert [e.path for e in state.errors] == [
        "data.mesh.trustDomain",
        "data.mesh.defaultCertificateTTL",
        "data.mesh.pushDebounce",
    ]
    assert state.config == MeshConfig()


def test_ttl_above_max_falls_back_within_max():
    state = parse_objects([configmap("defaultCertificateTTL: 48h\nmaxCertificateTTL: 12h\n")])
    assert state.config.max_cert_ttl_seconds == 12 * 3600
    assert state.config.default_cert_ttl_seconds == 12 * 3600
    assert len(state.errors) == 1


def test_configmap_key_missing():
    state = parse_objects([{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "idmesh", "namespace": "idmesh-system"}, "data": {}}])
    assert [str(e) for e in state.errors] == [
        "ConfigMap idmesh-system/idmesh: data.mesh: is missing; it holds the mesh settings as a YAML document"
    ]


def test_document_not_a_mapping():
    state = parse_objects([configmap("- trustDomain: example.org\n")])
    assert [str(e) for e in state.errors] == ["ConfigMap idmesh-system/idmesh: data.mesh: must be an object, not a list"]


def test_other_configmaps_ignored():
    state = parse_objects([configmap("trustDomain: [", name="app-settings"), configmap("trustDomain: x.org", namespace="shop")])
    assert state.errors == ()
    assert state.config == MeshConfig()


def test_configmap_naming_its_own_root_namespace_used():
    state = parse_objects([configmap("rootNamespace: mesh\ntrustDomain: example.org\n", namespace="mesh")])
    assert state.errors == ()
    assert state.config.root_namespace == "mesh"
    assert state.config.trust_domain == "example.org"


def test_given_config_is_the_base():
    base = MeshConfig(trust_domain="base.example", root_namespace="ops")
    state = parse_objects([configmap("defaultMtlsMode: STRICT\n", namespace="ops")], config=base)
    assert state.config.trust_domain == "base.example"
    assert state.config.default_mtls_mode == "STRICT"
    assert state.config.root_namespace == "ops"


def test_duplicate_configmap_reported():
    state = parse_objects([configmap("trustDomain: one.org"), configmap("trustDomain: two.org")])
    assert state.config.trust_domain == "one.org"
    assert [str(e) for e in state.errors] == [
        "ConfigMap idmesh-system/idmesh: is defined more than once; the first definition is used"
    ]


def test_root_namespace_moves_policy_scope():
    policy = {
        "apiVersion": "security.idmesh.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "p", "namespace": "mesh"},
        "spec": {"selector": {"matchLabels": {"app": "a b"}}},
    }
    state = parse_objects([configmap("rootNamespace: mesh\n", namespace="mesh"), policy])
    assert "every workload in the mesh" in state.authorization_policies[0].error


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("24h", 86400.0), ("90m", 5400.0), ("1h30m", 5400.0), ("100ms", 0.1), ("1.5s", 1.5), ("2h0m3s", 7203.0), ("500us", 0.0005)],
)
def test_duration_parsed(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "24", "1 day", "h", "-1h", "1d", "1h 30m"])
def test_duration_rejected(text):
    with pytest.raises(ValueError):
        parse_duration(text)
