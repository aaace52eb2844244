"""`translate`: the mesh state and one proxy in, that proxy's Envoy resources out.

The function is pure: no I/O, no clock, no globals that change. Equal input gives byte-equal
output, because every list is built in a sorted order and resources are keyed and ordered by
name. Faults in one service or policy are validated away here (left out, or failed closed)
and reported in `ProxyConfig.problems`, so they never block the rest of the configuration.
"""

from __future__ import annotations

from types import MappingProxyType

from envoy.config.route.v3 import route_pb2

from controlplane.errors import TranslationError
from controlplane.model.types import MeshState, Proxy
from controlplane.translate import validate
from controlplane.translate.clusters import plan_outbound
from controlplane.translate.inbound import build_inbound
from controlplane.translate.mesh import MeshIndex
from controlplane.translate.options import DEFAULT_OPTIONS, TranslateOptions
from controlplane.translate.outbound import build_outbound
from controlplane.translate.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, ProxyConfig
from controlplane.translate.validate import Built


def translate(state: MeshState, proxy: Proxy, options: TranslateOptions = DEFAULT_OPTIONS) -> ProxyConfig:
    """Compute the listeners, routes, clusters and load assignments of one proxy."""
    index = MeshIndex.build(state)
    inbound = build_inbound(state, proxy, options)
    outbound = build_outbound(state, proxy, plan_outbound(state, index), options)
    problems: list[Exception] = [*inbound.problems, *outbound.problems]

    clusters, found = validate.unique_by_name([*inbound.clusters, *outbound.clusters], kind="cluster")
    problems += found
    endpoints, found = validate.unique_by_name(
        (item for item in outbound.endpoints if item.name in clusters), kind="load assignment"
    )
    problems += found
    routes, found = validate.unique_by_name(outbound.routes, kind="route configuration")
    problems += found
    listeners, found = validate.unique_by_name([*inbound.listeners, *outbound.listeners], kind="listener")
    problems += found

    for built in routes.values():
        config: route_pb2.RouteConfiguration = built.message
        problems += validate.drop_conflicting_domains(config, outbound.virtual_host_origins)
        problems += validate.drop_routes_to_unknown_clusters(config, set(clusters), outbound.virtual_host_origins)
    listeners, found = _drop_bad_regexes(listeners, "listener")
    problems += found
    routes, found = _drop_bad_regexes(routes, "route configuration")
    problems += found

    resources = {
        CLUSTER: _sorted_messages(clusters),
        ENDPOINT: _sorted_messages(endpoints),
        LISTENER: _sorted_messages(listeners),
        ROUTE: _sorted_messages(routes),
    }
    return ProxyConfig(resources=MappingProxyType(resources), problems=_without_repeats(problems))


def _without_repeats(problems: list[Exception]) -> tuple[Exception, ...]:
    """Drop problems already reported, such as one policy note repeated for each TCP port."""
    seen: set[tuple[type, str]] = set()
    kept = []
    for problem in problems:
        key = (type(problem), str(problem))
        if key not in seen:
            seen.add(key)
            kept.append(problem)
    return tuple(kept)


def _drop_bad_regexes(items: dict[str, Built], kind: str) -> tuple[dict[str, Built], list[TranslationError]]:
    """Leave out any resource holding a regex RE2 rejects.

    Policies are checked earlier, where a fault can fail closed on one port. This pass keeps
    any other bad regex from reaching Envoy, which would reject the whole response.
    """
    kept: dict[str, Built] = {}
    problems: list[TranslationError] = []
    for name, built in items.items():
        bad = validate.regex_problems(built.message)
        if not bad:
            kept[name] = built
            continue
        path, pattern, reason = bad[0]
        problems.append(
            TranslationError(
                f"{built.origin}: {kind} {name!r} has regular expression {pattern!r} at {path}, "
                f"which RE2 rejects ({reason}); the {kind} is left out",
                object=built.origin,
                resource=name,
                regex=pattern,
            )
        )
    return kept, problems


def _sorted_messages(items: dict[str, Built]) -> MappingProxyType:
    return MappingProxyType({name: items[name].message for name in sorted(items)})
