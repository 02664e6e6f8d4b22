"""The uninstall's unpin document, run as the SSM agent runs it, against a real containerd: it removes this
application's pins and no one else's, and deletes no image. Assertions read containerd's own labels."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from harness.node import OUR_LABEL, PIN_LABEL, run_document
from harness.template import resource
from tests.node.conftest import Node

pytestmark = pytest.mark.node


def unpin_content() -> dict[str, Any]:
    content = resource("UnpinDocument")["Properties"]["Content"]
    # The document declares no parameters; the runner expects the key.
    return {**content, "parameters": content.get("parameters", {})}


def prefetch(node: Node, workdir: Path, lock_env: dict, images: list[str]) -> None:
    result = run_document(workdir / "prefetch", node.containerd, {"images": ",".join(images)}, extra_env=lock_env)
    assert result.returncode == 0, result.stdout + result.stderr


def test_unpin_removes_only_this_applications_pins(node: Node, workdir: Path, lock_env: dict) -> None:
    ours = [node.images["app-v1"].by_digest, node.images["app-v2"].by_digest]
    prefetch(node, workdir, lock_env, ours)
    # Someone else's pin (no label of ours), and an image nobody pinned.
    theirs = node.images["tool"].by_digest
    node.containerd.ctr("images", "pull", "--plain-http", theirs)
    node.containerd.ctr("images", "label", theirs, f"{PIN_LABEL}=pinned", "team=platform")
    unpinned_before = node.images["app-v3"].by_digest
    node.containerd.ctr("images", "pull", "--plain-http", unpinned_before)
    before = node.containerd.images()
    assert all(before[name]["labels"][PIN_LABEL] == "pinned" and OUR_LABEL in before[name]["labels"] for name in ours)

    result = run_document(workdir / "unpin", node.containerd, {}, extra_env=lock_env, content=unpin_content())

    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout) == {"summary": True, "unpinned": 2, "failed": 0}
    after = node.containerd.images()
    assert set(after) == set(before)  # no image deleted: kubelet's GC reclaims them when it needs the space
    for name in ours:
        assert PIN_LABEL not in after[name]["labels"] and OUR_LABEL not in after[name]["labels"]
    assert after[theirs]["labels"] == {PIN_LABEL: "pinned", "team": "platform"}
    assert after[unpinned_before]["labels"] == before[unpinned_before]["labels"]

    again = run_document(workdir / "again", node.containerd, {}, extra_env=lock_env, content=unpin_content())
    assert json.loads(again.stdout) == {"summary": True, "unpinned": 0, "failed": 0}  # harmless to repeat
    assert node.containerd.images()[theirs]["labels"][PIN_LABEL] == "pinned"


def test_unpin_without_ctr_says_so(node: Node, workdir: Path, lock_env: dict) -> None:
    bare = workdir / "bin"  # a PATH with the shells and nothing else
    bare.mkdir()
    for shell in ("sh", "bash"):
        (bare / shell).symlink_to(shutil.which(shell))
    env = {**lock_env, "PATH": str(bare)}
    result = run_document(workdir, node.containerd, {}, extra_env=env, content=unpin_content())

    assert result.returncode == 2
    assert json.loads(result.stdout)["error"] == "ctr not found on PATH"
