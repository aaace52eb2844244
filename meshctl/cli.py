"""meshctl command line: `meshctl VERB [NOUN] [flags]`, in kubectl's habits.

Each command lives in its own module with a `register(subparsers)` function that adds its
sub-parser and sets `run` to a function `run(args) -> int`. To add a command, write such a module
and list it in `COMMAND_MODULES`. Commands write their output to `args.stdout` and problems to
`args.stderr`, which `main` sets, so tests can capture both.

Exit codes: 0 success, 1 the command ran and found a problem (for `analyze`, an error),
2 usage errors (bad flags, missing folder), reported on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
from typing import Sequence, TextIO

from controlplane.errors import MeshError
from controlplane.log import configure as configure_logging
from meshctl.errors import EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE, UsageError

COMMAND_MODULES = (
    "meshctl.analyze",
    "meshctl.inject",
    "meshctl.install",
    "meshctl.up",
    "meshctl.status",
    "meshctl.principals",
    "meshctl.certs",
    "meshctl.describe",
    "meshctl.proxy_config",
    "meshctl.authz",
)

# Re-exported: commands and tests import these names from here as well.
__all__ = ["EXIT_OK", "EXIT_PROBLEMS", "EXIT_USAGE", "UsageError", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meshctl",
        description="Inspect and operate an idmesh service mesh.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None, *, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """Run meshctl with `argv` (default: the process arguments) and return the exit code."""
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    parser = build_parser()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            args = parser.parse_args(argv)
    except SystemExit as exc:
        # argparse has printed usage errors to stderr, or --help to stdout, already.
        return int(exc.code or 0)
    args.stdout, args.stderr = out, err
    # Library events are for servers; a CLI shows only warnings and errors, on stderr.
    configure_logging(level="warning", stream=err)
    try:
        return int(args.run(args))
    except UsageError as exc:
        err.write(f"meshctl {args.command}: error: {exc}\n")
        return EXIT_USAGE
    except MeshError as exc:
        err.write(f"meshctl {args.command}: error: {exc}\n")
        return EXIT_PROBLEMS


if __name__ == "__main__":
    sys.exit(main())
