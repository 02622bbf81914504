"""Benchmark output: a table printed row by row, plus CSV, JSON and Markdown files.

A :class:`Report` is made on every rank but only rank 0's prints and
writes.  Rows are plain dicts; the columns say which keys are shown and
how.  ``--csv``/``--json``/``--markdown`` files are written at the end (the
JSON file also holds the run's metadata: machine, MPI library, command,
load), the table is printed as each row is measured.
"""

import csv
import json
import sys
from dataclasses import dataclass

__all__ = ["Column", "Report", "to_json"]


def _short(value):
    return float(f"{value:.6g}") if isinstance(value, float) else value


def to_json(meta, rows):
    """Return ``{"meta": ..., "rows": [...]}`` as JSON, one row per line, 6 digits."""
    lines = [json.dumps({k: _short(v) for k, v in row.items()}) for row in rows]
    return ('{"meta": ' + json.dumps(meta, indent=1) + ',\n"rows": [\n'
            + ",\n".join(lines) + "\n]}\n")


@dataclass(frozen=True)
class Column:
    """One table column: dict key, header, width and format of a value."""

    key: str
    header: str
    width: int
    fmt: str = ""

    def show(self, row):
        value = row.get(self.key)
        if value is None:
            return "-".rjust(self.width)
        return format(value, self.fmt).rjust(self.width)


class Report:
    """Collect rows, print each as it comes (rank 0), write files at the end."""

    def __init__(self, columns, meta, *, enabled=True, stream=None):
        self.columns, self.meta, self.enabled = columns, meta, enabled
        self.stream = stream or sys.stdout
        self.rows = []

    def header(self, title):
        if not self.enabled:
            return
        self._print(f"# {title}")
        for key in ("cpu", "mpi", "ranks", "loadavg", "GLIBC_TUNABLES"):
            self._print(f"# {key}: {self.meta.get(key)}")
        self._print(" ".join(c.header.rjust(c.width) for c in self.columns))

    def add(self, row):
        self.rows.append(row)
        if self.enabled:
            self._print(" ".join(c.show(row) for c in self.columns))

    def note(self, text):
        if self.enabled:
            self._print(f"# {text}")

    def write(self, *, csv_path=None, json_path=None, markdown_path=None):
        if not self.enabled:
            return
        if csv_path:
            self._write_csv(csv_path)
        if json_path:
            with open(json_path, "w") as out:
                out.write(to_json(self.meta, self.rows))
        if markdown_path:
            with open(markdown_path, "w") as out:
                out.write(self.markdown())

    def markdown(self):
        """Return the rows as a Markdown table (the same columns as printed)."""
        lines = ["| " + " | ".join(c.header for c in self.columns) + " |",
                 "|" + "|".join("---:" for _ in self.columns) + "|"]
        for row in self.rows:
            lines.append("| " + " | ".join(c.show(row).strip() for c in self.columns) + " |")
        return "\n".join(lines) + "\n"

    def _write_csv(self, path):
        keys = list(dict.fromkeys(k for row in self.rows for k in row))
        with open(path, "w", newline="") as out:
            writer = csv.DictWriter(out, fieldnames=keys)
            writer.writeheader()
            writer.writerows(self.rows)

    def _print(self, text):
        print(text, file=self.stream, flush=True)
