"""Every file under tests/data/invalid contains one defect; each must be reported with its exact
message, and mixing them with valid policies must leave the valid ones in force."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from controlplane.model.parse import parse_objects
from controlplane.sources.files import load_folder

DATA = Path(__file__).resolve().parent.parent / "data"
INVALID = DATA / "invalid"
VALID = DATA / "valid"

EXPECTED = {
    'action-custom-unsupported.yaml': [
        'AuthorizationPolicy payments/action-custom-unsupported: spec.action: CUSTOM is not supported, because idmesh has no external authorizers; the policy fails closed for the workloads it selects',
    ],
    'action-lower-case.yaml': [
        'AuthorizationPolicy payments/action-lower-case: spec.action: "allow" is not an action; use one of ALLOW, DENY, AUDIT, CUSTOM',
    ],
    'action-unknown.yaml': [
        'AuthorizationPolicy payments/action-unknown: spec.action: "PERMIT" is not an action; use one of ALLOW, DENY, AUDIT, CUSTOM',
    ],
    'api-version-unsupported.yaml': [
        'AuthorizationPolicy payments/api-version-unsupported: apiVersion: "security.idmesh.io/v2" is not supported; use one of security.idmesh.io/v1, security.istio.io/v1, security.istio.io/v1beta1',
    ],
    'from-empty-list.yaml': [
        'AuthorizationPolicy payments/from-empty-list: spec.rules[0].from: is an empty list, which matches nothing; remove "from" to match any request',
    ],
    'host-wildcard-in-middle.yaml': [
        'AuthorizationPolicy payments/host-wildcard-in-middle: spec.rules[0].to[0].operation.hosts[0]: "api.*.example.org" has "*" in the middle; use an exact value, "prefix*", "*suffix" or "*"',
    ],
    'ip-block-invalid.yaml': [
        'AuthorizationPolicy payments/ip-block-invalid: spec.rules[0].from[0].source.ipBlocks[0]: "10.0.0.300/8" is not an IP address or CIDR block such as "10.0.0.0/8"',
    ],
    'mesh-cluster-domain-invalid.yaml': [
        'ConfigMap idmesh-system/idmesh: data.mesh.clusterDomain: "cluster_local" is not a DNS domain such as cluster.local',
    ],
    'mesh-debounce-above-max-delay.yaml': [
        'ConfigMap idmesh-system/idmesh: data.mesh.pushDebounce: 2s is longer than pushMaxDelay (500ms)',
    ],
    'mesh-mtls-mode-unknown.yaml': [
        'ConfigMap idmesh-system/idmesh: data.mesh.defaultMtlsMode: "REQUIRED" is not an mTLS mode; use one of STRICT, PERMISSIVE, DISABLE',
    ],
    'mesh-root-namespace-mismatch.yaml': [
        'ConfigMap idmesh-system/idmesh: data.mesh.rootNamespace: "istio-system" is not the namespace of this ConfigMap (idmesh-system); the ConfigMap idmesh must be in the root namespace',
    ],
    'mesh-trust-domain-alias-invalid.yaml': [
        'ConfigMap idmesh-system/idmesh: data.mesh.trustDomainAliases[1]: "spiffe://new.example.org" is a SPIFFE ID; write the trust domain alone, such as new.example.org',
    ],
    'mesh-trust-domain-upper-case.yaml': [
        'ConfigMap idmesh-system/idmesh: data.mesh.trustDomain: "Example.ORG" is not a trust domain: the trust domain contains \'E\'; use lower-case letters, digits, \'.\', \'-\' and \'_\'',
    ],
    'mesh-ttl-above-max.yaml': [
        'ConfigMap idmesh-system/idmesh: data.mesh.defaultCertificateTTL: 48h is longer than maxCertificateTTL (24h)',
    ],
    'mesh-ttl-not-a-duration.yaml': [
        'ConfigMap idmesh-system/idmesh: data.mesh.defaultCertificateTTL: "1 day" is not a duration; write one such as "24h", "90m" or "100ms"',
    ],
    'mesh-ttl-too-short.yaml': [
        'ConfigMap idmesh-system/idmesh: data.mesh.defaultCertificateTTL: "30s" must be whole seconds and at least 1m',
    ],
    'mesh-unknown-key.yaml': [
        'ConfigMap idmesh-system/idmesh: data.mesh.trustdomain: unknown field "trustdomain"; accepted fields are trustDomain, trustDomainAliases, rootNamespace, defaultCertificateTTL, maxCertificateTTL, defaultMtlsMode, clusterDomain, pushDebounce, pushMaxDelay',
    ],
    'mesh-yaml-invalid.yaml': [
        "ConfigMap idmesh-system/idmesh: data.mesh: invalid YAML at line 2: expected ',' or ']', but got '<stream end>'",
    ],
    'method-lower-case.yaml': [
        'AuthorizationPolicy payments/method-lower-case: spec.rules[0].to[0].operation.methods[1]: "get" is not an HTTP method; use upper case',
    ],
    'method-not-a-token.yaml': [
        'AuthorizationPolicy payments/method-not-a-token: spec.rules[0].to[0].operation.methods[0]: "GET /admin" is not an HTTP method; methods are tokens such as GET or POST',
    ],
    'name-invalid.yaml': [
        'AuthorizationPolicy payments/Allow_Settle: metadata.name: "Allow_Settle" is not a valid name: it must consist of lower-case letters, digits, \'-\' and \'.\', and start and end with a letter or digit',
    ],
    'namespace-not-a-string.yaml': [
        'AuthorizationPolicy payments/namespace-not-a-string: spec.rules[0].from[0].source.namespaces[0]: must be a string, not a number (42); quote it in YAML',
    ],
    'operation-empty.yaml': [
        'AuthorizationPolicy payments/operation-empty: spec.rules[0].to[0].operation: is empty; list at least one field, or remove "to" to match any request',
    ],
    'path-wildcard-at-both-ends.yaml': [
        'AuthorizationPolicy payments/path-wildcard-at-both-ends: spec.rules[0].to[0].operation.notPaths[0]: "*admin*" has "*" at both ends; use an exact value, "prefix*", "*suffix" or "*"',
    ],
    'path-wildcard-in-middle.yaml': [
        'AuthorizationPolicy payments/path-wildcard-in-middle: spec.rules[0].to[0].operation.paths[0]: "/api/*/items" has "*" in the middle; use an exact value, "prefix*", "*suffix" or "*"',
    ],
    'path-with-query.yaml': [
        'AuthorizationPolicy payments/path-with-query: spec.rules[0].to[0].operation.paths[0]: "/search?q=1" contains a query or fragment; paths are matched without them',
    ],
    'path-without-leading-slash.yaml': [
        'AuthorizationPolicy payments/path-without-leading-slash: spec.rules[0].to[0].operation.paths[0]: "api/v1/settlements" does not start with "/" or "*"',
    ],
    'peer-mode-lower-case.yaml': [
        'PeerAuthentication payments/peer-mode-lower-case: spec.mtls.mode: "strict" is not an mTLS mode; use one of UNSET, DISABLE, PERMISSIVE, STRICT',
    ],
    'peer-mode-unknown.yaml': [
        'PeerAuthentication payments/peer-mode-unknown: spec.mtls.mode: "STRICTEST" is not an mTLS mode; use one of UNSET, DISABLE, PERMISSIVE, STRICT',
    ],
    'peer-port-level-key-not-a-port.yaml': [
        'PeerAuthentication payments/peer-port-level-key-not-a-port: spec.portLevelMtls["http"]: "http" is not a port number; use a number from 1 to 65535',
    ],
    'peer-port-level-without-selector.yaml': [
        'PeerAuthentication payments/peer-port-level-without-selector: spec.portLevelMtls: is only allowed together with a selector with matchLabels',
    ],
    'peer-selector-invalid.yaml': [
        'PeerAuthentication payments/peer-selector-invalid: spec.selector.matchLabels["app"]: must be a string, not a list (["ledger"]); the selector cannot be read, so mTLS is STRICT for every workload in namespace payments',
    ],
    'peer-unknown-field.yaml': [
        'PeerAuthentication payments/peer-unknown-field: spec.mtls.strict: unknown field "strict"; accepted fields are mode',
    ],
    'port-not-a-string.yaml': [
        'AuthorizationPolicy payments/port-not-a-string: spec.rules[0].to[0].operation.ports[0]: must be a string, not a number (8080); quote it in YAML',
    ],
    'port-out-of-range.yaml': [
        'AuthorizationPolicy payments/port-out-of-range: spec.rules[0].to[0].operation.ports[0]: "70000" is not a port; use a number from 1 to 65535 as a string',
    ],
    'port-zero.yaml': [
        'AuthorizationPolicy payments/port-zero: spec.rules[0].to[0].operation.notPorts[0]: "0" is not a port; use a number from 1 to 65535 as a string',
    ],
    'principal-empty-string.yaml': [
        'AuthorizationPolicy payments/principal-empty-string: spec.rules[0].from[0].source.principals[1]: is an empty string; remove it or write a value',
    ],
    'principal-wildcard-in-middle.yaml': [
        'AuthorizationPolicy payments/principal-wildcard-in-middle: spec.rules[0].from[0].source.principals[0]: "cluster.local/ns/*/sa/worker" has "*" in the middle; use an exact value, "prefix*", "*suffix" or "*"',
    ],
    'principals-empty-list.yaml': [
        'AuthorizationPolicy payments/principals-empty-list: spec.rules[0].from[0].source.principals: is an empty list, which is read as an absent field and matches anything; remove the field or list values',
    ],
    'provider-without-custom.yaml': [
        'AuthorizationPolicy payments/provider-without-custom: spec.provider: is only allowed with action CUSTOM, not DENY',
    ],
    'remote-ip-block-not-an-address.yaml': [
        'AuthorizationPolicy payments/remote-ip-block-not-an-address: spec.rules[0].from[0].source.notRemoteIpBlocks[0]: "office" is not an IP address or CIDR block such as "10.0.0.0/8"',
    ],
    'request-principals-unsupported.yaml': [
        'AuthorizationPolicy payments/request-principals-unsupported: spec.rules[0].from[0].source.requestPrincipals: is not supported, because idmesh does not validate JWTs yet; the policy fails closed for the workloads it selects',
    ],
    'root-namespace-selector-invalid.yaml': [
        'AuthorizationPolicy idmesh-system/root-namespace-selector-invalid: spec.selector.matchLabels["-app"]: "-app" is not a label key: it must be letters, digits, \'-\', \'_\' and \'.\', starting and ending with a letter or digit, after an optional \'prefix/\'; the selector cannot be read, so the policy fails closed for every workload in the mesh (policies in the root namespace idmesh-system apply mesh-wide)',
    ],
    'rules-not-a-list.yaml': [
        'AuthorizationPolicy payments/rules-not-a-list: spec.rules: must be a list, not an object',
    ],
    'selector-label-not-a-string.yaml': [
        'AuthorizationPolicy payments/selector-label-not-a-string: spec.selector.matchLabels["version"]: must be a string, not a number (2); quote it in YAML; the selector cannot be read, so the policy fails closed for every workload in namespace payments',
    ],
    'selector-label-value-invalid.yaml': [
        'AuthorizationPolicy payments/selector-label-value-invalid: spec.selector.matchLabels["app"]: "ledger service" is not a label value: it must be empty or letters, digits, \'-\', \'_\' and \'.\', starting and ending with a letter or digit; the selector cannot be read, so the policy fails closed for every workload in namespace payments',
    ],
    'selector-match-expressions.yaml': [
        'AuthorizationPolicy payments/selector-match-expressions: spec.selector.matchExpressions: unknown field "matchExpressions"; accepted fields are matchLabels; the selector cannot be read, so the policy fails closed for every workload in namespace payments',
    ],
    'service-port-zero.yaml': [
        'Service payments/service-port-zero: spec.ports[0].port: 0 is not a port number; use an integer from 1 to 65535',
    ],
    'service-ports-without-names.yaml': [
        'Service payments/service-ports-without-names: spec.ports[0].name: is missing; every port of a Service with several ports needs a name',
        'Service payments/service-ports-without-names: spec.ports[1].name: is missing; every port of a Service with several ports needs a name',
    ],
    'service-target-port-quoted-number.yaml': [
        'Service payments/service-target-port-quoted-number: spec.ports[0].targetPort: "8080" is a string of digits; write the port number without quotes',
    ],
    'several-errors-in-one-rule.yaml': [
        'AuthorizationPolicy payments/several-errors-in-one-rule: spec.rules[0].to[0].operation.methods[0]: "get" is not an HTTP method; use upper case',
        'AuthorizationPolicy payments/several-errors-in-one-rule: spec.rules[0].to[0].operation.paths[0]: "settlements" does not start with "/" or "*"',
        'AuthorizationPolicy payments/several-errors-in-one-rule: spec.rules[0].to[0].operation.ports[0]: "0" is not a port; use a number from 1 to 65535 as a string',
    ],
    'source-empty.yaml': [
        'AuthorizationPolicy payments/source-empty: spec.rules[0].from[0].source: is empty; list at least one field, or remove "from" to match any request',
    ],
    'source-missing.yaml': [
        'AuthorizationPolicy payments/source-missing: spec.rules[0].from[0].source: is missing; each "from" entry needs "source"',
    ],
    'target-ref-unsupported.yaml': [
        'AuthorizationPolicy payments/target-ref-unsupported: spec.targetRef: is not supported, because idmesh has no gateways or waypoints; the policy fails closed for the workloads it selects',
    ],
    'to-empty-list.yaml': [
        'AuthorizationPolicy payments/to-empty-list: spec.rules[0].to: is an empty list, which matches nothing; remove "to" to match any request',
    ],
    'unknown-field-in-operation.yaml': [
        'AuthorizationPolicy payments/unknown-field-in-operation: spec.rules[0].to[0].operation.method: unknown field "method"; accepted fields are hosts, notHosts, ports, notPorts, methods, notMethods, paths, notPaths',
    ],
    'unknown-field-in-rule.yaml': [
        'AuthorizationPolicy payments/unknown-field-in-rule: spec.rules[0].form: unknown field "form"; accepted fields are from, to, when',
    ],
    'unknown-field-in-spec.yaml': [
        'AuthorizationPolicy payments/unknown-field-in-spec: spec.selectors: unknown field "selectors"; accepted fields are selector, targetRef, targetRefs, action, provider, rules',
    ],
    'when-destination-port-not-a-number.yaml': [
        'AuthorizationPolicy payments/when-destination-port-not-a-number: spec.rules[0].when[0].values[0]: "http" is not a port; use a number from 1 to 65535 as a string',
    ],
    'when-empty-list.yaml': [
        'AuthorizationPolicy payments/when-empty-list: spec.rules[0].when: is an empty list; remove it to add no conditions',
    ],
    'when-header-name-empty.yaml': [
        'AuthorizationPolicy payments/when-header-name-empty: spec.rules[0].when[0].key: "request.headers[]" does not name a header; write request.headers[NAME] with a header name',
    ],
    'when-request-auth-unsupported.yaml': [
        'AuthorizationPolicy payments/when-request-auth-unsupported: spec.rules[0].when[0].key: "request.auth.claims[iss]" is not supported, because idmesh does not validate JWTs yet; the policy fails closed for the workloads it selects',
    ],
    'when-unknown-key.yaml': [
        'AuthorizationPolicy payments/when-unknown-key: spec.rules[0].when[0].key: "source.user" is not a supported condition key; use one of source.ip, remote.ip, source.namespace, source.principal, destination.ip, destination.port, connection.sni, request.headers[NAME]',
    ],
    'when-without-values.yaml': [
        'AuthorizationPolicy payments/when-without-values: spec.rules[0].when[0]: has neither values nor notValues; a condition needs at least one',
    ],
}



def parse_file(path: Path):
    return parse_objects(list(yaml.safe_load_all(path.read_text())))


def test_corpus_has_a_message_for_every_file():
    files = sorted(path.name for path in INVALID.glob("*.yaml"))
    assert len(files) >= 40
    assert files == sorted(EXPECTED)


@pytest.mark.parametrize("file_name", sorted(EXPECTED))
def test_invalid_file_reports_exact_messages(file_name):
    state = parse_file(INVALID / file_name)
    assert [str(error) for error in state.errors] == EXPECTED[file_name]


@pytest.mark.parametrize("file_name", sorted(EXPECTED))
def test_invalid_file_errors_carry_fields(file_name):
    state = parse_file(INVALID / file_name)
    for error in state.errors:
        assert error.kind in ("AuthorizationPolicy", "PeerAuthentication", "ConfigMap", "Service")
        assert error.name
        assert error.namespace in ("payments", "idmesh-system")
        assert error.path


def policy_corpus_files() -> list[Path]:
    return [path for path in sorted(INVALID.glob("*.yaml")) if "kind: AuthorizationPolicy" in path.read_text() or "kind: PeerAuthentication" in path.read_text()]


@pytest.fixture()
def mixed_folder(tmp_path):
    for path in [*policy_corpus_files(), *sorted(VALID.glob("*.yaml"))]:
        shutil.copy(path, tmp_path / path.name)
    return tmp_path


def test_mixed_folder_keeps_valid_policies_in_force(mixed_folder):
    loaded = load_folder(mixed_folder)
    assert loaded.errors == []
    state = parse_objects(loaded.objects)
    valid = parse_objects(load_folder(VALID).objects)
    in_force = {policy.name: policy for policy in state.authorization_policies}
    for policy in valid.authorization_policies:
        assert in_force[policy.name] == policy
        assert in_force[policy.name].error is None
    peers = {peer.name: peer for peer in state.peer_authentications}
    for peer in valid.peer_authentications:
        assert peers[peer.name] == peer


def test_mixed_folder_broken_policies_fail_closed(mixed_folder):
    state = parse_objects(load_folder(mixed_folder).objects)
    broken = {path.stem for path in policy_corpus_files()} - {"name-invalid"} | {"Allow_Settle"}
    policies = {p.name: p for p in (*state.authorization_policies, *state.peer_authentications)}
    assert broken <= set(policies)
    for name in broken:
        assert policies[name].error, name
    assert all(error.detail for error in state.errors)


def test_mixed_folder_workloads_and_settings_unaffected(mixed_folder):
    state = parse_objects(load_folder(mixed_folder).objects)
    assert state.config.trust_domain == "example.org"
    assert {w.name for w in state.workloads} == {"ledger", "worker", "storefront"}


def test_readable_selector_kept_on_invalid_policy():
    state = parse_file(INVALID / "method-lower-case.yaml")
    (policy,) = state.authorization_policies
    assert dict(policy.selector) == {"app": "ledger"}
    assert policy.error == 'spec.rules[0].to[0].operation.methods[1]: "get" is not an HTTP method; use upper case'


@pytest.mark.parametrize(
    "file_name",
    ["selector-label-value-invalid.yaml", "selector-label-not-a-string.yaml", "selector-match-expressions.yaml"],
)
def test_unreadable_selector_widens_to_namespace(file_name):
    (policy,) = parse_file(INVALID / file_name).authorization_policies
    assert policy.selector is None
    assert policy.namespace == "payments"
    assert "fails closed for every workload in namespace payments" in policy.error


def test_unreadable_selector_in_root_namespace_is_mesh_wide():
    (policy,) = parse_file(INVALID / "root-namespace-selector-invalid.yaml").authorization_policies
    assert policy.selector is None
    assert policy.namespace == "idmesh-system"
    assert "every workload in the mesh" in policy.error


@pytest.mark.parametrize(
    "file_name",
    [
        "action-custom-unsupported.yaml",
        "request-principals-unsupported.yaml",
        "when-request-auth-unsupported.yaml",
        "target-ref-unsupported.yaml",
    ],
)
def test_unsupported_feature_fails_closed(file_name):
    (policy,) = parse_file(INVALID / file_name).authorization_policies
    assert "not supported" in policy.error
    assert "fails closed" in policy.error


@pytest.mark.parametrize(
    "file_name",
    ["peer-mode-unknown.yaml", "peer-port-level-key-not-a-port.yaml", "peer-unknown-field.yaml", "peer-port-level-without-selector.yaml"],
)
def test_invalid_peer_authentication_reads_as_strict(file_name):
    (peer,) = parse_file(INVALID / file_name).peer_authentications
    assert peer.mode == "STRICT"
    assert dict(peer.port_level) == {}
    assert peer.error


def test_invalid_peer_selector_makes_namespace_strict():
    (peer,) = parse_file(INVALID / "peer-selector-invalid.yaml").peer_authentications
    assert peer.selector is None
    assert peer.mode == "STRICT"


def test_invalid_service_left_out():
    state = parse_file(INVALID / "service-ports-without-names.yaml")
    assert state.services == ()
    assert len(state.errors) == 2
