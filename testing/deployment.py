"""A deployment of the stack on moto (testing/environment.py): its tables, its handlers and a Lambda context."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3

from eks_prefetch import aws, settings
from testing.environment import ACCOUNT, DEPLOYMENT_ENV, REGION, STATUS_TABLE, TABLE, emulated_aws

ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def mocked_aws() -> Iterator[None]:
    """moto for every AWS call, with the idempotency table the template defines, and fresh cached clients."""
    with emulated_aws():
        aws.reset_clients()
        boto3.client("dynamodb").create_table(
            TableName=TABLE,
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        try:
            yield
        finally:
            aws.reset_clients()


@contextlib.contextmanager
def deployment(**overrides: str) -> Iterator[None]:
    """A deployment's environment and moto-backed AWS with the idempotency table, like the tests' aws_mock fixture,
    as a context manager for the benchmark too. The environment is restored afterwards."""
    saved = dict(os.environ)
    os.environ.update({**DEPLOYMENT_ENV, **overrides})
    settings.load.cache_clear()
    try:
        with mocked_aws():
            yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
        settings.load.cache_clear()


def create_status_table() -> None:
    """The status table as template.yaml defines it (pk/sk, TTL on expires_at)."""
    dynamodb = boto3.client("dynamodb")
    dynamodb.create_table(
        TableName=STATUS_TABLE,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    dynamodb.update_time_to_live(
        TableName=STATUS_TABLE, TimeToLiveSpecification={"Enabled": True, "AttributeName": "expires_at"}
    )


def idempotency_records() -> list[dict[str, Any]]:
    """The Powertools idempotency records in the table, without sending's attempt counters and the new-node path's
    schedule (prefetch/pacing.py)."""
    items = boto3.client("dynamodb").scan(TableName=TABLE)["Items"]
    return [item for item in items if not item["id"]["S"].startswith(("send-attempt#", "pacing#"))]


def send_attempts() -> dict[str, int]:
    """Sending's attempt counter per event marker, as the table holds them."""
    items = boto3.client("dynamodb").scan(TableName=TABLE)["Items"]
    prefix = "send-attempt#"
    return {
        item["id"]["S"].removeprefix(prefix): int(item["attempts"]["N"])
        for item in items
        if item["id"]["S"].startswith(prefix)
    }


def load_handler(function: str) -> ModuleType:
    """Import functions/<function>/app.py under a unique module name (every function's module is called app)."""
    name = f"handler_{function}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "functions" / function / "app.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class FakeLambdaContext:
    function_name = "test-function"
    memory_limit_in_mb = 256
    invoked_function_arn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:test-function"
    aws_request_id = "5e2c1d57-0000-4000-8000-000000000000"

    @staticmethod
    def get_remaining_time_in_millis() -> int:
        return 60_000
