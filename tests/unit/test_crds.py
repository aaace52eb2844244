"""The CRDs: valid for the Kubernetes API, and their schemas accept the valid example policies
and reject malformed ones."""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CRDS = ROOT / "manifests" / "crds"
DATA = ROOT / "tests" / "data"
KINDS = {"AuthorizationPolicy": "authorizationpolicies.yaml", "PeerAuthentication": "peerauthentications.yaml"}


def load(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def schema_for(kind: str, *, strict_fields: bool = True) -> dict:
    (crd,) = load(CRDS / KINDS[kind])
    (version,) = crd["spec"]["versions"]
    schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
    if strict_fields:
        forbid_unknown_fields(schema)
    return schema


def forbid_unknown_fields(schema: dict) -> None:
    """Reject unknown fields as the API server does under strict field validation (the kubectl
    default), where a structural schema itself may not say `additionalProperties: false`."""
    if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        schema["additionalProperties"] = False
    for value in schema.values():
        if isinstance(value, dict):
            forbid_unknown_fields(value)
        elif isinstance(value, list):
            for entry in value:
                if isinstance(entry, dict):
                    forbid_unknown_fields(entry)


def examples(folder: Path, kind: str) -> list[tuple[str, dict]]:
    found = []
    for path in sorted(folder.glob("*.yaml")):
        for doc in load(path):
            if doc.get("kind") == kind:
                found.append((path.name, doc))
    return found


def errors(kind: str, obj: dict) -> list[str]:
    validator = jsonschema.Draft7Validator(schema_for(kind))
    return [error.message for error in validator.iter_errors(obj)]


@pytest.mark.parametrize("file_name", sorted(KINDS.values()))
def test_crd_valid_for_kubernetes(file_name):
    (crd,) = load(CRDS / file_name)
    # validate() raises on an invalid resource and returns the version it checked against.
    assert kubernetes_validate.validate(crd, "1.37.0", strict=True) == "1.37"


def test_kubernetes_validate_rejects_broken_crd():
    (crd,) = load(CRDS / "authorizationpolicies.yaml")
    crd["spec"]["scope"] = 7
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(crd, "1.37.0", strict=True)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_crd_served_version_is_v1_in_idmesh_group(kind):
    (crd,) = load(CRDS / KINDS[kind])
    assert crd["spec"]["group"] == "security.idmesh.io"
    assert [v["name"] for v in crd["spec"]["versions"]] == ["v1"]
    assert crd["spec"]["names"]["kind"] == kind


@pytest.mark.parametrize(
    ("kind", "file_name", "obj"),
    [(kind, name, obj) for kind in sorted(KINDS) for name, obj in examples(DATA / "valid", kind)],
)
def test_schema_accepts_valid_example(kind, file_name, obj):
    assert errors(kind, obj) == []


def test_valid_examples_cover_both_kinds():
    assert len(examples(DATA / "valid", "AuthorizationPolicy")) >= 5
    assert len(examples(DATA / "valid", "PeerAuthentication")) >= 2


# Corpus files whose defect a schema can express; the rest are caught by the control plane.
SCHEMA_REJECTS = [
    ("AuthorizationPolicy", "method-lower-case.yaml"),
    ("AuthorizationPolicy", "method-not-a-token.yaml"),
    ("AuthorizationPolicy", "path-without-leading-slash.yaml"),
    ("AuthorizationPolicy", "path-wildcard-in-middle.yaml"),
    ("AuthorizationPolicy", "path-wildcard-at-both-ends.yaml"),
    ("AuthorizationPolicy", "path-with-query.yaml"),
    ("AuthorizationPolicy", "port-out-of-range.yaml"),
    ("AuthorizationPolicy", "port-zero.yaml"),
    ("AuthorizationPolicy", "port-not-a-string.yaml"),
    ("AuthorizationPolicy", "host-wildcard-in-middle.yaml"),
    ("AuthorizationPolicy", "remote-ip-block-not-an-address.yaml"),
    ("AuthorizationPolicy", "principal-empty-string.yaml"),
    ("AuthorizationPolicy", "principal-wildcard-in-middle.yaml"),
    ("AuthorizationPolicy", "principals-empty-list.yaml"),
    ("AuthorizationPolicy", "namespace-not-a-string.yaml"),
    ("AuthorizationPolicy", "from-empty-list.yaml"),
    ("AuthorizationPolicy", "to-empty-list.yaml"),
    ("AuthorizationPolicy", "when-empty-list.yaml"),
    ("AuthorizationPolicy", "source-missing.yaml"),
    ("AuthorizationPolicy", "source-empty.yaml"),
    ("AuthorizationPolicy", "operation-empty.yaml"),
    ("AuthorizationPolicy", "when-unknown-key.yaml"),
    ("AuthorizationPolicy", "when-without-values.yaml"),
    ("AuthorizationPolicy", "when-header-name-empty.yaml"),
    ("AuthorizationPolicy", "action-unknown.yaml"),
    ("AuthorizationPolicy", "action-lower-case.yaml"),
    ("AuthorizationPolicy", "unknown-field-in-spec.yaml"),
    ("AuthorizationPolicy", "unknown-field-in-rule.yaml"),
    ("AuthorizationPolicy", "unknown-field-in-operation.yaml"),
    ("AuthorizationPolicy", "rules-not-a-list.yaml"),
    ("AuthorizationPolicy", "selector-label-not-a-string.yaml"),
    ("AuthorizationPolicy", "selector-match-expressions.yaml"),
    ("PeerAuthentication", "peer-mode-unknown.yaml"),
    ("PeerAuthentication", "peer-mode-lower-case.yaml"),
    ("PeerAuthentication", "peer-unknown-field.yaml"),
    ("PeerAuthentication", "peer-selector-invalid.yaml"),
]


@pytest.mark.parametrize(("kind", "file_name"), SCHEMA_REJECTS)
def test_schema_rejects_malformed_policy(kind, file_name):
    (obj,) = load(DATA / "invalid" / file_name)
    assert errors(kind, obj) != []


def test_schema_error_names_the_bad_method():
    (obj,) = load(DATA / "invalid" / "method-lower-case.yaml")
    (message,) = errors("AuthorizationPolicy", obj)
    assert message.startswith("'get' does not match")


def test_unsupported_fields_reach_the_control_plane():
    # The schema keeps Istio fields idmesh does not enforce, so they fail closed with a reason
    # instead of being pruned, which would silently widen the policy.
    for file_name in ("request-principals-unsupported.yaml", "target-ref-unsupported.yaml", "when-request-auth-unsupported.yaml"):
        (obj,) = load(DATA / "invalid" / file_name)
        assert errors("AuthorizationPolicy", obj) == [], file_name
