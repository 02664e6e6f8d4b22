"""End to end: the stack emulated from template.yaml (harness.world), real handlers, the Run Command agent, and
real containerd nodes pulling from a registry on 127.0.0.1. Needs root and the Debian packages (make system-deps):
without them these tests fail, unless SKIP_NODE_TESTS=1 says to skip them."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from harness.node import missing_prerequisites
from harness.world import World

# Backoff compressed to seconds, tags present from launch: the scenarios run in seconds, with the real code paths.
FAST = {
    "ClusterName": "e2e",
    "RepositoryNames": "ml/trainer",
    "NodeTagGraceSeconds": "0",
    "NodeLaunchRetryBaseSeconds": "1",
    "NodeLaunchRetryMaxSeconds": "1",
}


def require_real_nodes() -> None:
    reason = missing_prerequisites()
    if reason is None:
        return
    if os.environ.get("SKIP_NODE_TESTS") == "1":
        pytest.skip(f"SKIP_NODE_TESTS=1: {reason}")
    pytest.fail(
        f"end-to-end tests need real nodes: {reason}. Run as root after `make system-deps`, "
        "or set SKIP_NODE_TESTS=1 to skip them.",
        pytrace=False,
    )


@pytest.fixture
def make_world() -> Iterator[Callable[..., World]]:
    """World(parameters) on real nodes, started; every one is closed (its processes stopped) after the test.
    Each in its own short /tmp directory: containerd's socket paths must stay under 104 characters."""
    require_real_nodes()
    worlds: list[World] = []

    def make(**overrides: str) -> World:
        world = World({**FAST, **overrides}, real_nodes=True)
        worlds.append(world)
        return world.start()

    yield make
    for world in worlds:
        world.close()
