"""`meshctl up DIR [--check]`: run a folder of Kubernetes YAML as a local mesh with real Envoys.

Without `--check` the mesh keeps running until Ctrl-C (or SIGTERM), then every process it
started is stopped. With `--check` it runs the calls in `DIR/scenario.yaml`, prints the result
table, stops the mesh, and exits 1 if any call did not get its expected outcome.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path
from typing import Any

from controlplane.errors import ConfigError, MeshError
from controlplane.local.plan import DEFAULT_SUBNET, plan_local_mesh
from controlplane.local.scenario import parse_scenario
from controlplane.model.types import MeshState
from controlplane.local.up import SCENARIO_FILE, UpOptions, check_scenario, start_mesh, stop_mesh, verdict_rows, wait_for_stop, workload_rows
from meshctl.errors import EXIT_OK, EXIT_PROBLEMS, UsageError
from meshctl.output import Column, add_output_argument, render


def parse_subnet(text: str) -> str:
    """Check a local-mode subnet for argparse, so a bad one is a usage error."""
    try:
        plan_local_mesh(MeshState(), subnet=text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return text


def parse_duration(text: str) -> int:
    """Read a duration such as 90s, 2m or 24h as whole seconds, for argparse."""
    from controlplane.model.meshconfig import parse_duration as parse_seconds

    try:
        seconds = parse_seconds(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 90s, 10m or 24h") from exc
    if seconds < 60:
        raise argparse.ArgumentTypeError(f"{text!r} is shorter than the 1m minimum certificate lifetime")
    return int(seconds)

WORKLOAD_COLUMNS = (
    Column("WORKLOAD", "workload"),
    Column("IDENTITY", "identity"),
    Column("ADDRESS", "address"),
    Column("SIDECAR", "sidecar"),
    Column("PORTS", "ports"),
)
VERDICT_COLUMNS = (
    Column("CALL", "call"),
    Column("EXPECTED", "expected"),
    Column("GOT", "got"),
    Column("PRINCIPAL SEEN", "principal"),
    Column("RESULT", "result"),
)

EPILOG = """examples:
  meshctl up examples/payments-ledger            run the example until Ctrl-C
  meshctl up examples/payments-ledger --check    run its scenario.yaml and exit 0 or 1
  meshctl up DIR --check -o json                 the call results as JSON
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "up",
        help="run a folder of Kubernetes YAML locally with real Envoy sidecars",
        description="Start a control plane on the folder, and for every workload its demo app and, "
        "where the pod template has idmesh.io/inject: \"true\", a mesh-agent and an Envoy sidecar. "
        "Each workload gets its own loopback address.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("folder", metavar="DIR", type=Path, help="folder of Kubernetes YAML (and scenario.yaml for --check)")
    parser.add_argument("--check", action="store_true", help="run DIR/scenario.yaml, print the results and stop; exit 1 on any mismatch")
    parser.add_argument("--subnet", type=parse_subnet, default=DEFAULT_SUBNET, help="loopback subnet for workload addresses: a /16 or larger prefix inside 127.0.0.0/8 (default: %(default)s)")
    parser.add_argument("--run-dir", type=Path, default=None, help="folder for the CA, logs and sockets (default: a new temporary folder)")
    parser.add_argument("--ads", choices=("grpc", "delta"), default="grpc", help="ADS flavour the sidecars use: state of the world or delta (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=90.0, metavar="SECONDS", help="how long to wait for the mesh to be ready (default: %(default)s)")
    parser.add_argument("--cert-ttl", type=parse_duration, default=0, metavar="DURATION", help="certificate lifetime for every sidecar, e.g. 2m or 24h (default: the mesh's defaultCertificateTTL)")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info", help="log level of the control plane and agents")
    add_output_argument(parser, formats=("table", "wide", "json", "yaml"))
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if not args.folder.is_dir():
        raise UsageError(f"{args.folder} is not a folder")
    if args.check:
        # Check the scenario before starting anything, so a typo costs no mesh start-up.
        scenario = args.folder / SCENARIO_FILE
        if not scenario.is_file():
            raise UsageError(f"{scenario} not found; --check runs the calls in that file (see docs/local-mode.md)")
        parse_scenario(scenario.read_text(), source=str(scenario))
    options = UpOptions(
        folder=args.folder,
        check=args.check,
        output=args.output,
        subnet=args.subnet,
        run_dir=args.run_dir,
        ads_type=args.ads,
        ready_timeout=args.timeout,
        log_level=args.log_level,
        cert_ttl_seconds=args.cert_ttl,
    )
    try:
        return asyncio.run(_run(options, args))
    except MeshError as exc:
        args.stderr.write(f"meshctl up: error: {exc}\n")
        return EXIT_PROBLEMS


async def _run(options: UpOptions, args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    mesh = None
    succeeded = False
    try:
        mesh = await start_mesh(options, progress=args.stderr)
        if options.check:
            verdicts = await check_scenario(mesh, options.folder)
            args.stdout.write(render(verdict_rows(verdicts), VERDICT_COLUMNS, options.output))
            failed = sum(1 for verdict in verdicts if not verdict.passed)
            args.stderr.write(f"{len(verdicts) - failed} passed, {failed} failed\n")
            succeeded = not failed
            return EXIT_PROBLEMS if failed else EXIT_OK
        args.stdout.write(render(workload_rows(mesh), WORKLOAD_COLUMNS, options.output))
        args.stdout.flush()
        args.stderr.write(f"mesh is up; logs in {mesh.processes.log_dir}. Press Ctrl-C to stop.\n")
        args.stderr.flush()
        await wait_for_stop(mesh, stop, report=lambda problem: _warn(args.stderr, problem))
        succeeded = True
        return EXIT_OK
    finally:
        if mesh is not None:
            args.stderr.write("stopping the mesh ... ")
            args.stderr.flush()
            await stop_mesh(mesh, keep_run_dir=not succeeded)
            args.stderr.write("ok\n")
            if mesh.run_dir.exists():
                args.stderr.write(f"run folder kept: {mesh.run_dir} (logs, and the CA's private key: delete it when done)\n")
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def _warn(stream, problem: str) -> None:
    stream.write(f"warning: {problem}\n")
    stream.flush()
