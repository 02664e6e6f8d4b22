"""Shared fixtures: a deployment's environment, and moto-backed AWS with fresh clients per test."""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import pytest
from botocore.retries.standard import ExponentialBackoff
from moto import mock_aws

from eks_prefetch import aws, idempotency, settings

ROOT = Path(__file__).resolve().parent.parent
REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account
CLUSTER = "ml-prod"
WATCHED = ("ml/trainer", "ml/inference")
DOCUMENT = "eks-image-prefetch-PrefetchDocument-ABC123"
TABLE = "eks-image-prefetch-idempotency"
LOG_GROUP = "/aws/ssm/eks-image-prefetch/prefetch"

DEPLOYMENT_ENV = {
    "AWS_REGION": REGION,
    "AWS_DEFAULT_REGION": REGION,
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "CLUSTER_NAME": CLUSTER,
    "REPOSITORY_NAMES": ",".join(WATCHED),
    "NODE_TAG_KEY": "eks:cluster-name",
    "NODE_TAG_VALUE": CLUSTER,
    "TAG_FILTER": "^(?!sha256-).+$",
    "REPOSITORY_NODE_SELECTORS": "",
    "DOCUMENT_NAME": DOCUMENT,
    "DOCUMENT_VERSION": "1",
    "MAX_CONCURRENCY": "100",
    "MAX_ERRORS": "25%",
    "DELIVERY_TIMEOUT_SECONDS": "600",
    "EXECUTION_TIMEOUT_SECONDS": "3600",
    "PULL_TIMEOUT_SECONDS": "1800",
    "PIN_IMAGES": "true",
    "PINNED_VERSIONS_TO_KEEP": "2",
    "MAX_DISK_USAGE_PERCENT": "80",
    "OUTPUT_LOG_GROUP": LOG_GROUP,
    "IDEMPOTENCY_TABLE": TABLE,
    "IDEMPOTENCY_TTL_SECONDS": "86400",
    "POWERTOOLS_SERVICE_NAME": "test",
    "POWERTOOLS_METRICS_NAMESPACE": "EksImagePrefetchTest",
    "POWERTOOLS_TRACE_DISABLED": "true",
    "POWERTOOLS_DEV": "false",
}


@pytest.fixture
def deployment_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for key, value in DEPLOYMENT_ENV.items():
        monkeypatch.setenv(key, value)
    settings.get_settings.cache_clear()
    yield DEPLOYMENT_ENV
    settings.get_settings.cache_clear()


@pytest.fixture
def no_retry_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    """botocore sleeps between retries; tests count the retries, not the seconds."""
    monkeypatch.setattr("botocore.endpoint.time.sleep", lambda _seconds: None)


class FakeClock:
    """Time for botocore's retry sleeps and for the invocation deadline: sleeping advances it, nothing waits."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def botocore_clock(aws_mock: None, monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """botocore's real retry path on a fake clock, with its backoff at the worst case of its jitter (the full
    exponential delay, capped at 20 s), so that the time retries take is the longest they can take."""
    clock = FakeClock()
    monkeypatch.setattr("botocore.endpoint.time.sleep", clock.sleep)
    monkeypatch.setattr(aws.clients, "_clock", clock.time)
    monkeypatch.setattr(
        ExponentialBackoff,
        "delay_amount",
        lambda self, context: min(self._base ** (context.attempt_number - 1), self._max_backoff),
    )
    return clock


@contextlib.contextmanager
def mocked_aws() -> Iterator[None]:
    """moto for every AWS call, with the idempotency table the template defines, and fresh cached clients (for the
    fixtures, and for the benchmark, which is not a test)."""
    with mock_aws():
        aws.reset_clients()
        idempotency.reset_persistence()
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
            idempotency.reset_persistence()


@pytest.fixture
def aws_mock(deployment_env: dict[str, str], no_retry_sleep: None) -> Iterator[None]:
    with mocked_aws():
        yield


@pytest.fixture
def sent(aws_mock: None) -> list[dict[str, Any]]:
    """Every SendCommand request, as the code handed it to botocore (moto drops several of its parameters)."""
    requests: list[dict[str, Any]] = []

    def capture(params: dict[str, Any], **_: Any) -> None:
        requests.append(copy.deepcopy(params))

    aws.client("ssm").meta.events.register("provide-client-params.ssm.SendCommand", capture)
    return requests


def idempotency_records() -> list[dict[str, Any]]:
    """The Powertools idempotency records in the table, without sending's attempt counters."""
    items = boto3.client("dynamodb").scan(TableName=TABLE)["Items"]
    return [item for item in items if not item["id"]["S"].startswith("send-attempt#")]


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


@pytest.fixture
def lambda_context() -> FakeLambdaContext:
    return FakeLambdaContext()
