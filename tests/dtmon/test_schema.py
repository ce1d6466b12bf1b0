"""The results message schema (dtmon.schema) and its committed JSON Schema file."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema

from dtmon.schema import RESULTS_VERSION

REPO = Path(__file__).resolve().parents[2]


def test_schema_file_is_a_json_schema_of_the_results_message():
    schema = json.loads((REPO / "schemas" / f"results-v{RESULTS_VERSION}.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$id"] == f"dtmon.results/{schema['properties']['version']['default']}"
    assert {"schema", "batch_id", "hits", "chambers"} <= set(schema["required"]) | set(schema["properties"])
