"""The pure parts of an informer: the relist diff and the retry delays."""

from __future__ import annotations

import random

from controlplane.sources.k8s_informer import Change, WatchSettings, backoff_delay, diff_listing


def _obj(name, version, **extra):
    return {"metadata": {"name": name, "namespace": "payments", "resourceVersion": version}, **extra}


def _key(name):
    return ("v1/Pod", "payments", name)


def test_diff_reports_added_modified_deleted():
    old = {_key("kept"): _obj("kept", "5"), _key("changed"): _obj("changed", "6"), _key("gone"): _obj("gone", "7")}
    new = {_key("kept"): _obj("kept", "5"), _key("changed"): _obj("changed", "9"), _key("new"): _obj("new", "8")}

    changes = diff_listing(old, new)

    assert changes == [
        Change("MODIFIED", _key("changed"), new[_key("changed")]),
        Change("ADDED", _key("new"), new[_key("new")]),
        Change("DELETED", _key("gone"), old[_key("gone")]),
    ]


def test_diff_of_equal_listings_is_empty():
    listing = {_key("a"): _obj("a", "1"), _key("b"): _obj("b", "2")}
    assert diff_listing(listing, dict(listing)) == []


def test_diff_without_resource_version_compares_content():
    old = {_key("a"): {"metadata": {"name": "a"}, "data": {"k": "1"}}}
    new = {_key("a"): {"metadata": {"name": "a"}, "data": {"k": "2"}}}
    assert [change.type for change in diff_listing(old, new)] == ["MODIFIED"]


def test_first_listing_is_all_added():
    new = {_key("a"): _obj("a", "1"), _key("b"): _obj("b", "2")}
    assert [(change.type, change.key) for change in diff_listing({}, new)] == [("ADDED", _key("a")), ("ADDED", _key("b"))]


def test_backoff_doubles_up_to_cap_with_jitter():
    settings = WatchSettings(backoff_initial_seconds=0.5, backoff_max_seconds=4.0)
    rng = random.Random(7)
    for attempt, capped in [(0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (4, 4.0), (60, 4.0)]:
        for _ in range(50):
            delay = backoff_delay(attempt, settings, rng)
            assert capped / 2 <= delay <= capped, (attempt, delay)
