"""The warm boot user-data part (document/warm_boot.sh), run as root on real block devices and a real containerd.

A loop device stands in for the EBS volume: an XFS filesystem labelled as WarmPrepareDocument labels it, holding a
containerd root into which a real containerd pulled an image through the CRI, then stamped with WarmSealDocument's
own format string, unmounted, and made larger (the launch template's volume is larger than the builder's). The script
then runs with its mount point, containerd state dir, containerd binary and IMDS endpoint pointed at the test's
(its environment overrides): it must mount and grow the volume only when the stamp matches, and exit 0 saying warm or
cold on every path. `FakeImds` (harness.warm) is the double of EC2's instance metadata service (IMDSv2: token first).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.cri import Cri
from harness.node import Containerd, default_release, missing_prerequisites
from harness.template import template
from harness.warm import FakeImds, assignment, builder_script
from tests.conftest import LOOP_DEVICES
from tests.node.conftest import SKIP_NODE_TESTS, Registries

pytestmark = LOOP_DEVICES

SCRIPT = Path(__file__).resolve().parents[2] / "document" / "warm_boot.sh"
NODE_AMI = "ami-0123456789abcdef0"
OTHER_AMI = "ami-0fedcba9876543210"
BLOCK_TOOLS = ("losetup", "mkfs.xfs", "xfs_growfs", "blkid", "findmnt", "mount", "umount", "curl")
BUILT_MIB = 320  # mkfs.xfs's minimum is 300 MB
VOLUME_MIB = 420


def seal_stamp(containerd_version: str, ami: str) -> str:
    """The stamp as WarmSealDocument writes it: its printf format, with its arguments."""
    match = re.search(r"stamp=\$\(printf '([^']*)'", builder_script("WarmSealDocument"))
    assert match, "WarmSealDocument no longer builds its stamp with printf"
    return match.group(1) % (containerd_version, ami, os.uname().machine, "2026-01-01T00:00:00Z") + "\n"


# --- The script and the builder's documents agree (no root needed) -----------------------------------------------


def test_the_script_reads_what_the_builder_writes() -> None:
    ours = SCRIPT.read_text()
    for logical_id in ("WarmPrepareDocument", "WarmSealDocument"):
        builder = builder_script(logical_id)
        assert assignment(builder, "LABEL") == "eks-prefetch"
        assert re.search(r"^LABEL=\$\{EKS_PREFETCH_WARM_LABEL:-eks-prefetch\}$", ours, re.MULTILINE)
        assert assignment(builder, "STAMP") == assignment(ours, "STAMP")
        # Both sides read the version the same way: the third field of `containerd --version`.
        assert "containerd --version 2>/dev/null | awk '{print $3}'" in builder
    assert "\"$CONTAINERD\" --version 2>/dev/null | awk '{print $3}'" in ours
    assert "mkfs.xfs" in builder_script("WarmPrepareDocument") and "xfs_growfs -d" in ours


def test_the_template_hands_the_script_out_as_it_is() -> None:
    output = template()["Outputs"]["WarmBootUserData"]
    assert output["Condition"] == "WarmVolumes"  # off, the stack gives no warm boot part
    assert output["Value"] == SCRIPT.read_text()


# --- On a real block device ------------------------------------------------------------------------------------------


def run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=120).stdout


def mount_source(path: Path) -> str:
    result = subprocess.run(
        ["findmnt", "-rn", "-o", "SOURCE", "--mountpoint", str(path)], check=False, capture_output=True, text=True
    )
    return result.stdout.strip()


def mounts_of(device: str) -> list[str]:
    result = subprocess.run(
        ["findmnt", "-rn", "-o", "TARGET", "-S", device], check=False, capture_output=True, text=True
    )
    return result.stdout.split()


def size_bytes(path: Path) -> int:
    stat = os.statvfs(path)
    return stat.f_blocks * stat.f_frsize


@dataclass
class WarmVolume:
    base: Path
    image: Path
    device: str
    label: str
    release: str
    containerd_binary: str
    containerd_version: str
    image_ref: str
    built_size: int

    @contextlib.contextmanager
    def mounted(self) -> Iterator[Path]:
        """The volume at a directory of the test's own (to change what is on it)."""
        where = self.base / "edit"
        where.mkdir(exist_ok=True)
        run("mount", self.device, str(where))
        try:
            yield where
        finally:
            run("umount", str(where))

    def write_stamp(self, text: str | None) -> None:
        with self.mounted() as where:
            stamp = where / ".eks-image-prefetch-warm.json"
            if text is None:
                stamp.unlink(missing_ok=True)
            else:
                stamp.write_text(text)


def _prerequisites() -> str | None:
    reason = missing_prerequisites((default_release(),))
    missing = [tool for tool in BLOCK_TOOLS if shutil.which(tool) is None]
    if reason is None and missing:
        reason = f"the warm boot test needs {', '.join(missing)} (xfsprogs, util-linux, curl)"
    if reason is None and not Path("/dev/loop-control").exists():
        reason = "the warm boot test needs loop devices (/dev/loop-control)"
    return reason


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[WarmVolume]:
    """The builder's work, once for the module: a labelled XFS volume holding a containerd root with one image pulled
    through the CRI, sealed (containerd stopped, unmounted) and stamped, then grown as a larger EBS volume would be."""
    reason = _prerequisites()
    if reason:
        if os.environ.get(SKIP_NODE_TESTS) == "1":
            pytest.skip(f"{SKIP_NODE_TESTS}=1: {reason}")
        pytest.fail(f"{reason}. To run without the node tests knowingly, set {SKIP_NODE_TESTS}=1.", pytrace=False)
    registries: Registries = request.getfixturevalue("registries")
    base = tmp_path_factory.mktemp("warm")
    image = base / "volume.img"
    # A label of the test's own: the script refuses two volumes with one label, and this machine is shared.
    label = "ekpf" + secrets.token_hex(4)
    with image.open("wb") as out:
        out.truncate(BUILT_MIB << 20)
    run("mkfs.xfs", "-q", "-L", label, str(image))
    device = run("losetup", "--find", "--show", str(image)).strip()
    try:
        yield _build(base, image, device, label, registries)
    finally:
        for target in reversed(mounts_of(device)):
            subprocess.run(["umount", target], check=False, capture_output=True)
        subprocess.run(["losetup", "-d", device], check=False, capture_output=True)


def _build(base: Path, image: Path, device: str, label: str, registries: Registries) -> WarmVolume:
    builder = Containerd(base / "builder")
    builder.root.mkdir(parents=True)
    run("mount", device, str(builder.root))
    try:
        builder.start()
        try:
            pulled = registries.images["app-v1"].by_digest
            with Cri(builder.address) as cri:
                cri.pull_image(pulled)
            assert pulled in builder.images()
        finally:
            builder.stop()
        version = run(builder.binary("containerd"), "--version").split()[2]
        (builder.root / ".eks-image-prefetch-warm.json").write_text(seal_stamp(version, NODE_AMI))
        os.sync()
        built_size = size_bytes(builder.root)
    finally:
        run("umount", str(builder.root))
    # The launch template's volume is larger than the builder's filesystem: the node must grow it.
    with image.open("r+b") as out:
        out.truncate(VOLUME_MIB << 20)
    run("losetup", "--set-capacity", device)
    return WarmVolume(
        base, image, device, label, builder.release, builder.binary("containerd"), version, pulled, built_size
    )


@dataclass
class Boot:
    """One run of the script on a booting "node": its mount point, state dir and IMDS are the test's."""

    returncode: int
    line: str


@pytest.fixture
def node_dirs(tmp_path: Path) -> Iterator[dict[str, Path]]:
    dirs = {"root": tmp_path / "node" / "root", "state": tmp_path / "node" / "state"}
    for path in dirs.values():
        path.mkdir(parents=True)
    yield dirs
    if mount_source(dirs["root"]):
        subprocess.run(["umount", str(dirs["root"])], check=False, capture_output=True)


def boot(volume: WarmVolume, dirs: dict[str, Path], ami: str = NODE_AMI, **overrides: str) -> Boot:
    with FakeImds(ami) as imds:
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "EKS_PREFETCH_WARM_ROOT": str(dirs["root"]),
            "EKS_PREFETCH_WARM_STATE": str(dirs["state"]),
            "EKS_PREFETCH_WARM_CONTAINERD": volume.containerd_binary,
            "EKS_PREFETCH_WARM_IMDS": imds.endpoint,
            "EKS_PREFETCH_WARM_LABEL": volume.label,
            **overrides,
        }
        result = subprocess.run(
            ["bash", str(SCRIPT)], check=False, env=env, capture_output=True, text=True, timeout=120
        )
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout + result.stderr  # one line, warm or cold and why
    return Boot(result.returncode, lines[0])


def assert_cold(volume: WarmVolume, dirs: dict[str, Path], result: Boot, why: str) -> None:
    assert result.returncode == 0
    assert result.line.startswith("eks-image-prefetch: cold boot: "), result.line
    assert why in result.line
    assert mount_source(dirs["root"]) == ""
    assert mounts_of(volume.device) == []  # not left at the staging directory either
    assert list(dirs["root"].iterdir()) == []


@pytest.mark.node
def test_a_matching_volume_is_mounted_grown_and_serves_its_images(volume: WarmVolume, node_dirs: dict) -> None:
    (node_dirs["state"] / "made-by-another-unit").mkdir()  # only containerd's own entries mean it has started
    result = boot(volume, node_dirs)

    assert result.returncode == 0
    assert result.line.startswith("eks-image-prefetch: warm boot: "), result.line
    assert f"sealed by containerd {volume.containerd_version} on {NODE_AMI}; filesystem grown to" in result.line
    assert mount_source(node_dirs["root"]) == volume.device
    assert size_bytes(node_dirs["root"]) > volume.built_size + (60 << 20)  # grown from 320 toward 420 MiB

    again = boot(volume, node_dirs)  # cloud-init may run it again, or someone by hand: nothing changes
    assert again.returncode == 0
    assert "already the warm volume" in again.line
    assert mounts_of(volume.device) == [str(node_dirs["root"])]

    # containerd starting on that root, as nodeadm starts it next, has the image, and kubelet would see it.
    node = Containerd(node_dirs["root"].parent, release=volume.release)
    node.start()
    try:
        with Cri(node.address) as cri:
            found = cri.image_status(volume.image_ref)
        assert found is not None
        assert volume.image_ref in found.repo_digests
    finally:
        node.stop()


@pytest.mark.node
def test_a_volume_sealed_by_another_containerd_is_left_unmounted(volume: WarmVolume, node_dirs: dict) -> None:
    volume.write_stamp(seal_stamp("1.6.20", NODE_AMI))
    try:
        result = boot(volume, node_dirs)
    finally:
        volume.write_stamp(seal_stamp(volume.containerd_version, NODE_AMI))
    assert_cold(volume, node_dirs, result, f"sealed by containerd 1.6.20, this node runs {volume.containerd_version}")


@pytest.mark.node
def test_a_volume_sealed_on_another_ami_is_left_unmounted(volume: WarmVolume, node_dirs: dict) -> None:
    result = boot(volume, node_dirs, ami=OTHER_AMI)
    assert_cold(volume, node_dirs, result, f"sealed on {NODE_AMI}, this node is {OTHER_AMI}")


@pytest.mark.node
def test_a_volume_without_a_stamp_is_left_unmounted(volume: WarmVolume, node_dirs: dict) -> None:
    volume.write_stamp(None)
    try:
        result = boot(volume, node_dirs)
    finally:
        volume.write_stamp(seal_stamp(volume.containerd_version, NODE_AMI))
    assert_cold(volume, node_dirs, result, "has no stamp")


@pytest.mark.node
def test_a_node_without_the_volume_boots_cold(volume: WarmVolume, node_dirs: dict) -> None:
    result = boot(volume, node_dirs, EKS_PREFETCH_WARM_LABEL="ekpfmissing")
    assert result.returncode == 0
    assert (
        result.line
        == f"eks-image-prefetch: cold boot: no volume labelled ekpfmissing; {node_dirs['root']} stays on the root disk"
    )
    assert mounts_of(volume.device) == []


@pytest.mark.node
def test_a_containerd_already_started_keeps_its_root(volume: WarmVolume, node_dirs: dict) -> None:
    (node_dirs["state"] / "io.containerd.runtime.v2.task").mkdir()
    result = boot(volume, node_dirs)
    assert_cold(volume, node_dirs, result, "containerd has already started")


@pytest.mark.node
def test_a_root_already_mounted_from_elsewhere_is_left_alone(volume: WarmVolume, node_dirs: dict) -> None:
    run("mount", "-t", "tmpfs", "-o", "size=1m", "elsewhere", str(node_dirs["root"]))
    try:
        result = boot(volume, node_dirs)
        assert result.returncode == 0
        assert result.line.startswith("eks-image-prefetch: cold boot: "), result.line
        assert f"{node_dirs['root']} is already a mount of elsewhere" in result.line
        assert mount_source(node_dirs["root"]) == "elsewhere"
        assert mounts_of(volume.device) == []
    finally:
        run("umount", str(node_dirs["root"]))


@pytest.mark.node
def test_no_imdsv2_token_means_cold_not_a_failed_boot(volume: WarmVolume, node_dirs: dict) -> None:
    with FakeImds(NODE_AMI, tokens=False) as imds:  # as when the PUT hop limit is too low for the caller
        result = boot(volume, node_dirs, EKS_PREFETCH_WARM_IMDS=imds.endpoint)
    assert_cold(volume, node_dirs, result, "no IMDSv2 token")
