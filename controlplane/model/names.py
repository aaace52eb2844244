"""Kubernetes name and label syntax (apimachinery `validation` rules).

Each function returns None for a valid value, or the reason it is invalid as a message fragment
that names the accepted form.
"""

from __future__ import annotations

import re

_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_IANA_SVC_NAME = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")

DNS1123_LABEL_MAX = 63
DNS1123_SUBDOMAIN_MAX = 253
LABEL_NAME_MAX = 63
IANA_SVC_NAME_MAX = 15


def dns1123_label(value: str) -> str | None:
    """Check a namespace name or port name: lower-case alphanumerics and '-', at most 63."""
    if len(value) > DNS1123_LABEL_MAX:
        return f"is longer than {DNS1123_LABEL_MAX} characters"
    if not _DNS1123_LABEL.fullmatch(value):
        return "must consist of lower-case letters, digits and '-', and start and end with a letter or digit"
    return None


def dns1035_label(value: str) -> str | None:
    """Check a Service name: like a DNS-1123 label but starting with a letter."""
    if len(value) > DNS1123_LABEL_MAX:
        return f"is longer than {DNS1123_LABEL_MAX} characters"
    if not _DNS1035_LABEL.fullmatch(value):
        return "must consist of lower-case letters, digits and '-', start with a letter and end with a letter or digit"
    return None


def dns1123_subdomain(value: str) -> str | None:
    """Check an object name such as a Pod's: DNS-1123 labels joined by '.', at most 253."""
    if len(value) > DNS1123_SUBDOMAIN_MAX:
        return f"is longer than {DNS1123_SUBDOMAIN_MAX} characters"
    if not all(_DNS1123_LABEL.fullmatch(part) for part in value.split(".")):
        return "must consist of lower-case letters, digits, '-' and '.', and start and end with a letter or digit"
    return None


def label_key(value: str) -> str | None:
    """Check a label or annotation key: an optional DNS subdomain prefix and '/', then a name."""
    prefix, slash, name = value.rpartition("/")
    if slash:
        if not prefix:
            return "has an empty prefix before '/'"
        if problem := dns1123_subdomain(prefix):
            return f"has a prefix that {problem}"
    if not name:
        return "has an empty name"
    if len(name) > LABEL_NAME_MAX:
        return f"has a name longer than {LABEL_NAME_MAX} characters"
    if not _LABEL_NAME.fullmatch(name):
        return "must be letters, digits, '-', '_' and '.', starting and ending with a letter or digit, after an optional 'prefix/'"
    return None


def label_value(value: str) -> str | None:
    """Check a label value: empty, or a name of at most 63 characters."""
    if value == "":
        return None
    if len(value) > LABEL_NAME_MAX:
        return f"is longer than {LABEL_NAME_MAX} characters"
    if not _LABEL_NAME.fullmatch(value):
        return "must be empty or letters, digits, '-', '_' and '.', starting and ending with a letter or digit"
    return None


def iana_service_name(value: str) -> str | None:
    """Check a named port (`targetPort: http`): at most 15 characters, at least one letter."""
    if len(value) > IANA_SVC_NAME_MAX:
        return f"is longer than {IANA_SVC_NAME_MAX} characters"
    if not _IANA_SVC_NAME.fullmatch(value) or "--" in value:
        return "must be lower-case letters, digits and single '-', starting and ending with a letter or digit"
    if not any(ch.isalpha() for ch in value):
        return "must contain at least one letter"
    return None
