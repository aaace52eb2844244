"""Loading manifests from a folder: documents, bad files and files that are not manifests."""

from __future__ import annotations

from controlplane.errors import SourceError
from controlplane.sources.files import load_folder

NAMESPACE = "apiVersion: v1\nkind: Namespace\nmetadata: {name: %s}\n"


def test_multi_document_files_and_json_read_in_order(tmp_path):
    (tmp_path / "b.yaml").write_text(NAMESPACE % "b1" + "---\n" + NAMESPACE % "b2" + "---\n")
    (tmp_path / "a.json").write_text('{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a"}}')
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.yml").write_text(NAMESPACE % "c")
    result = load_folder(tmp_path)
    assert result.errors == []
    assert [o["metadata"]["name"] for o in result.objects] == ["a", "b1", "b2", "c"]
    assert result.origins == ["a.json#1", "b.yaml#1", "b.yaml#2", "sub/c.yml#1"]


def test_bad_yaml_reported_with_document_and_line_and_skipped(tmp_path):
    (tmp_path / "good.yaml").write_text(NAMESPACE % "good")
    (tmp_path / "bad.yaml").write_text(NAMESPACE % "first" + "---\napiVersion: v1\nkind: [Namespace\n")
    result = load_folder(tmp_path)
    assert [o["metadata"]["name"] for o in result.objects] == ["good"]
    (error,) = result.errors
    assert isinstance(error, SourceError)
    assert error.file == "bad.yaml"
    assert error.document == 2
    assert error.line == 7
    assert str(error).startswith("bad.yaml document 2 line 7: invalid YAML: ")
    assert error.__cause__ is not None


def test_bad_json_reported(tmp_path):
    (tmp_path / "bad.json").write_text('{\n "kind": }')
    (error,) = load_folder(tmp_path).errors
    assert str(error) == "bad.json document 1 line 2: invalid JSON: Expecting value"


def test_document_without_kind_reported(tmp_path):
    (tmp_path / "x.yaml").write_text(NAMESPACE % "a" + "---\nmetadata: {name: b}\n")
    result = load_folder(tmp_path)
    assert result.objects == []
    assert [str(e) for e in result.errors] == ["x.yaml document 2: has no apiVersion or kind; every object needs both"]


def test_scalar_document_reported(tmp_path):
    (tmp_path / "x.yaml").write_text("just text\n")
    assert [str(e) for e in load_folder(tmp_path).errors] == [
        "x.yaml document 1: is a str, not a Kubernetes object with apiVersion and kind"
    ]


def test_list_kind_expanded(tmp_path):
    (tmp_path / "list.yaml").write_text(
        "apiVersion: v1\nkind: List\nitems:\n"
        "- {apiVersion: v1, kind: Namespace, metadata: {name: one}}\n"
        "- {apiVersion: v1, kind: Namespace, metadata: {name: two}}\n"
    )
    result = load_folder(tmp_path)
    assert [o["metadata"]["name"] for o in result.objects] == ["one", "two"]


def test_non_manifest_files_skipped(tmp_path):
    (tmp_path / "scenario.yaml").write_text("calls: []\n")
    (tmp_path / "kustomization.yaml").write_text("resources: []\n")
    (tmp_path / "README.md").write_text("# notes\n")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "x.yaml").write_text("broken: [\n")
    result = load_folder(tmp_path)
    assert result.objects == []
    assert result.errors == []


def test_undecodable_file_reported(tmp_path):
    (tmp_path / "binary.yaml").write_bytes(b"\xff\xfe\x00bad")
    (error,) = load_folder(tmp_path).errors
    assert str(error).startswith("binary.yaml: cannot be read: ")


def test_missing_folder_reported(tmp_path):
    result = load_folder(tmp_path / "absent")
    assert result.objects == []
    assert [e.file for e in result.errors] == [str(tmp_path / "absent")]


def test_impossible_date_reported_not_raised(tmp_path):
    (tmp_path / "date.yaml").write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: a, labels: {since: 2024-02-30}}\n")
    (error,) = load_folder(tmp_path).errors
    assert str(error) == "date.yaml document 1: invalid YAML: day is out of range for month"
