"""Shared fixtures: a deployment's environment, moto-backed AWS with fresh clients per test, and the doubles of what
moto lacks. What they are made of is in the ``testing`` package, which the harness and the benchmarks share."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.retries.standard import ExponentialBackoff

from eks_prefetch import aws, settings
from testing.cloudformation import CloudFormationEndpoint
from testing.deployment import FakeLambdaContext, mocked_aws
from testing.environment import DEPLOYMENT_ENV
from testing.ssm import Agents

SKIPPED_NODE_TESTS = "SKIP_NODE_TESTS=1: "


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    message = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr or "")
    return message.removeprefix("Skipped: ")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    """A run that skipped node or end-to-end tests because SKIP_NODE_TESTS=1 says so loudly, naming each: a green run
    without them does not test the node script. From the reports, so that it holds under xdist, whose workers
    collect and skip."""
    skipped = [
        report
        for report in terminalreporter.stats.get("skipped", [])
        if _skip_reason(report).startswith(SKIPPED_NODE_TESTS)
    ]
    if not skipped:
        return
    reason = _skip_reason(skipped[0]).removeprefix(SKIPPED_NODE_TESTS)
    terminalreporter.write_sep("!", f"{len(skipped)} NODE TESTS DID NOT RUN (SKIP_NODE_TESTS=1)", red=True, bold=True)
    terminalreporter.write_line(f"Reason: {reason}", red=True, bold=True)
    for report in skipped:
        terminalreporter.write_line(f"  not run: {report.nodeid}", red=True)
    terminalreporter.write_sep("!", "the node script is NOT tested by this run", red=True, bold=True)


@pytest.fixture
def deployment_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for key, value in DEPLOYMENT_ENV.items():
        monkeypatch.setenv(key, value)
    settings.load.cache_clear()
    yield DEPLOYMENT_ENV
    settings.load.cache_clear()


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


@pytest.fixture
def endpoint() -> Iterator[CloudFormationEndpoint]:
    """A custom resource's pre-signed ResponseURL, on 127.0.0.1."""
    cfn = CloudFormationEndpoint().start()
    yield cfn
    cfn.stop()


@pytest.fixture
def lambda_context() -> FakeLambdaContext:
    return FakeLambdaContext()


@pytest.fixture
def agents(aws_mock: None) -> Agents:
    """Which nodes' SSM agents are Online (moto has no DescribeInstanceInformation): none until the test says."""
    return Agents().install()


# Tests that attach loop devices (warm volumes: the builder's, warm-booted nodes') run on one xdist worker, one at a
# time (the Makefile's --dist loadgroup): at once on two workers, a mount failed now and then with XFS's "duplicate
# UUID" although every copy gets a UUID of its own.
LOOP_DEVICES = pytest.mark.xdist_group("loop-devices")
