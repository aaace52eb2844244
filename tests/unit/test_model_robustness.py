"""Bad input never crashes parsing or analysis: every subtree of valid objects is replaced by
values of the wrong type, and the parser must report errors instead of raising."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from controlplane.model.analysis import analyze
from controlplane.model.parse import parse_objects

VALID = Path(__file__).resolve().parent.parent / "data" / "valid"
REPLACEMENTS = (None, 70000, True, "x*y", [None], {1: [2]})


def valid_objects() -> list[dict]:
    objects = []
    for path in sorted(VALID.glob("*.yaml")):
        objects += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    objects += [
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {"name": "ledger-1", "namespace": "payments", "labels": {"kubernetes.io/service-name": "ledger"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": True}, "targetRef": {"kind": "Pod", "name": "p"}}],
            "ports": [{"name": "http", "port": 8080}],
        },
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "p", "namespace": "payments", "labels": {"app": "ledger"}},
            "spec": {"containers": [{"name": "c", "ports": [{"containerPort": 8080, "name": "http-api"}]}]},
            "status": {"podIP": "10.0.0.1"},
        },
    ]
    return objects


def paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for key, child in value.items():
            yield from paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from paths(child, (*prefix, index))


def replaced(obj: dict, path: tuple, new) -> dict:
    result = copy.deepcopy(obj)
    target = result
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = copy.deepcopy(new)
    return result


def test_wrong_types_anywhere_never_raise():
    objects = valid_objects()
    checked = 0
    for index, obj in enumerate(objects):
        for path in paths(obj):
            if not path:
                continue
            # The ConfigMap stays out of the context of other objects only to keep the test fast.
            context = [o for i, o in enumerate(objects) if i != index and o["kind"] != "ConfigMap"]
            for value in REPLACEMENTS:
                mutated = [*context, replaced(obj, path, value)]
                state = parse_objects(mutated)
                analyze(state, mutated)
                checked += 1
    assert checked > 1500


def test_every_mutated_policy_error_names_its_object():
    objects = valid_objects()
    policy = next(o for o in objects if o["kind"] == "AuthorizationPolicy")
    for path in paths(policy["spec"], ("spec",)):
        if len(path) < 2:
            continue
        state = parse_objects([replaced(policy, path, {"unexpected": 1})])
        for error in state.errors:
            assert error.kind == "AuthorizationPolicy"
            assert error.name == policy["metadata"]["name"]
