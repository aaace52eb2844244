"""Path rewriting before authorization, as Envoy 1.40's connection manager does it.

The expected values of INBOUND_CASES were observed on Envoy 1.40 with the settings of the
translator's inbound connection manager. tests/integration/test_meshctl_authz_paths.py sends
the same paths through a real Envoy.
"""

from __future__ import annotations

import pytest
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from google.protobuf import wrappers_pb2

from controlplane.authz.paths import PathSettings, canonicalize, merge_slashes, normalize

INBOUND = PathSettings(normalize_path=True, merge_slashes=True, escaped_slashes_action="UNESCAPE_AND_FORWARD")

# (sent, normalized). None means Envoy responds 400.
INBOUND_CASES = [
    ("/v1/settlements/../admin", "/v1/admin"),
    ("/a/./b", "/a/b"),
    ("/a//b", "/a/b"),
    ("/a/%2e%2E/b", "/b"),
    ("/a/%2F/b", "/a/b"),
    ("/a%2fb/../c", "/a/c"),
    ("/a/%5C../b", "/a/b"),
    ("/a\\b", "/a/b"),
    ("/a/..;x/b", "/b"),
    ("/a/.;x/b", "/a/b"),
    ("/a/b?x=../y", "/a/b?x=../y"),
    ("/a%2Fb?c%2Fd", "/a/b?c%2Fd"),
    ("/%41%42%7e%2D", "/AB~-"),
    ("/a%20b", "/a%20b"),
    ('/a"b', "/a%22b"),
    ("/a<b>", "/a%3Cb%3E"),
    ("/a^b", "/a%5Eb"),
    ("/a`b", "/a%60b"),
    ("/a{b}", "/a%7Bb%7D"),
    ("/a|b", "/a%7Cb"),
    ("/a%zz", "/a%zz"),
    ("/a%%30%30", "/a%2500"),
    ("/a%3Bb", "/a%3Bb"),
    ("/a;b/c", "/a;b/c"),
    ("/..", "/"),
    ("/../../a", "/a"),
    ("/a/b/..", "/a/"),
    ("/a/b/.", "/a/b/"),
    ("/a/.../b", "/a/.../b"),
    ("//a//b//", "/a/b/"),
    ("/a/%2e%2e%2f..", "/"),
    ("/a%00b", None),
    ("/a/b#frag", None),
    ("/a b", None),
    ("/x/\u00e9", None),
    ("/a\x7fb", None),
]


@pytest.mark.parametrize(("sent", "expected"), INBOUND_CASES)
def test_inbound_settings_rewrite_path_as_envoy(sent, expected):
    result = normalize(sent, INBOUND)
    if expected is None:
        assert result.rejected is not None
    else:
        assert result.rejected is None
        assert result.path == expected


def test_default_settings_keep_the_path():
    result = normalize("/a/../b//c%2F", PathSettings())
    assert result.path == "/a/../b//c%2F"
    assert not result.changed


def test_reject_request_action_rejects_escaped_slash():
    settings = PathSettings(escaped_slashes_action="REJECT_REQUEST")
    assert normalize("/a%2fb", settings).rejected == "the path has an escaped slash (%2F or %5C)"
    assert normalize("/a?b=%2F", settings).rejected is None


def test_redirect_action_marks_the_path_redirected():
    result = normalize("/a%2Fb", PathSettings(escaped_slashes_action="UNESCAPE_AND_REDIRECT"))
    assert result.redirected
    assert result.path == "/a/b"


def test_merge_slashes_alone_leaves_dot_segments():
    assert normalize("//a/../b", PathSettings(merge_slashes=True)).path == "/a/../b"


def test_merge_slashes_keeps_the_query():
    assert merge_slashes("//a//b?x=//y") == "/a/b?x=//y"


def test_canonicalize_adds_a_leading_slash():
    assert canonicalize("") == "/"
    assert canonicalize("a/b") == "/a/b"


def test_settings_are_read_from_the_connection_manager():
    manager = hcm_pb2.HttpConnectionManager(
        normalize_path=wrappers_pb2.BoolValue(value=True),
        merge_slashes=True,
        path_with_escaped_slashes_action=hcm_pb2.HttpConnectionManager.PathWithEscapedSlashesAction.REJECT_REQUEST,
    )
    assert PathSettings.from_hcm(manager) == PathSettings(True, True, "REJECT_REQUEST")


def test_unset_connection_manager_fields_mean_no_rewriting():
    assert PathSettings.from_hcm(hcm_pb2.HttpConnectionManager()) == PathSettings(False, False, "KEEP_UNCHANGED")
