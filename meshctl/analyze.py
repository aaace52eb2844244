"""`meshctl analyze -f DIR`: report invalid and risky objects in a folder of manifests.

Findings are the command's output, so they go to stdout in every format. The exit code is 1
when any finding is an error (an object left out or failing closed, or an unreadable file) and
0 when there are only warnings or none.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from controlplane.model.analysis import Finding, analyze
from controlplane.model.parse import parse_objects
from controlplane.sources.files import load_folder
from meshctl.errors import EXIT_OK, EXIT_PROBLEMS, UsageError
from meshctl.output import Column, add_output_argument, render

COLUMNS = (
    Column("SEVERITY", "severity"),
    Column("CODE", "code"),
    Column("OBJECT", "object"),
    Column("PATH", "path"),
    Column("MESSAGE", "message"),
    Column("FILE", "file", wide=True),
)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "analyze",
        help="report invalid and risky objects in a folder of manifests",
        description="Check a folder of Kubernetes YAML (policies, workloads, Services, mesh "
        "settings) and report errors and warnings. Exits 1 when any error is found.",
    )
    parser.add_argument("-f", "--filename", required=True, metavar="DIR", help="folder of YAML or JSON manifests, read recursively")
    add_output_argument(parser, formats=("table", "wide", "json", "yaml"))
    parser.set_defaults(run=run)


def analyze_folder(path: Path) -> tuple[list[Finding], dict[str, str]]:
    """Load and analyze a folder; return the findings and, per object, the file it came from."""
    loaded = load_folder(path)
    state = parse_objects(loaded.objects)
    findings = [
        Finding("error", "unreadable-file", error.file, _location(error), error.problem) for error in loaded.errors
    ]
    findings += analyze(state, loaded.objects)
    files = {}
    for obj, origin in zip(loaded.objects, loaded.origins):
        meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
        namespace = meta.get("namespace", "default") if obj.get("kind") != "Namespace" else ""
        ref = f"{obj.get('kind')} {namespace}/{meta.get('name')}" if namespace else f"{obj.get('kind')} {meta.get('name')}"
        files.setdefault(ref, origin)
    return sorted(findings, key=lambda finding: finding.severity != "error"), files


def _location(error: Any) -> str:
    parts = []
    if error.document is not None:
        parts.append(f"document {error.document}")
    if error.line is not None:
        parts.append(f"line {error.line}")
    return " ".join(parts)


def run(args: argparse.Namespace) -> int:
    folder = Path(args.filename)
    if not folder.is_dir():
        raise UsageError(f"{args.filename}: not a folder; pass a folder of manifests with -f")
    findings, files = analyze_folder(folder)
    if args.output in ("json", "yaml"):
        records = [finding.as_dict() for finding in findings]
    else:
        records = [{**finding.as_dict(), "file": files.get(finding.object, "")} for finding in findings]
    args.stdout.write(render(records, COLUMNS, args.output, empty="No problems found."))
    errors = sum(finding.severity == "error" for finding in findings)
    if args.output in ("table", "wide") and findings:
        args.stdout.write(f"\n{errors} error(s), {len(findings) - errors} warning(s)\n")
    return EXIT_PROBLEMS if errors else EXIT_OK
