"""meshctl's reader of kustomizations: resources only, anything else is an error."""

from __future__ import annotations

from pathlib import Path

import pytest

from controlplane.install.errors import InstallError
from controlplane.install.kustomize import load_kustomization

CONFIGMAP = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n"


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_files_and_directories_in_listed_order(tmp_path):
    write(tmp_path / "crds/kustomization.yaml", "resources:\n- one.yaml\n")
    write(tmp_path / "crds/one.yaml", CONFIGMAP.format(name="one"))
    write(tmp_path / "base/kustomization.yaml", "resources:\n- ../crds\n- two.yaml\n")
    write(tmp_path / "base/two.yaml", CONFIGMAP.format(name="two") + "---\n" + CONFIGMAP.format(name="three"))

    names = [obj["metadata"]["name"] for obj in load_kustomization(tmp_path / "base")]

    assert names == ["one", "two", "three"]


def test_empty_documents_are_skipped(tmp_path):
    write(tmp_path / "kustomization.yaml", "resources:\n- a.yaml\n")
    write(tmp_path / "a.yaml", "---\n" + CONFIGMAP.format(name="a") + "---\n")

    assert len(load_kustomization(tmp_path)) == 1


def test_transformers_are_rejected(tmp_path):
    write(tmp_path / "kustomization.yaml", "namespace: other\nresources:\n- a.yaml\n")
    write(tmp_path / "a.yaml", CONFIGMAP.format(name="a"))

    with pytest.raises(InstallError, match="uses namespace, which meshctl cannot render"):
        load_kustomization(tmp_path)


def test_missing_resource_is_an_error(tmp_path):
    write(tmp_path / "kustomization.yaml", "resources:\n- gone.yaml\n")

    with pytest.raises(InstallError, match="resource 'gone.yaml' does not exist"):
        load_kustomization(tmp_path)


def test_remote_resource_is_an_error(tmp_path):
    write(tmp_path / "kustomization.yaml", "resources:\n- https://example.com/x.yaml\n")

    with pytest.raises(InstallError, match="is remote"):
        load_kustomization(tmp_path)


def test_directory_without_kustomization_is_an_error(tmp_path):
    with pytest.raises(InstallError, match="has no kustomization"):
        load_kustomization(tmp_path)


def test_document_that_is_not_an_object_is_an_error(tmp_path):
    write(tmp_path / "kustomization.yaml", "resources:\n- a.yaml\n")
    write(tmp_path / "a.yaml", "- just\n- a list\n")

    with pytest.raises(InstallError, match="document 1 is not a Kubernetes object"):
        load_kustomization(tmp_path)
