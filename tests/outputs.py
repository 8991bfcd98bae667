"""Register outputs as runs of the same inputs must reproduce them: everything but wall-clock
times (poses.csv's ``refine_seconds`` column, qc.json's refinement ``seconds_per_frame``)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

TIMING_COLUMNS = ("refine_seconds",)


def reproducible_text(path) -> str:
    """The file's text without its wall-clock fields (poses.csv, qc.json; other files as they are)."""
    path = Path(path)
    text = path.read_text()
    if path.name == "poses.csv":
        rows = list(csv.reader(io.StringIO(text)))
        keep = [i for i, name in enumerate(rows[0]) if name not in TIMING_COLUMNS]
        return "\n".join(",".join(row[i] for i in keep) for row in rows)
    if path.name == "qc.json":
        report = json.loads(text)
        if report.get("refined"):
            report["refined"].pop("seconds_per_frame", None)
        return json.dumps(report, sort_keys=True)
    return text
