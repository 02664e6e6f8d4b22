"""Session fixtures for the node tests: a real containerd per release (CRI on), a plain registry, a registry with
htpasswd auth, and a few small images pushed to them. Every test starts with an empty k8s.io namespace.

Every node test runs once per containerd release in NODE_RELEASES: 1.7 (AL2023 AMIs until 2025) and 2.x (current
ones), fetched from Debian trixie and sid into .build/ by scripts/containerd-releases.sh (run here if missing).
NODE_TEST_CONTAINERD=system,1.7,2.x (any of them) chooses others; "system" is Debian 12's 1.6.

Without their prerequisites (root, the binaries) the node tests fail, so that a green run means they ran. To run
without them knowingly, set SKIP_NODE_TESTS=1: they are skipped, and the end of the run says which and why."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.cri import Cri
from harness.node import Containerd, Registry, build_image, fetch_releases, missing_prerequisites

AUTH = ("prefetch", "s3cret-pass")
SKIP_NODE_TESTS = "SKIP_NODE_TESTS"
NODE_RELEASES = tuple(os.environ.get("NODE_TEST_CONTAINERD", "1.7,2.x").split(","))


def _opted_out() -> bool:
    return os.environ.get(SKIP_NODE_TESTS) == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    needing_a_node = [item for item in items if "node" in getattr(item, "fixturenames", ())]
    if needing_a_node and os.geteuid() == 0 and shutil.which("bash"):
        fetch_releases()
    reason = missing_prerequisites(NODE_RELEASES) if needing_a_node else None
    if reason is None or not _opted_out():
        return
    # The root conftest's terminal summary names each of them loudly (under xdist too, where workers collect).
    for item in needing_a_node:
        item.add_marker(pytest.mark.skip(reason=f"{SKIP_NODE_TESTS}=1: {reason}"))


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
class Registries:
    base: Path
    registry: Registry
    auth_registry: Registry
    images: dict[str, Image]
    layout: Path


@dataclass
class Node:
    base: Path
    containerd: Containerd
    registry: Registry
    auth_registry: Registry
    images: dict[str, Image]
    layout: Path
    cri: Cri

    @property
    def release(self) -> str:
        return self.containerd.release

    def push_new(self, name: str, repo: str, tag: str, layers_mb: list[float] | None = None) -> Image:
        build_image(self.layout, name, layers_mb, seed=name)
        image = Image(repo, tag, self.registry.push(self.layout, name, repo, tag), self.registry.host)
        self.images[name] = image
        return image


@pytest.fixture(scope="session")
def registries(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registries]:
    """The registries and their images, shared by every release's node."""
    reason = missing_prerequisites(NODE_RELEASES)
    if reason:
        pytest.fail(f"{reason}. To run without the node tests knowingly, set {SKIP_NODE_TESTS}=1.", pytrace=False)
    base = tmp_path_factory.mktemp("registries")
    registry = Registry(base / "registry")
    auth_registry = Registry(base / "registry-auth", auth=AUTH)
    try:
        registry.start()
        auth_registry.start()
        layout = base / "layout"
        shared = Registries(base, registry, auth_registry, {}, layout)
        for version in ("v0", "v1", "v2", "v3"):
            build_image(layout, f"app-{version}", seed=f"app-{version}")
            shared.images[f"app-{version}"] = Image(
                "team/app", version, registry.push(layout, f"app-{version}", "team/app", version), registry.host
            )
        build_image(layout, "tool", seed="tool")
        shared.images["tool"] = Image(
            "tools/tool", "1.0", registry.push(layout, "tool", "tools/tool", "1.0"), registry.host
        )
        build_image(layout, "secret", seed="secret")
        shared.images["secret"] = Image(
            "private/app", "v1", auth_registry.push(layout, "secret", "private/app", "v1"), auth_registry.host
        )
        yield shared
    finally:
        auth_registry.stop()
        registry.stop()


@pytest.fixture(scope="session", params=NODE_RELEASES, ids=lambda release: f"containerd-{release}")
def node(request: pytest.FixtureRequest, registries: Registries) -> Iterator[Node]:
    containerd = Containerd(registries.base / f"containerd-{request.param}", release=request.param)
    try:
        containerd.start()
        with Cri(containerd.address) as cri:
            # Its own copy of the images: a test's push_new (a moved tag) must not change what another release sees.
            yield Node(
                registries.base,
                containerd,
                registries.registry,
                registries.auth_registry,
                dict(registries.images),
                registries.layout,
                cri,
            )
    finally:
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
