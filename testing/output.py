"""The node's output lines as the document's script prints them, and the metrics the functions print as EMF."""

from __future__ import annotations

import json
from typing import Any


def image_line(reference: str, status: str, digest: str | None = None, **extra: Any) -> str:
    record = {"image": reference, "status": status, "seconds": extra.pop("seconds", 1.5)}
    if digest:
        record["digest"] = digest
    record.update(extra)
    return json.dumps(record)


def summary_line(**counts: Any) -> str:
    return json.dumps(
        {
            "summary": True,
            "images": sum(counts.get(k, 0) for k in ("pulled", "cached", "skipped", "failed")),
            "disk_used_percent": 40,
            "seconds": 3.2,
            **counts,
        }
    )


def emf_documents(stdout: str) -> list[dict[str, Any]]:
    """The CloudWatch EMF documents among the printed lines (log lines are JSON too, without "_aws")."""
    documents = []
    for line in stdout.splitlines():
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict) and "_aws" in value:
            documents.append(value)
    return documents


def emitted(stdout: str) -> list[tuple[str, frozenset[tuple[str, str]], float]]:
    """(metric, {(dimension, value)}, value) for every value of every metric printed as EMF."""
    out = []
    for document in emf_documents(stdout):
        (directive,) = document["_aws"]["CloudWatchMetrics"]
        (dimension_names,) = directive["Dimensions"]
        dimensions = frozenset((name, document[name]) for name in dimension_names)
        for metric in directive["Metrics"]:
            values = document[metric["Name"]]
            for value in values if isinstance(values, list) else [values]:
                out.append((metric["Name"], dimensions, value))
    return out


def total(stdout: str, metric: str, **dimensions: str) -> float:
    wanted = frozenset(dimensions.items())
    return sum(value for name, dims, value in emitted(stdout) if name == metric and dims == wanted)


def values(stdout: str, metric: str, **dimensions: str) -> list[float]:
    wanted = frozenset(dimensions.items())
    return [value for name, dims, value in emitted(stdout) if name == metric and dims == wanted]
