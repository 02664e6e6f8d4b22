"""Fixtures of the status and self-repair tests: the status table, the doubles for moto's SSM gaps, and two watched
repositories with their newest images."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from eks_prefetch import settings
from testing.deployment import create_status_table
from testing.ecr import at, create_repository, push_image
from testing.environment import STATUS_TABLE
from testing.ssm import Agents, FakeInvocations

TRAINER = "ml/trainer"
INFERENCE = "ml/inference"


@pytest.fixture
def status_env(aws_mock: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The status function's deployment: its table (as template.yaml defines it) and fresh resolutions."""
    monkeypatch.setenv("STATUS_TABLE", STATUS_TABLE)
    settings.load.cache_clear()
    create_status_table()
    yield
    settings.load.cache_clear()


@pytest.fixture
def fake(status_env: None) -> FakeInvocations:
    return FakeInvocations().install()


@pytest.fixture
def fleet(status_env: None, agents: Agents) -> Agents:
    """The fleet's agents, as the status function sees them (DescribeInstanceInformation by the node tag)."""
    return agents


@pytest.fixture
def images(status_env: None) -> dict[str, str]:
    """Two watched repositories; the newest of each was pushed at 12:00 (trainer) and 12:10 (inference)."""
    create_repository(TRAINER)
    create_repository(INFERENCE)
    push_image(TRAINER, "trainer-v1", tag="v1", pushed_at=at(-60))
    return {
        TRAINER: push_image(TRAINER, "trainer-v2", tag="v2", pushed_at=at(0)),
        INFERENCE: push_image(INFERENCE, "inference-v1", tag="v1", pushed_at=at(10)),
    }
