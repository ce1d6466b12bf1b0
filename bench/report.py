"""The one benchmark table (Markdown, so docs can quote it as printed) and the JSON artifact."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path

COLUMNS = ["scenario", "input", "producer rows/s", "processor rows/s", "batch p50 / p95 s",
           "latency p50 / p95 s", "CPU s", "peak RSS MB", "floor"]
SHORT = {"producer": "prod", "processor": "proc", "broker": "brk", "s3": "s3", "dashboard": "dash",
         "browser": "chromium", "dtmon up (whole stack)": "stack"}


def _num(value, ratio: bool = False) -> str:
    if value is None:
        return "–"
    if ratio:
        return f"x{value:,.1f}"
    return f"{value:,.0f}"


def _pair(a, b) -> str:
    if a is None and b is None:
        return "–"
    return f"{'–' if a is None else f'{a:.2f}'} / {'–' if b is None else f'{b:.2f}'}"


def _resources(row: dict, key: str) -> str:
    parts = [f"{SHORT.get(n, n)} {u[key]:,.0f}" if key == "peak_rss_mb" else f"{SHORT.get(n, n)} {u[key]:,.1f}"
             for n, u in row.get("resources", {}).items() if u]
    return ", ".join(parts) or "–"


def _floor(row: dict) -> str:
    if not row.get("floor"):
        return ""
    verdict = {True: "MET", False: "NOT MET", None: "n/a"}[row.get("floor_met")]
    return f"{verdict} ({row['floor']})"


def cells(row: dict) -> list[str]:
    """The table cells of one row."""
    if row.get("error"):
        return [row["scenario"], row.get("input", ""), "ERROR", row["error"][:120], "", "", "", "", ""]
    ratio = bool(row.get("is_ratio"))
    batch = (f"x{row['batch_p50_s']:.1f} (p50)" if ratio and row["batch_p50_s"] else "–") if ratio else \
        _pair(row["batch_p50_s"], row["batch_p95_s"])
    return [
        row["scenario"], row["input"], _num(row["producer_rows_s"], ratio), _num(row["processor_rows_s"], ratio),
        batch, _pair(row["latency_p50_s"], row["latency_p95_s"]), _resources(row, "cpu_s"),
        _resources(row, "peak_rss_mb"), _floor(row),
    ]


def markdown_table(rows: list[dict]) -> str:
    """The table as GitHub Markdown."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in cells(r)) + " |" for r in rows]
    return "\n".join(lines)


def notes(rows: list[dict]) -> str:
    """One numbered note per row (what the columns do not hold)."""
    return "\n".join(f"{i}. {r['scenario']}: {r.get('notes') or r.get('error', '')}" for i, r in enumerate(rows, 1))


def machine() -> dict:
    """What the numbers were measured on."""
    load = os.getloadavg()
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                                check=False).stdout.strip()
    except OSError:
        commit = ""
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "loadavg_at_end": [round(x, 2) for x in load], "git_head": commit}


def write_json(path: Path, rows: list[dict], command: str, started: float, options: dict) -> None:
    """``artifacts/bench-*.json``: command, machine, options and every row with its details."""
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"synthetic_input": True, "command": command, "started": started, "finished": time.time(),
           "machine": machine(), "options": options, "columns": COLUMNS, "rows": rows,
           "table_markdown": markdown_table(rows)}
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
