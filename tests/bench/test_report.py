"""bench.report: the Markdown table and the JSON artifact (pure)."""

from __future__ import annotations

import json

from bench.report import COLUMNS, cells, markdown_table, notes, write_json


def row(**over) -> dict:
    base = {"scenario": "pacing 1000", "input": "SYNTHETIC", "producer_rows_s": 1000.4, "processor_rows_s": None,
            "batch_p50_s": 0.5, "batch_p95_s": None, "latency_p50_s": 1.234, "latency_p95_s": 2.0,
            "resources": {"producer": {"cpu_s": 1.25, "peak_rss_mb": 120.4}, "broker": {}},
            "floor": "<= 2 %", "floor_met": True, "notes": "n"}
    return {**base, **over}


def test_cells_format_numbers_pairs_resources_and_the_floor():
    assert cells(row()) == ["pacing 1000", "SYNTHETIC", "1,000", "–", "0.50 / –", "1.23 / 2.00", "prod 1.2",
                            "prod 120", "MET (<= 2 %)"]
    assert cells(row(floor_met=False))[-1] == "NOT MET (<= 2 %)" and cells(row(floor=""))[-1] == ""
    assert cells(row(error="boom" * 50))[2:4] == ["ERROR", ("boom" * 50)[:120]]


def test_table_and_json_artifact(tmp_path):
    rows = [row(), row(scenario="a|b", notes="second")]
    table = markdown_table(rows).splitlines()
    assert table[0] == "| " + " | ".join(COLUMNS) + " |" and len(table) == 4
    assert table[3].startswith("| a/b |")  # a pipe would break the Markdown row
    assert notes(rows) == "1. pacing 1000: n\n2. a|b: second"
    path = tmp_path / "out" / "bench.json"
    write_json(path, rows, "python -m bench", 1.0, {"long": False})
    doc = json.loads(path.read_text())
    assert doc["synthetic_input"] and doc["rows"][1]["scenario"] == "a|b" and doc["table_markdown"] == markdown_table(rows)
