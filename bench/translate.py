"""Time to translate one proxy's configuration in a mesh of 1,000 services and 500 policies.

Prints one line: the median translation time, and its ratio to the time to serialize the same
resources (SerializeToString, deterministic), which is the floor any xDS push pays anyway.
Run from the repository root: `python bench/translate.py [--services N] [--policies N]`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from controlplane.translate import translate  # noqa: E402
from tests.golden.meshes import proxy_for, synthetic_mesh  # noqa: E402


def _median_seconds(action, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=1000, help="number of services in the mesh")
    parser.add_argument("--policies", type=int, default=500, help="number of AuthorizationPolicies")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs; the median is printed")
    parser.add_argument("--mode", choices=("local", "kubernetes"), default="kubernetes", help="proxy mode")
    args = parser.parse_args()

    state = synthetic_mesh(services=args.services, policies=args.policies)
    proxy = proxy_for(state.workloads[0], ip="127.1.0.1", mode=args.mode)
    config = translate(state, proxy)
    messages = [message for resources in config.resources.values() for message in resources.values()]

    translate_seconds = _median_seconds(lambda: translate(state, proxy), args.repeats)
    serialize_seconds = _median_seconds(
        lambda: [message.SerializeToString(deterministic=True) for message in messages], args.repeats
    )
    print(
        f"translate {args.mode} proxy, {args.services} services / {args.policies} policies "
        f"({len(messages)} resources): {translate_seconds * 1000:.1f} ms median of {args.repeats}, "
        f"{translate_seconds / serialize_seconds:.1f}x serializing the same resources "
        f"({serialize_seconds * 1000:.1f} ms)"
    )


if __name__ == "__main__":
    main()
