"""Tracing is opt-in: without it, the handler is untouched and aws_xray_sdk is never imported."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from eks_prefetch import tracing

ROOT = Path(__file__).resolve().parents[2]


def _handler(event, context):
    return {"ok": True}


def test_disabled_leaves_the_handler_as_it_is(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "true")
    assert tracing.capture_lambda_handler(_handler) is _handler


def test_enabled_wraps_the_handler_with_the_tracer(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "false")
    wrapped = tracing.capture_lambda_handler(_handler)
    assert wrapped is not _handler
    assert wrapped.__wrapped__ is _handler


@pytest.mark.parametrize(("disabled", "imported"), [("true", False), ("false", True)])
def test_xray_sdk_is_imported_only_when_tracing(disabled: str, imported: bool):
    code = (
        "import importlib.util, sys\n"
        "spec = importlib.util.spec_from_file_location('app', 'functions/ecr_push/app.py')\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "print('aws_xray_sdk.core' in sys.modules)\n"
    )
    env = {
        **{key: value for key, value in os.environ.items() if not key.startswith("POWERTOOLS_")},
        "POWERTOOLS_TRACE_DISABLED": disabled,
        "AWS_LAMBDA_FUNCTION_NAME": "ecr-push",
        "AWS_REGION": "us-east-1",
        "PYTHONPATH": str(ROOT / "layers" / "prefetch"),
    }
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == str(imported)
