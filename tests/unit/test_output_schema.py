"""document/output.schema.json is the one written contract of what the node script prints; node_output's models
must hold the same fields and the same bounds (the node tests validate the script's real output against it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from pydantic import BaseModel

from eks_prefetch.node_output import ImageRecord, Summary

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "document" / "output.schema.json"
SCHEMA = json.loads(SCHEMA_PATH.read_text())
# What a field's bounds are made of, in JSON Schema terms (pydantic writes the same keywords).
BOUND_KEYWORDS = ("type", "enum", "const", "minimum", "maximum", "minLength", "maxLength", "pattern")


def _resolved(spec: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in spec:
        spec = SCHEMA["$defs"][spec["$ref"].removeprefix("#/$defs/")]
    return spec


def _bounds(spec: dict[str, Any]) -> dict[str, Any]:
    spec = _resolved(spec)
    # pydantic writes an optional field as anyOf [the type, null]: the script omits a field, never prints null.
    options = [option for option in spec.get("anyOf", [spec]) if option.get("type") != "null"]
    (spec,) = options
    return {keyword: spec[keyword] for keyword in BOUND_KEYWORDS if keyword in spec}


@pytest.mark.parametrize(("model", "definition"), [(ImageRecord, "image"), (Summary, "summary")])
def test_models_hold_the_schemas_fields_and_bounds(model: type[BaseModel], definition: str) -> None:
    written = SCHEMA["$defs"][definition]["properties"]
    modelled = model.model_json_schema()["properties"]

    assert set(modelled) == set(written)
    for name, spec in written.items():
        assert _bounds(modelled[name]) == _bounds(spec), name
    # What the schema requires, the model requires or defaults: never the other way round.
    assert set(model.model_json_schema().get("required", [])) <= set(SCHEMA["$defs"][definition]["required"])


def test_schema_is_valid_and_tells_records_from_summaries():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    validator = jsonschema.Draft202012Validator(SCHEMA)
    digest = "sha256:" + "ab" * 32
    good = [
        {"image": "127.0.0.1:5000/a:v1", "status": "pulled", "digest": digest, "seconds": 1.25, "bytes": 10},
        {"image": "bad ref", "status": "failed", "seconds": 0, "error": "invalid image reference"},
        {"summary": True, "images": 0, "failed": 0, "omitted": 0, "error": "ctr not found on PATH", "seconds": 0.01},
        {"summary": True, "images": 0, "failed": 0, "omitted": 0, "unsupported": "no containerd socket", "seconds": 0},
        {"summary": True, "images": 2, "pulled": 1, "cached": 0, "skipped": 0, "failed": 1, "unpinned": 0}
        | {"disk_used_percent": 42, "seconds": 3.5, "omitted": 0},
    ]
    bad = [
        {"image": "a/b:c", "status": "pulled", "seconds": -0.498},
        {"image": "a/b:c", "status": "pulled", "seconds": 1, "extra": 1},
        {
            "summary": True,
            "images": 2,
            "failed": 0,
            "omitted": 0,
            "seconds": 1,
        },  # neither error, unsupported nor counts
        {"summary": True, "images": 0, "failed": 0, "omitted": 0, "unsupported": "x" * 1025, "seconds": 0},
        {"summary": True, "images": 1, "failed": 0, "omitted": 10**400, "seconds": 1, "error": "x"},
    ]
    assert [list(validator.iter_errors(item)) for item in good] == [[]] * len(good)
    assert all(list(validator.iter_errors(item)) for item in bad)
