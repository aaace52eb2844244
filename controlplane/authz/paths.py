"""The `:path` rewriting Envoy's HTTP connection manager does before any HTTP filter runs.

RBAC matches the path after these steps, so the evaluator must see the same string. Envoy 1.40
(`ConnectionManagerUtility::maybeNormalizePath` and `PathUtil`) applies, in this order:

1. `path_with_escaped_slashes_action`: UNESCAPE_AND_FORWARD and UNESCAPE_AND_REDIRECT replace
   `%2F`/`%2f` with `/` and `%5C`/`%5c` with `\\`; REJECT_REQUEST responds with 400 when the path
   has one of them. The default (IMPLEMENTATION_SPECIFIC_DEFAULT) keeps them.
2. `normalize_path`: Chromium's URL path canonicalization (RFC 3986 dot segments, `\\` read as
   `/`, percent-encoded unreserved characters decoded, characters outside the URL set
   percent-encoded). Before it, a `.;` or `..;` segment loses its parameters. A path containing
   `%00` or a NUL byte fails and gets 400.
3. `merge_slashes`: runs of `/` become one.

Every step works on the part before the first `?`; the query string is kept as sent. Before
all of them, the HTTP/1 codec responds with 400 to a request-target with a byte outside visible
ASCII (space, control characters, DEL, UTF-8), and the connection manager responds with 400 to one
with a fragment (`#`). Both were checked against Envoy 1.40.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

EscapedSlashesAction = Literal["KEEP_UNCHANGED", "REJECT_REQUEST", "UNESCAPE_AND_REDIRECT", "UNESCAPE_AND_FORWARD"]

_HCM = hcm_pb2.HttpConnectionManager
_ESCAPED_SLASHES_ACTIONS: dict[int, EscapedSlashesAction] = {
    # Envoy's runtime default for IMPLEMENTATION_SPECIFIC_DEFAULT is KEEP_UNCHANGED.
    _HCM.PathWithEscapedSlashesAction.IMPLEMENTATION_SPECIFIC_DEFAULT: "KEEP_UNCHANGED",
    _HCM.PathWithEscapedSlashesAction.KEEP_UNCHANGED: "KEEP_UNCHANGED",
    _HCM.PathWithEscapedSlashesAction.REJECT_REQUEST: "REJECT_REQUEST",
    _HCM.PathWithEscapedSlashesAction.UNESCAPE_AND_REDIRECT: "UNESCAPE_AND_REDIRECT",
    _HCM.PathWithEscapedSlashesAction.UNESCAPE_AND_FORWARD: "UNESCAPE_AND_FORWARD",
}
_ESCAPED_SLASH = re.compile(r"%(2[fF]|5[cC])")
_HEX = frozenset("0123456789abcdefABCDEF")

# Chromium's kPathCharLookup, reduced to what canonicalization does with each byte: pass it
# through, percent-encode it, decode it when it arrives percent-encoded ("unreserved"), or
# fail. `.` and `%` are handled separately.
_UNRESERVED = frozenset(b"-0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz~")
_ENCODED = frozenset([*range(0x01, 0x21), *b'"#<>?\\^`{|}', *range(0x7F, 0x100)])


@dataclass(frozen=True, slots=True)
class PathSettings:
    """The HTTP connection manager fields that rewrite `:path`."""

    normalize_path: bool = False
    merge_slashes: bool = False
    escaped_slashes_action: EscapedSlashesAction = "KEEP_UNCHANGED"

    @classmethod
    def from_hcm(cls, manager: hcm_pb2.HttpConnectionManager) -> PathSettings:
        # An unset normalize_path falls back to the runtime key
        # http_connection_manager.normalize_path, which defaults to false.
        return cls(
            normalize_path=manager.HasField("normalize_path") and manager.normalize_path.value,
            merge_slashes=manager.merge_slashes,
            escaped_slashes_action=_ESCAPED_SLASHES_ACTIONS[manager.path_with_escaped_slashes_action],
        )


@dataclass(frozen=True, slots=True)
class NormalizedPath:
    """The path as HTTP filters see it, or why Envoy responds with 400 instead.

    `rejected` is None when the request goes on to the filters. `redirected` is set when
    UNESCAPE_AND_REDIRECT responds with a redirect to `path` instead of running the filters.
    """

    original: str
    path: str
    rejected: str | None = None
    redirected: bool = False

    @property
    def changed(self) -> bool:
        return self.path != self.original


def normalize(path: str, settings: PathSettings) -> NormalizedPath:
    """Apply the connection manager's path rewriting to `path` (a request-target with query)."""
    invalid = next((char for char in path if not "!" <= char <= "~"), None)
    if invalid is not None:
        return NormalizedPath(path, path, rejected=f"the path has the character {invalid!r}, which is not visible ASCII")
    if "#" in path:
        return NormalizedPath(path, path, rejected="the path has a fragment (#)")
    current = path
    redirected = False
    if settings.escaped_slashes_action != "KEEP_UNCHANGED":
        head, query = _split_query(current)
        if _ESCAPED_SLASH.search(head):
            if settings.escaped_slashes_action == "REJECT_REQUEST":
                return NormalizedPath(path, path, rejected="the path has an escaped slash (%2F or %5C)")
            redirected = settings.escaped_slashes_action == "UNESCAPE_AND_REDIRECT"
            current = _unescape_slashes(head) + query
    if settings.normalize_path:
        canonical = canonicalize(_strip_dot_segment_parameters(current))
        if canonical is None:
            return NormalizedPath(path, current, rejected="the path has a NUL byte or %00")
        current = canonical
    if settings.merge_slashes:
        current = merge_slashes(current)
    return NormalizedPath(path, current, redirected=redirected)


def _split_query(path: str) -> tuple[str, str]:
    cut = path.find("?")
    return (path, "") if cut < 0 else (path[:cut], path[cut:])


def _unescape_slashes(path: str) -> str:
    return _ESCAPED_SLASH.sub(lambda found: "/" if found.group(1) in ("2f", "2F") else "\\", path)


def _strip_dot_segment_parameters(path: str) -> str:
    """Cut `;params` from `.` and `..` segments, so `/a/..;x/b` canonicalizes to `/b`."""
    cut = min((i for i in (path.find("?"), path.find("#")) if i >= 0), default=len(path))
    head, rest = path[:cut], path[cut:]
    if ".;" not in head:
        return path
    segments = []
    for segment in head.split("/"):
        if segment.startswith("..;"):
            segment = ".."
        elif segment.startswith(".;"):
            segment = "."
        segments.append(segment)
    return "/".join(segments) + rest


def merge_slashes(path: str) -> str:
    """Envoy's PathUtil::mergeSlashes: collapse `//` runs in the part before `?`."""
    head, query = _split_query(path)
    if "//" not in head:
        return path
    prefix = "/" if head.startswith("/") else ""
    suffix = "/" if head.endswith("/") else ""
    return prefix + "/".join(part for part in head.split("/") if part) + suffix + query


def canonicalize(path: str) -> str | None:
    """Canonicalize the path part of `path` as Chromium's CanonicalizePath; None when invalid."""
    head, query = _split_query(path)
    data = head.encode("utf-8", "surrogateescape")
    output = bytearray()
    if not data or data[:1] not in (b"/", b"\\"):
        output += b"/"
    if data and not _canonicalize_into(data, output):
        return None
    return output.decode("utf-8", "surrogateescape") + query


def _dot_length(data: bytes, i: int) -> int:
    """Length of a dot at `i`: 1 for `.`, 3 for `%2e`/`%2E`, 0 for anything else."""
    if data[i : i + 1] == b".":
        return 1
    if data[i : i + 3] in (b"%2e", b"%2E"):
        return 3
    return 0


def _is_slash(data: bytes, i: int) -> bool:
    return data[i : i + 1] in (b"/", b"\\")


def _after_dot(data: bytes, after: int) -> tuple[str, int]:
    """Classify a dot that follows a slash: (`file`|`current`|`parent`, input bytes consumed)."""
    end = len(data)
    if after == end:
        return "current", 0
    if _is_slash(data, after):
        return "current", 1
    second = _dot_length(data, after)
    if second:
        if after + second == end:
            return "parent", second
        if _is_slash(data, after + second):
            return "parent", second + 1
    return "file", 0


def _back_up_to_previous_slash(output: bytearray) -> None:
    """Drop the last output segment; never above the leading slash."""
    i = len(output) - 1
    if i == 0:
        return
    i -= 1
    while output[i] != ord("/") and i > 0:
        i -= 1
    del output[i + 1 :]


def _decode_escape(data: bytes, i: int) -> int | None:
    pair = data[i + 1 : i + 3]
    if len(pair) == 2 and all(chr(byte) in _HEX for byte in pair):
        return int(pair, 16)
    return None


def _canonicalize_into(data: bytes, output: bytearray) -> bool:
    success = True
    # Output index of the last `%` that did not start a valid escape, for nested escapes.
    invalid_percent = -10
    i = 0
    while i < len(data):
        byte = data[i]
        dot = _dot_length(data, i)
        if dot:
            if output[-1:] == b"/":
                kind, consumed = _after_dot(data, i + dot)
                if kind == "file":
                    output.append(ord("."))
                elif kind == "parent":
                    _back_up_to_previous_slash(output)
                i += dot + consumed
            else:
                output.append(ord("."))
                i += dot
            continue
        if byte == ord("\\"):
            output.append(ord("/"))
        elif byte == ord("%"):
            value = _decode_escape(data, i)
            if value is None:
                invalid_percent = len(output)
                output.append(byte)
            elif value in _UNRESERVED:
                output.append(value)
                i += 2
                if invalid_percent >= len(output) - 3:
                    _escape_nested(data, i + 1, invalid_percent, output)
            else:
                output += data[i : i + 3]
                i += 2
                success = success and value != 0
        elif byte == 0:
            output += b"%00"
            success = False
        elif byte in _ENCODED:
            output += b"%%%02X" % byte
        else:
            output.append(byte)
        i += 1
    return success


def _escape_nested(data: bytes, next_index: int, invalid_percent: int, output: bytearray) -> None:
    """Turn an earlier bare `%` into `%25` when decoding made it look like a valid escape."""
    length = len(output)
    last = output[-1]
    append_next = invalid_percent == length - 2
    if append_next:
        if next_index == len(data) or data[next_index] >= 0x80:
            return
        output.append(data[next_index])
    if _decode_escape(bytes(output), invalid_percent) is not None:
        if not append_next:
            output.append(output[invalid_percent + 1])
        output[invalid_percent + 1] = ord("2")
        output[invalid_percent + 2] = ord("5")
        output.append(last)
    elif append_next:
        del output[length:]
