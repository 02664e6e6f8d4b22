"""Session fixtures for the node tests: one real containerd, a plain registry, a registry with htpasswd auth, and
a few small images pushed to them. Every test starts with an empty k8s.io namespace.

Without their prerequisites (root, the binaries) the node tests fail, so that a green run means they ran. To run
without them knowingly, set SKIP_NODE_TESTS=1: they are skipped, and the end of the run says which and why."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.node import Containerd, Registry, build_image, missing_prerequisites

AUTH = ("prefetch", "s3cret-pass")
SKIP_NODE_TESTS = "SKIP_NODE_TESTS"
# (why the node tests cannot run here, the ids of the tests that need a node), when SKIP_NODE_TESTS=1 skips them.
_NOT_RUN = pytest.StashKey[tuple[str, list[str]]]()


def _opted_out() -> bool:
    return os.environ.get(SKIP_NODE_TESTS) == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    needing_a_node = [item for item in items if "node" in getattr(item, "fixturenames", ())]
    reason = missing_prerequisites() if needing_a_node else None
    if reason is None or not _opted_out():
        return
    config.stash[_NOT_RUN] = (reason, [item.nodeid for item in needing_a_node])
    for item in needing_a_node:
        item.add_marker(pytest.mark.skip(reason=f"{SKIP_NODE_TESTS}=1: {reason}"))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    if _NOT_RUN not in config.stash:
        return
    reason, nodeids = config.stash[_NOT_RUN]
    terminalreporter.write_sep("!", f"{len(nodeids)} NODE TESTS DID NOT RUN ({SKIP_NODE_TESTS}=1)", red=True, bold=True)
    terminalreporter.write_line(f"Reason: {reason}", red=True, bold=True)
    for nodeid in nodeids:
        terminalreporter.write_line(f"  not run: {nodeid}", red=True)
    terminalreporter.write_sep("!", "the node script is NOT tested by this run", red=True, bold=True)


@dataclass
class Image:
    repo: str
    tag: str
    digest: str
    host: str

    @property
    def by_digest(self) -> str:
        return f"{self.host}/{self.repo}@{self.digest}"

    @property
    def by_tag(self) -> str:
        return f"{self.host}/{self.repo}:{self.tag}"


@dataclass
class Node:
    base: Path
    containerd: Containerd
    registry: Registry
    auth_registry: Registry
    images: dict[str, Image]
    layout: Path

    def push_new(self, name: str, repo: str, tag: str, layers_mb: list[float] | None = None) -> Image:
        build_image(self.layout, name, layers_mb, seed=name)
        image = Image(repo, tag, self.registry.push(self.layout, name, repo, tag), self.registry.host)
        self.images[name] = image
        return image


@pytest.fixture(scope="session")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    reason = missing_prerequisites()
    if reason:
        pytest.fail(f"{reason}. To run without the node tests knowingly, set {SKIP_NODE_TESTS}=1.", pytrace=False)
    base = tmp_path_factory.mktemp("node")
    containerd = Containerd(base / "containerd")
    registry = Registry(base / "registry")
    auth_registry = Registry(base / "registry-auth", auth=AUTH)
    try:
        containerd.start()
        registry.start()
        auth_registry.start()
        layout = base / "layout"
        node = Node(base, containerd, registry, auth_registry, {}, layout)
        for version in ("v0", "v1", "v2", "v3"):
            node.push_new(f"app-{version}", "team/app", version)
        node.push_new("tool", "tools/tool", "1.0")
        build_image(layout, "secret", seed="secret")
        node.images["secret"] = Image(
            "private/app", "v1", auth_registry.push(layout, "secret", "private/app", "v1"), auth_registry.host
        )
        yield node
    finally:
        auth_registry.stop()
        registry.stop()
        containerd.stop()


@pytest.fixture(autouse=True)
def empty_namespace(request: pytest.FixtureRequest) -> None:
    """Node tests start without images; other tests do not touch containerd."""
    if "node" in request.fixturenames:
        request.getfixturevalue("node").containerd.remove_all_images()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def lock_env(tmp_path: Path) -> dict[str, str]:
    """Each run takes the script's lock in the test's own directory, not the machine's /run/lock."""
    return {"PREFETCH_LOCK_FILE": str(tmp_path / "prefetch.lock")}
