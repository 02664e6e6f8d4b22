"""What kubelet sees after a prefetch: containerd's CRI asked as kubelet asks it (ImageStatus by the pod's reference,
ListImages, PullImage), on every containerd release of NODE_RELEASES. A pod naming the pushed tag must find its image
present and pinned, and kubelet's own pull of it must download no blob."""

from __future__ import annotations

import platform
import subprocess
import time
from pathlib import Path

import pytest

from harness.cri import CriImage
from harness.node import build_image, run_document
from tests.node.conftest import Image, Node

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


def push_built(node: Node, name: str, repo: str, tag: str, created: str) -> Image:
    """An image whose config says it was built at ``created`` (RFC 3339, as builders write it), pushed as repo:tag."""
    build_image(node.layout, name, seed=name)
    subprocess.run(
        ["umoci", "config", "--image", f"{node.layout}:{name}", "--created", created, "--no-history"],
        check=True,
        capture_output=True,
    )
    image = Image(repo, tag, node.registry.push(node.layout, name, repo, tag), node.registry.host)
    node.images[name] = image
    return image


# Build times that cannot order two pushes: equal (reproducible builds), and the older push's written with a UTC
# offset (12:00+02:00 is 10:00Z, before the newer push's 11:00Z, but reads later as text).
CREATED = {
    "equal": ("2024-01-01T10:00:00Z", "2024-01-01T10:00:00Z"),
    "utc-offset": ("2024-01-01T12:00:00+02:00", "2024-01-01T11:00:00Z"),
    "newer-built-earlier": ("2024-01-01T11:00:00Z", "2024-01-01T09:00:00Z"),
}


@pytest.mark.parametrize("created", list(CREATED), ids=list(CREATED))
def test_a_tag_only_moves_forward_by_push_time(node: Node, workdir: Path, lock_env: dict, created: str) -> None:
    """Two pushes of one tag, whatever their images' build times say: the later push's command, arriving first,
    names the tag; the earlier push's command, arriving late, pulls its image but never moves the tag back. The
    push times come from the functions (pushedAt); the order of the commands does not matter."""
    old_created, new_created = CREATED[created]
    repo = f"team/ordered-{created}"
    old = push_built(node, f"ordered-old-{created}-{node.release}", repo, "v1", old_created)
    new = push_built(node, f"ordered-new-{created}-{node.release}", repo, "v1", new_created)

    prefetch(node, workdir / "new", lock_env, tagged(new), pushedAt="1700000002000")
    (late,) = prefetch(node, workdir / "late", lock_env, tagged(old), pushedAt="1700000001000")

    assert late["digest"] == old.digest
    assert "not moved" in late.get("warning", ""), late
    assert node.containerd.images()[new.by_tag]["digest"] == new.digest
    seen = status(node, new.by_tag)
    assert seen is not None and new.by_digest in seen.repo_digests

    # In push order, the tag moves to the later push: its build time does not hold it back.
    node.containerd.remove_all_images()
    prefetch(node, workdir / "old-first", lock_env, tagged(old), pushedAt="1700000001000")
    (moved,) = prefetch(node, workdir / "new-second", lock_env, tagged(new), pushedAt="1700000002000")
    assert "warning" not in moved, moved
    assert node.containerd.images()[new.by_tag]["digest"] == new.digest
