"""Output formats shared by meshctl commands: `-o table|wide|json|yaml`, as kubectl has them.

A command builds a list of records (mappings of plain values) and a list of columns, and
`render` turns them into text. `table` shows the columns not marked `wide`; `wide` shows all;
`json` and `yaml` print every record key, so scripts get the full data.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import yaml

FORMATS = ("table", "wide", "json", "yaml")
COLUMN_GAP = "   "


@dataclass(frozen=True, slots=True)
class Column:
    header: str
    key: str
    # Shown only with `-o wide`.
    wide: bool = False


def add_output_argument(parser: argparse.ArgumentParser, *, formats: Sequence[str] = FORMATS) -> None:
    parser.add_argument(
        "-o",
        "--output",
        choices=tuple(formats),
        default="table",
        help="output format (default: table)",
    )


def render(
    records: Sequence[Mapping[str, Any]],
    columns: Sequence[Column],
    output: str,
    *,
    empty: str = "No resources found.",
) -> str:
    """Format `records` as `output`; `empty` is the table text when there are no records."""
    if output == "json":
        return json.dumps(list(map(dict, records)), indent=2, ensure_ascii=False) + "\n"
    if output == "yaml":
        return yaml.safe_dump(list(map(dict, records)), sort_keys=False, allow_unicode=True)
    if output not in ("table", "wide"):
        raise ValueError(f"output format {output!r} is not one of {', '.join(FORMATS)}")
    if not records:
        return empty + "\n"
    visible = [column for column in columns if output == "wide" or not column.wide]
    rows = [[column.header for column in visible]]
    rows += [[_cell(record.get(column.key)) for column in visible] for record in records]
    return format_table(rows)


def format_table(rows: Sequence[Sequence[str]]) -> str:
    """Align columns; the last column is not padded, so long messages do not add trailing space."""
    widths = [max(len(row[index]) for row in rows) for index in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths)] + [row[-1]]
        lines.append(COLUMN_GAP.join(cells).rstrip())
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, (list, tuple)):
        return ",".join(str(entry) for entry in value) or "-"
    return str(value)
