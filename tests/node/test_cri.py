"""What kubelet sees after a prefetch: containerd's CRI asked as kubelet asks it (ImageStatus by the pod's reference,
ListImages, PullImage), on every containerd release of NODE_RELEASES. A pod naming the pushed tag must find its image
present and pinned, and kubelet's own pull of it must download no blob."""

from __future__ import annotations

import platform
import time
from pathlib import Path

import pytest

from harness.cri import CriImage
from harness.node import run_document
from tests.node.conftest import Node

pytestmark = pytest.mark.node

ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


def prefetch(node: Node, workdir: Path, lock_env: dict, *images: str, **params: str) -> list[dict]:
    result = run_document(workdir, node.containerd, {"images": ",".join(images), **params}, extra_env=lock_env)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.images


def status(node: Node, ref: str, pinned: bool | None = None) -> CriImage | None:
    """ImageStatus(ref), once the CRI has caught up with containerd's events (it learns of ctr's changes by them)."""
    deadline = time.monotonic() + 5
    while True:
        found = node.cri.image_status(ref)
        settled = found is not None and (pinned is None or found.pinned is pinned)
        if settled or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def tagged(image) -> str:
    return f"{image.by_tag}@{image.digest}"


def test_by_digest_present_pinned_for_this_platform(node: Node, workdir: Path, lock_env: dict) -> None:
    image = node.images["app-v1"]
    prefetch(node, workdir, lock_env, image.by_digest)
    seen = status(node, image.by_digest, pinned=True)
    assert seen is not None
    assert seen.pinned is True
    assert seen.platform == f"linux/{ARCH}"
    assert image.by_digest in seen.repo_digests
    listed = [entry for entry in node.cri.list_images() if entry["id"] == seen.id]
    assert len(listed) == 1 and listed[0].get("pinned") is True
    # Sent by digest alone, the node has no tag name: kubelet would go to the registry for a pod naming the tag.
    assert status(node, image.by_tag) is None


def test_the_pods_tag_is_present_and_pinned(node: Node, workdir: Path, lock_env: dict) -> None:
    image = node.images["app-v1"]
    (record,) = prefetch(node, workdir, lock_env, tagged(image))
    assert (record["image"], record["status"], record["digest"]) == (tagged(image), "pulled", image.digest)
    seen = status(node, image.by_tag, pinned=True)
    assert seen is not None and seen.pinned is True
    assert image.by_tag in seen.repo_tags
    assert image.by_digest in seen.repo_digests
    labels = node.containerd.images()[image.by_tag]["labels"]
    assert labels.get("io.cri-containerd.pinned") == "pinned"

    # Again: cached, still named and pinned.
    (again,) = prefetch(node, workdir, lock_env, tagged(image))
    assert again["status"] == "cached"
    assert status(node, image.by_tag, pinned=True).pinned is True


def test_kubelets_pull_of_the_tag_downloads_no_blob(node: Node, workdir: Path, lock_env: dict) -> None:
    image = node.images["app-v2"]
    prefetch(node, workdir, lock_env, tagged(image))
    before = node.registry.blob_gets(image.repo)
    image_id = node.cri.pull_image(image.by_tag)
    assert image_id == status(node, image.by_tag).id
    assert node.registry.blob_gets(image.repo) == before, "kubelet's pull downloaded blobs the prefetch had fetched"


def test_a_moved_tag_moves_the_name_never_back(node: Node, workdir: Path, lock_env: dict) -> None:
    old = node.images["app-v3"]
    prefetch(node, workdir, lock_env, tagged(old))
    new = node.push_new(f"app-v3-moved-{node.release}", "team/app", "v3")
    try:
        prefetch(node, workdir, lock_env, tagged(new))
        seen = status(node, new.by_tag, pinned=True)
        assert seen is not None and new.by_digest in seen.repo_digests
        assert node.containerd.images()[new.by_tag]["digest"] == new.digest
        # The old image keeps its digest name, and loses the tag.
        old_seen = status(node, old.by_digest)
        assert old_seen is not None and new.by_tag not in old_seen.repo_tags

        # The older image's command arriving late does not move the tag back.
        (late,) = prefetch(node, workdir, lock_env, tagged(old))
        assert late["status"] == "cached"
        assert "not moved" in late.get("warning", "")
        assert node.containerd.images()[new.by_tag]["digest"] == new.digest
        assert new.by_tag in status(node, new.by_digest).repo_tags
    finally:
        node.registry.push(node.layout, "app-v3", "team/app", "v3")
        node.images["app-v3"] = old
        node.images.pop(f"app-v3-moved-{node.release}")


def test_an_unpinned_old_version_is_no_longer_pinned(node: Node, workdir: Path, lock_env: dict) -> None:
    versions = [node.images[name] for name in ("app-v0", "app-v1", "app-v2")]
    for image in versions:
        prefetch(node, workdir / image.tag, lock_env, f"{image.by_digest}", keepPinned="2")
    oldest = status(node, versions[0].by_digest, pinned=False)
    assert oldest is not None and oldest.pinned is False
    for image in versions[1:]:
        assert status(node, image.by_digest, pinned=True).pinned is True


def test_an_unpinned_old_tagged_version_loses_the_pin_of_every_name(node: Node, workdir: Path, lock_env: dict) -> None:
    """The CRI reports an image pinned while any of its names is: retention unpins the tag name too."""
    old = node.images["tool"]
    prefetch(node, workdir / "old", lock_env, tagged(old), keepPinned="1")
    new = node.push_new(f"tool-next-{node.release}", "tools/tool", "1.0")
    try:
        prefetch(node, workdir / "new", lock_env, tagged(new), keepPinned="1")
        assert status(node, old.by_digest, pinned=False).pinned is False
        assert status(node, new.by_tag, pinned=True).pinned is True
    finally:
        node.registry.push(node.layout, "tool", "tools/tool", "1.0")
        node.images["tool"] = old
        node.images.pop(f"tool-next-{node.release}")
