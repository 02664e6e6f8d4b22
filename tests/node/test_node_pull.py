"""The prefetch pulls as kubelet's pull (the CRI's PullImage) would, as the node's own containerd config says: into the
CRI's snapshotter, through the node's registry hosts (certs.d mirrors), leaving no more on disk than the CRI's
discard setting would; and faster, with more connections and a big layer fetched as parallel byte ranges.

Every node here is configured as EKS configures it (harness.node.Containerd: discard_unpacked_layers, config_path
/etc/containerd/certs.d:/etc/docker/certs.d), and the script runs in the node's mount namespace, where it finds that
config and certs.d at their node paths. Assertions read containerd's own state and the registries' request logs."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from eks_prefetch import node_contract
from harness.cri import Cri
from harness.node import Containerd, Registry, Run, build_image, run_document
from harness.proxy import RegistryProxy
from tests.node.conftest import Image, Node
from tests.node.test_document import assert_well_formed, unreachable_env

pytestmark = pytest.mark.node

MIB = 1 << 20
CHUNK = node_contract.RANGE_CHUNK_BYTES


def prefetch(containerd: Containerd, workdir: Path, lock_env: dict, *images: str, **params: str) -> Run:
    result = run_document(workdir, containerd, {"images": ",".join(images), **params}, extra_env=lock_env)
    assert_well_formed(result)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def layer_digests(registry: Registry, image: Image) -> list[tuple[str, int]]:
    """(digest, size) of the image's layers, from its manifest in the registry's storage."""
    blob = registry.base / "data/docker/registry/v2/blobs/sha256" / image.digest[7:9] / image.digest[7:] / "data"
    manifest = json.loads(blob.read_text())
    return [(layer["digest"], layer["size"]) for layer in manifest["layers"]]


@pytest.fixture
def configured(request: pytest.FixtureRequest, node: Node, tmp_path: Path) -> Iterator[Containerd]:
    """A node of its own, of the session node's release, with the CRI settings the test's parameter gives."""
    containerd = Containerd(tmp_path / "configured", release=node.release, **request.param)
    containerd.start()
    try:
        yield containerd
    finally:
        containerd.stop()


@pytest.fixture(scope="module")
def layered(registries) -> Image:
    """Three layers of a few MiB each: small enough for a test, more than kubelet's compressed copy would keep."""
    build_image(registries.layout, "layered", [3, 2, 2], seed="layered")
    digest = registries.registry.push(registries.layout, "layered", "team/layered", "v1")
    return Image("team/layered", "v1", digest, registries.registry.host)


@pytest.fixture(scope="module")
def big(registries) -> Image:
    """One layer of 4 range chunks (and a tiny one), most of the image: fetched as byte ranges."""
    build_image(registries.layout, "biglayer", [4 * CHUNK / MIB], seed="biglayer")
    digest = registries.registry.push(registries.layout, "biglayer", "team/biglayer", "v1")
    return Image("team/biglayer", "v1", digest, registries.registry.host)


# --- the CRI's discard setting -------------------------------------------------------------------------------------


def test_discard_leaves_what_kubelets_pull_leaves(node: Node, workdir: Path, lock_env: dict, layered: Image) -> None:
    """With discard_unpacked_layers (EKS's setting), kubelet's pull keeps the unpacked layers only: so does the
    prefetch, within 5% of the CRI's bytes on disk, and no layer blob stays in the content store."""
    containerd = node.containerd
    before = containerd.disk_bytes()
    node.cri.pull_image(layered.by_digest)
    kubelet = containerd.disk_bytes() - before
    containerd.remove_all_images()

    before = containerd.disk_bytes()
    prefetch(containerd, workdir, lock_env, layered.by_digest)
    ours = containerd.disk_bytes() - before

    layers = {digest for digest, _size in layer_digests(node.registry, layered)}
    assert not layers & set(containerd.content()), "a layer blob the CRI would have discarded is still there"
    assert ours <= kubelet * 1.05, (ours, kubelet)
    # Nothing of the prefetch's own is left holding blobs (its byte-range fetch protects them while it runs).
    assert not [labels for labels in containerd.content().values() if "containerd.io/gc.root" in labels]


@pytest.mark.parametrize("configured", [{"discard_unpacked_layers": False}], indirect=True, ids=["discard-off"])
def test_without_discard_the_blobs_stay_as_the_cris_would(
    configured: Containerd, workdir: Path, lock_env: dict, layered: Image, registries
) -> None:
    prefetch(configured, workdir, lock_env, layered.by_digest)
    layers = {digest for digest, _size in layer_digests(registries.registry, layered)}
    configured.collect_garbage()
    assert layers <= set(configured.content())


# --- the CRI's snapshotter -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("configured", [{"snapshotter": "native"}], indirect=True, ids=["native"])
def test_the_image_is_unpacked_into_the_cris_snapshotter(
    configured: Containerd, workdir: Path, lock_env: dict, layered: Image, registries
) -> None:
    """The CRI's snapshotter is native here: the prefetch unpacks there, never into overlayfs, and kubelet's pull then
    downloads nothing and unpacks nothing again."""
    prefetch(configured, workdir, lock_env, layered.by_digest)
    unpacked = configured.snapshots("native")
    assert unpacked, "nothing unpacked into the CRI's snapshotter"
    assert configured.snapshots("overlayfs") == set()

    before = registries.registry.blob_gets(layered.repo)
    with Cri(configured.address) as cri:
        # kubelet's view of the image filesystem (ImageFsInfo, whose bytes the CRI refreshes every 10 s): the CRI's
        # snapshotter, where the image was unpacked.
        (filesystem,) = cri.image_filesystems()
        assert filesystem.snapshotter == "native"
        cri.pull_image(layered.by_digest)
    assert registries.registry.blob_gets(layered.repo) == before
    assert configured.snapshots("native") == unpacked


# --- the node's registry hosts ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mirror(registries, tmp_path_factory: pytest.TempPathFactory, layered: Image) -> Iterator[Registry]:
    """A second registry holding the same image (a pull-through cache, Spegel, ...)."""
    registry = Registry(tmp_path_factory.mktemp("mirror"))
    registry.start()
    try:
        registry.push(registries.layout, "layered", layered.repo, layered.tag)
        yield registry
    finally:
        registry.stop()


@pytest.mark.parametrize("root", ["/etc/containerd", "/etc/docker"])
def test_a_mirror_in_certs_d_serves_every_blob(
    node: Node, workdir: Path, lock_env: dict, layered: Image, mirror: Registry, root: str
) -> None:
    """certs.d names a mirror for the registry (in either root of EKS's config_path): the prefetch, like kubelet's
    pull, fetches every blob from the mirror and none from the origin."""
    hosts = node.containerd.hosts(
        layered.host,
        f'server = "http://{layered.host}"\n[host."http://{mirror.host}"]\n  capabilities = ["pull", "resolve"]\n',
        root=root,
    )
    try:
        origin_before, mirror_before = node.registry.blob_gets(layered.repo), mirror.blob_gets(layered.repo)
        (record,) = prefetch(node.containerd, workdir, lock_env, layered.by_digest).images
        assert record["status"] == "pulled"
        assert node.registry.blob_gets(layered.repo) == origin_before, "the origin served blobs"
        assert mirror.blob_gets(layered.repo) > mirror_before
    finally:
        shutil.rmtree(hosts.parent)  # an empty directory would still be the host's (containerd's lookup)


# --- faster than kubelet's pull -------------------------------------------------------------------------------------


def test_a_big_layer_is_fetched_as_parallel_byte_ranges(
    node: Node, workdir: Path, lock_env: dict, big: Image, registries
) -> None:
    """A layer of 4 chunks is fetched as 4 byte ranges on 4 connections at once (at most the `connections` asked
    for), verified by digest, then unpacked: the image is whole and kubelet's pull downloads nothing."""
    proxy = RegistryProxy(node.registry.host, bytes_per_second=8 * MIB)
    try:
        ref = f"{proxy.host}/{big.repo}@{big.digest}"
        (record,) = prefetch(node.containerd, workdir, lock_env, ref, connections="4").images
        assert (record["status"], "warning" in record) == ("pulled", False), record
        (largest, size) = max(layer_digests(node.registry, big), key=lambda layer: layer[1])
        ranges = [head for head in proxy.blob_requests(largest) if "\nRange: bytes=" in head.replace("\r", "")]
        assert len(ranges) == math.ceil(size / CHUNK), proxy.blob_requests(largest)
        assert 3 <= proxy.peak_connections <= 4

        proxy.reset()
        node.cri.pull_image(ref)
        assert proxy.blob_requests(largest) == []
    finally:
        proxy.close()


def test_a_registry_that_ignores_ranges_is_fetched_whole_and_said_so(
    node: Node, workdir: Path, lock_env: dict, big: Image
) -> None:
    proxy = RegistryProxy(node.registry.host, ignore_ranges=True)
    try:
        ref = f"{proxy.host}/{big.repo}@{big.digest}"
        (record,) = prefetch(node.containerd, workdir, lock_env, ref).images
        assert record["status"] == "pulled"
        assert "byte ranges" in record.get("warning", ""), record
        assert ref in node.containerd.images()
    finally:
        proxy.close()


def test_connections_are_bounded(node: Node, workdir: Path, lock_env: dict, big: Image) -> None:
    """connections=1: the layers come one at a time, on one connection (ctr's own fetch on 1.7; on 2.x, whose ctr sets
    no limit, this script's); containerd's resolver adds the one it opens for the manifest."""
    proxy = RegistryProxy(node.registry.host)
    try:
        ref = f"{proxy.host}/{big.repo}@{big.digest}"
        (record,) = prefetch(node.containerd, workdir, lock_env, ref, connections="1").images
        assert record["status"] == "pulled"
        assert proxy.peak_connections <= 2
    finally:
        proxy.close()


ECR_HOST = "123456789012.dkr.ecr.us-east-1.amazonaws.com"
FAKE_TOKEN = "eyJwYXlsb2FkIjoiTUlSUk9SLVRFU1QtVE9LRU4ifQ"  # noqa: S105 - a fake


def test_an_ecr_registry_with_a_mirror_is_pulled_through_the_mirror_without_its_token(
    node: Node, workdir: Path, lock_env: dict, layered: Image, mirror: Registry, tmp_path: Path
) -> None:
    """certs.d names a mirror for an ECR registry: the prefetch logs in to ECR (its credentials go to ECR only) and
    pulls every blob from the mirror, as kubelet would; the mirror never sees the ECR token, and ECR (unreachable
    here) is never needed."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "aws").write_text(f"#!/bin/sh\necho {FAKE_TOKEN}\n")
    (bin_dir / "aws").chmod(0o755)
    recorder = RegistryProxy(mirror.host)
    hosts = node.containerd.hosts(
        ECR_HOST,
        f'server = "https://{ECR_HOST}"\n[host."http://{recorder.host}"]\n  capabilities = ["pull", "resolve"]\n',
    )
    try:
        env = {
            **unreachable_env(lock_env),
            "PATH": f"{bin_dir}:{node.containerd.env().get('PATH', os.environ['PATH'])}",
        }
        ref = f"{ECR_HOST}/{layered.repo}@{layered.digest}"
        (record,) = prefetch(node.containerd, workdir, env, ref).images
        assert record["status"] == "pulled", record
        blobs = [head for head in recorder.requests if "/blobs/" in head]
        assert blobs, "the mirror served no blob"
        assert all(f"ns={ECR_HOST}" in head.split("\r\n")[0] for head in blobs)
        assert not [head for head in recorder.requests if "authorization:" in head.lower()]
    finally:
        shutil.rmtree(hosts.parent)  # an empty directory would still be the host's (containerd's lookup)
        recorder.close()


@pytest.fixture(scope="module")
def many_layers(registries) -> Image:
    """Six small layers (and umoci's tiny one): more than a few connections' worth, none worth byte ranges."""
    build_image(registries.layout, "manylayers", [1, 1, 1, 1, 1, 1], seed="manylayers")
    digest = registries.registry.push(registries.layout, "manylayers", "team/manylayers", "v1")
    return Image("team/manylayers", "v1", digest, registries.registry.host)


def test_many_layers_stay_within_the_connections_asked_for(
    node: Node, workdir: Path, lock_env: dict, many_layers: Image
) -> None:
    """7 layers on connections=3: containerd fetches them 3 at a time (ctr's own limit on 1.7; 2.x's ctr sets none,
    so its transfer service, limited to 3, pulls), plus the connection its resolver opens for the manifest."""
    proxy = RegistryProxy(node.registry.host)
    try:
        ref = f"{proxy.host}/{many_layers.repo}@{many_layers.digest}"
        (record,) = prefetch(node.containerd, workdir, lock_env, ref, connections="3").images
        assert record["status"] == "pulled"
        assert "warning" not in record, record
        assert proxy.peak_connections <= 3 + 1
        assert ref in node.containerd.images()
        assert node.containerd.snapshots()
    finally:
        proxy.close()


def test_without_a_parallel_curl_containerd_fetches_and_the_record_says_so(
    node: Node, workdir: Path, lock_env: dict, big: Image, tmp_path: Path
) -> None:
    """curl older than 7.66 has no --parallel: the big layer is left to containerd, the pull still succeeds, and the
    record says why its layers were not fetched in parallel."""
    bin_dir = tmp_path / "old-curl"
    bin_dir.mkdir()
    (bin_dir / "curl").write_text("#!/bin/sh\necho 'curl 7.29.0 (x86_64-redhat-linux-gnu)'\nexit 0\n")
    (bin_dir / "curl").chmod(0o755)
    env = {**lock_env, "PATH": f"{bin_dir}:{node.containerd.env().get('PATH', os.environ['PATH'])}"}
    (record,) = prefetch(node.containerd, workdir, env, big.by_digest).images
    assert record["status"] == "pulled"
    assert record["warning"] == "layers not fetched in parallel: curl 7.29 has no --parallel (7.66)"
    assert big.by_digest in node.containerd.images()


def test_a_pull_cut_midway_is_pulled_whole_by_the_next_run(
    node: Node, workdir: Path, lock_env: dict, big: Image
) -> None:
    """The registry goes away 1 MB into the layers: the run fails that image (unreachable), with its summary. The
    part written stays in containerd's content store (as its own fetch leaves one): the next run leaves that layer to
    containerd, which resumes it, and pulls the image whole."""
    cut = RegistryProxy(node.registry.host)
    cut.cut(1 << 20)
    try:
        failed = run_document(
            workdir / "cut", node.containerd, {"images": f"{cut.host}/{big.repo}@{big.digest}"}, extra_env=lock_env
        )
        assert_well_formed(failed)
        assert [(r["status"], r["reason"]) for r in failed.images] == [("failed", "unreachable")], failed.stdout
    finally:
        cut.close()
    assert "layer-sha256:" in node.containerd.ctr("content", "active").stdout

    back = RegistryProxy(node.registry.host)
    try:
        ref = f"{back.host}/{big.repo}@{big.digest}"
        (record,) = prefetch(node.containerd, workdir / "back", lock_env, ref).images
        assert record["status"] == "pulled", record
        assert ref in node.containerd.images()
    finally:
        back.close()


@pytest.fixture(scope="module")
def versions(registries) -> tuple[Image, Image]:
    """v1 (two layers of 2 MiB on umoci's tiny one) and v2, v1's layers and one more: a new version on a shared base."""
    layout = registries.layout
    build_image(layout, "shared-v1", [2, 2], seed="shared-v1")
    v1 = registries.registry.push(layout, "shared-v1", "team/shared", "v1")
    subprocess.run(["umoci", "tag", "--image", f"{layout}:shared-v1", "shared-v2"], check=True, capture_output=True)
    added = layout.parent / "shared-v2-layer"
    added.write_bytes(os.urandom(1 << 20))
    subprocess.run(
        ["umoci", "insert", "--image", f"{layout}:shared-v2", str(added), "/data/v2"], check=True, capture_output=True
    )
    v2 = registries.registry.push(layout, "shared-v2", "team/shared", "v2")
    host = registries.registry.host
    return Image("team/shared", "v1", v1, host), Image("team/shared", "v2", v2, host)


def test_a_new_version_on_a_shared_base_fetches_only_its_new_layers(
    node: Node, workdir: Path, lock_env: dict, versions: tuple[Image, Image]
) -> None:
    """With discard, v1's blobs are gone once it is unpacked; v2 shares them. kubelet's pull fetches only v2's new
    layer (the CRI skips layers whose snapshots exist), and so does the prefetch on 2.x, through containerd's transfer
    service. On 1.7, ctr's fetch takes every layer whose blob is missing (node.md says so): v2 is whole either way."""
    v1, v2 = versions
    proxy = RegistryProxy(node.registry.host)
    try:
        prefetch(node.containerd, workdir / "v1", lock_env, f"{proxy.host}/{v1.repo}@{v1.digest}")
        shared = {digest for digest, _size in layer_digests(node.registry, v1)}
        assert not shared & set(node.containerd.content())
        proxy.reset()

        ref = f"{proxy.host}/{v2.repo}@{v2.digest}"
        (record,) = prefetch(node.containerd, workdir / "v2", lock_env, ref).images
        assert record["status"] == "pulled", record
        assert ref in node.containerd.images()
        new = {digest for digest, _size in layer_digests(node.registry, v2)} - shared
        assert all(proxy.blob_requests(digest) for digest in new)
        if node.release != "1.7":
            assert [digest for digest in shared if proxy.blob_requests(digest)] == []
    finally:
        proxy.close()
