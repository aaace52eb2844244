"""`meshctl install` and `meshctl uninstall` flags: invalid values are usage errors that say what
is accepted, and dry runs need no cluster."""

from __future__ import annotations

import io

import pytest
import yaml

from meshctl.cli import main as meshctl


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = meshctl(list(argv), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("flags,message", [
    (["--trust-domain", "Example.org"], "argument --trust-domain: invalid trust domain 'Example.org': "
                                        "the trust domain contains 'E'"),
    (["--trust-domain", "spiffe://example.org"], "argument --trust-domain: invalid trust domain "
                                                 "'spiffe://example.org': it is a SPIFFE ID"),
    (["--trust-domain", "example.org:8443"], "argument --trust-domain: invalid trust domain 'example.org:8443': "
                                             "a trust domain has no port"),
    (["--cert-ttl", "a day"], "argument --cert-ttl: invalid duration 'a day'"),
    (["--cert-ttl", "30s"], 'argument --cert-ttl: invalid certificate TTL: "30s" must be whole seconds and at least 1m'),
    (["--cert-ttl", "90500ms"], 'argument --cert-ttl: invalid certificate TTL: "1m30.5s" must be whole seconds'),
    (["--proxy-image", "has space"], "argument --proxy-image: invalid image 'has space'"),
    (["--replicas", "0"], "argument --replicas: invalid replica count 0: the control plane needs at least 1 replica"),
    (["--ca-source", "vault"], "argument --ca-source: invalid CA source 'vault': use generated or secret:NAME"),
    (["--ca-source", "secret:Bad_Name"], "the Secret name 'Bad_Name' must consist of lower-case letters"),
    (["--image", "has space"], "argument --image: invalid image 'has space'"),
    (["-n", "Kube_System"], "argument -n/--namespace: invalid namespace 'Kube_System'"),
    (["--timeout", "0s"], "argument --timeout: invalid duration '0s': it must be longer than zero"),
])
def test_invalid_flag_is_usage_error(flags, message):
    code, out, err = run("install", "--dry-run", *flags)

    assert code == 2
    assert out == ""
    assert message in err


def test_cert_ttl_is_written_in_settings_form():
    code, out, _err = run("install", "--dry-run", "--cert-ttl", "1440m")

    assert code == 0
    (configmap,) = [doc for doc in yaml.safe_load_all(out) if doc["kind"] == "ConfigMap"]
    assert yaml.safe_load(configmap["data"]["mesh"])["defaultCertificateTTL"] == "24h"


def test_invalid_flag_message_is_one_line():
    _code, _out, err = run("install", "--dry-run", "--cert-ttl", "30s")

    assert [line for line in err.splitlines() if "error:" in line] == [
        'meshctl install: error: argument --cert-ttl: invalid certificate TTL: "30s" must be whole seconds and at least 1m'
    ]


@pytest.mark.parametrize("dry_run", [["--dry-run"], []])
def test_cert_ttl_over_maximum_is_usage_error(dry_run):
    code, out, err = run("install", *dry_run, "--cert-ttl", "200h", "--kubeconfig", "/nonexistent/kubeconfig")

    assert code == 2
    assert out == ""
    assert err == (
        "meshctl install: error: argument --cert-ttl: invalid certificate TTL 200h: it is longer than "
        "maxCertificateTTL (168h) in the manifests' mesh settings; choose at most 168h\n"
    )


def test_cert_ttl_at_maximum_is_accepted():
    code, out, _err = run("install", "--dry-run", "--cert-ttl", "168h")

    assert code == 0
    (configmap,) = [doc for doc in yaml.safe_load_all(out) if doc["kind"] == "ConfigMap"]
    assert yaml.safe_load(configmap["data"]["mesh"])["defaultCertificateTTL"] == "168h"


def test_proxy_image_is_passed_to_the_server():
    code, out, _err = run("install", "--dry-run", "--proxy-image", "registry.example/idmesh/proxy:1.2")

    assert code == 0
    (deployment,) = [doc for doc in yaml.safe_load_all(out) if doc["kind"] == "Deployment"]
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[-1] == "--proxy-image=registry.example/idmesh/proxy:1.2"


def test_manifests_without_mesh_settings_fail_with_cert_ttl(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    (base / "kustomization.yaml").write_text("resources: [namespace.yaml]\n")
    (base / "namespace.yaml").write_text("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: idmesh-system\n")

    code, _out, err = run("install", "--dry-run", "--cert-ttl", "24h", "--manifests", str(tmp_path))

    assert code == 1
    assert "meshctl install: error: the install manifests contain no configmap/idmesh" in err


def test_dry_run_notes_what_comes_from_cluster():
    code, _out, err = run("install", "--dry-run")

    assert code == 0
    assert "the CA Secret idmesh-ca and the webhook's caBundle are not shown" in err


def test_uninstall_dry_run_lists_deletions_in_reverse_order():
    code, out, _err = run("uninstall", "--dry-run")

    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "mutatingwebhookconfiguration/idmesh-sidecar-injector"
    assert lines[-1] == "serviceaccount/idmesh-controlplane"
    assert not [line for line in lines if line.startswith(("namespace/", "customresourcedefinition/", "secret/"))]


def test_uninstall_purge_also_deletes_secret_namespace_and_crds():
    code, out, _err = run("uninstall", "--dry-run", "--purge")

    assert code == 0
    lines = out.splitlines()
    assert "secret/idmesh-ca" in lines
    assert lines[-3:] == [
        "namespace/idmesh-system",
        "customresourcedefinition/peerauthentications.security.idmesh.io",
        "customresourcedefinition/authorizationpolicies.security.idmesh.io",
    ]


def test_missing_manifests_directory_is_reported(tmp_path):
    code, _out, err = run("install", "--dry-run", "--manifests", str(tmp_path))

    assert code == 1
    assert f"the install manifests are not at {tmp_path}/base" in err
