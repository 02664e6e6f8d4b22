"""The warm boot loop of issue 19 (docs/warm-volumes.md) on real containerd, inside a World.

- **Build**, in a World deployed with ``WarmVolumes=true``: an execution of the stack's own ``WarmVolumeBuilder``,
  run by moto's Step Functions (aws-sdk integrations against the same moto), with the planner's input resolved by the
  application's own code (``NewestImages.every_repository`` and ``commands.document_parameters``, in the node-launch
  function's environment). The builder instance its RunInstances creates gets a real node as it appears
  (``World.on_launch``), registered with the Run Command agent: its containerd root is on a loop device (empty, or a
  relabelled copy of the snapshot it was launched from), its PATH has ``systemctl`` (FakeSystemd: the harness stops
  and starts the node's containerd), ``containerd`` (the node's release) and ``lsblk`` (EC2's block devices: the
  loop device is the one "Amazon Elastic Block Store" data volume), and an IMDSv2 double answers its AMI. The
  state machine's three commands run there for real: template.yaml's WarmPrepareDocument (discovers the volume,
  formats, labels, copies the node's root onto it, mounts it, restarts containerd), WarmPullDocument (the stack's
  PrefetchDocument under the builder's own name), and WarmSealDocument, with three local substitutions in the two
  builder scripts (their root, label and staging assignments, and the IMDS endpoint: ``BuilderAgentView``).
  Snapshot, its tags, launch template version, SSM
  parameter and termination are the state machine's own calls; then the sealed volume's file is copied as the
  snapshot it created (keyed by its id).
- **Boot**: a new World node whose containerd root is a copy of the snapshot file on its own loop device, mounted by
  document/warm_boot.sh (environment overrides: the node's root and state, its release's containerd, an IMDSv2
  double answering the AMI) before its containerd starts; then it registers like any node, so the node-launch path
  sends its prefetch.

Not emulated: EBS's lazy loading (the copy is local disk: see docs/warm-volumes.md), the AMI's baked-in images (the
builder's root starts empty). Each copy gets a label and an XFS UUID of its own: blkid sees every loop device of
this shared machine, while an instance sees only its own volume, and XFS refuses to mount two filesystems with one
UUID.
"""

from __future__ import annotations

import copy
import ctypes
import http.server
import importlib
import json
import os
import re
import secrets
import shutil
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import boto3

from harness.cluster import Node, PushedImage
from harness.cri import Cri
from harness.node import PROJECT_ROOT, Containerd, missing_prerequisites
from harness.stack import REGION
from harness.template import resource

if TYPE_CHECKING:
    from harness.world import Launched, World

BOOT_SCRIPT = PROJECT_ROOT / "document" / "warm_boot.sh"
BUILDER_TAG = "eks-image-prefetch:warm-builder"
SNAPSHOT_TAG = "eks-image-prefetch:warm-snapshot"
DIGEST_TAG_PREFIX = "eks-image-prefetch:digest:"
IMDS = "http://169.254.169.254"
BLOCK_TOOLS = (
    "losetup",
    "mkfs.xfs",
    "xfs_admin",
    "xfs_growfs",
    "blkid",
    "findmnt",
    "mountpoint",
    "mount",
    "umount",
    "curl",
)
BUILT_MIB = 320  # mkfs.xfs's minimum is 300 MB
# The launch template's volume is larger than the builder's filesystem (the node grows it): twice the snapshot, and
# this much more, so that later pushes fit under the prefetch's disk guard (which counts a whole image's bytes).
GROWN_MIB = 64
# The builder's volume holds each image twice (content and unpacked snapshot) under the document's disk limit (80 %).
ROOM_PER_IMAGE_BYTE = 3

_SYSTEMCTL = """#!/bin/bash
# systemd on the builder, for its one unit: `systemctl stop|start containerd` asks the harness, which runs this
# node's containerd (FakeSystemd), and returns once it has stopped or answers.
case "$1 $2" in
  "stop containerd"|"start containerd") exec curl -sf -m 60 -X POST "{endpoint}/$1" >/dev/null ;;
  *) echo "emulated builder: systemctl $* is not emulated" >&2; exit 1 ;;
esac
"""


_LSBLK = """#!/bin/bash
# The builder's block devices as EC2 presents them to lsblk: a root disk and one data volume, both of the model
# "Amazon Elastic Block Store"; the data volume is this builder's loop device. The two forms WarmPrepareDocument asks.
case "$*" in
  "-no PKNAME "*) echo nvme0n1 ;;
  "-dno NAME,MODEL") printf '%s\\n' "nvme0n1 Amazon Elastic Block Store" "{device} Amazon Elastic Block Store" ;;
  *) echo "emulated builder: lsblk $* is not emulated" >&2; exit 1 ;;
esac
"""

_CONTAINERD = """#!/bin/bash
# This node's containerd release (the step's PATH holds the node's tools and the system's, not the release's).
exec {binary} "$@"
"""


class Say(Protocol):
    def step(self, text: str) -> None: ...
    def line(self, text: str) -> None: ...


def missing_block_tools() -> str | None:
    """Why this machine cannot run the loop (besides the nodes' own prerequisites), or None."""
    missing = [tool for tool in BLOCK_TOOLS if shutil.which(tool) is None]
    if missing:
        return f"the warm loop needs {', '.join(missing)} (xfsprogs, util-linux, curl)"
    if not Path("/dev/loop-control").exists():
        return "the warm loop needs loop devices (/dev/loop-control)"
    return None


def builder_script(logical_id: str) -> str:
    """The script of one of the builder's documents in template.yaml (WarmPrepareDocument, WarmSealDocument)."""
    (step,) = resource(logical_id)["Properties"]["Content"]["mainSteps"]
    (script,) = step["inputs"]["runCommand"]
    return script


def assignment(script: str, name: str) -> str:
    """The value a script gives a variable (``NAME=value`` on a line of its own)."""
    match = re.search(rf"^\s*{name}=(\S+)$", script, re.MULTILINE)
    if not match:
        raise ValueError(f"no {name}= in the script")
    return match.group(1)


def _run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=120).stdout


class FakeImds:
    """EC2's instance metadata service as the builder's and the node's scripts use it: PUT /latest/api/token, then the
    AMI id with the token (IMDSv2). ``tokens`` False: no token is given (a hop limit too low for the caller)."""

    def __init__(self, ami: str, tokens: bool = True) -> None:
        self.ami = ami
        self.tokens = tokens
        self.token = secrets.token_hex(16)
        imds = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_PUT(self) -> None:
                if (
                    imds.tokens
                    and self.path == "/latest/api/token"
                    and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds")
                ):
                    self._reply(200, imds.token)
                else:
                    self._reply(400, "")

            def do_GET(self) -> None:
                if self.headers.get("X-aws-ec2-metadata-token") != imds.token:
                    self._reply(401, "")
                elif self.path == "/latest/meta-data/ami-id":
                    self._reply(200, imds.ami)
                else:
                    self._reply(404, "")

            def _reply(self, status: int, body: str) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        # A short poll: shutdown() waits for it, and the double sits in the warm boot's clock.
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeImds:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class FakeSystemd:
    """systemd on the builder, for containerd only: POST /stop and /start stop and start the node's containerd (the
    harness's process, so that the node's own stop still ends it), answering once done."""

    def __init__(self) -> None:
        self.containerd: Containerd | None = None
        systemd = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                containerd = systemd.containerd
                try:
                    if containerd is None or self.path not in {"/stop", "/start"}:
                        raise ValueError(self.path)
                    containerd.stop() if self.path == "/stop" else containerd.start()
                except Exception:  # the unit failed: systemctl exits non-zero
                    self.send_response(500)
                else:
                    self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class BuilderAgentView:
    """The builder as the Run Command agent sees it: its node, with the two builder documents' scripts pointed at the
    node's containerd root, its staging directory, its root disk's content store (a directory of this machine), the
    build's label and its IMDS double (local substitutions of their assignments; a script that no longer has one fails
    loudly). Other documents run as they are."""

    node: Node
    substitutions: dict[str, str]  # assignment name -> value
    imds: str
    writeback_seconds: float | None = None  # see WarmLoop.writeback_seconds

    @property
    def name(self) -> str:
        return self.node.name

    def execute(self, content: dict[str, Any], values: dict[str, str], command_id: str, timeout: float) -> Any:
        content = copy.deepcopy(content)
        (step,) = content["mainSteps"]
        script = step["inputs"]["runCommand"][0]
        if "EKS Image Prefetch warm volume builder" not in script:  # the pull
            with _Writeback(self.node.containerd.root, self.writeback_seconds):
                return self.node.execute(content, values, command_id, timeout)
        for name, value in self.substitutions.items():
            if name == "STAGING" and "STAGING=" not in script:
                continue
            old = f"{name}={assignment(script, name)}\n"
            script = script.replace(old, f"{name}={value}\n")
        if IMDS not in script:
            raise ValueError("a builder document no longer asks the IMDS: the harness cannot point it here")
        step["inputs"]["runCommand"] = [script.replace(IMDS, self.imds)]
        content.setdefault("parameters", {})  # none: the node's runner reads the key
        return self.node.execute(content, values, command_id, timeout)


class _Writeback:
    """While the builder's pull runs: the dirty pages of the volume's filesystem written back every ``seconds`` (syncfs
    on the containerd root, which is the volume's mount then), as the kernel writes them back during a pull bigger
    than the builder's page cache allows, or longer than its dirty_expire (30 s): a file written and deleted during the
    pull then reaches the volume, as it would on EBS. None: the kernel's own writeback (this machine's large page cache
    keeps a small build's short-lived files off the disk)."""

    def __init__(self, root: Path, seconds: float | None) -> None:
        self.root, self.seconds = root, seconds
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _Writeback:
        if self.seconds:
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        if self.thread.is_alive():
            self.thread.join()

    def _run(self) -> None:
        syncfs = ctypes.CDLL(None, use_errno=True).syncfs
        while not self.done.wait(self.seconds):
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
            try:
                syncfs(fd)
            finally:
                os.close(fd)


@dataclass
class LoopVolume:
    """An image file attached to a loop device: the harness's EBS volume."""

    path: Path
    device: str | None = None

    def attach(self) -> str:
        self.device = _run("losetup", "--find", "--show", str(self.path)).strip()
        return self.device

    def detach(self) -> None:
        """Unmount it wherever it is mounted, and free its loop device (idempotent)."""
        if self.device is None:
            return
        targets = subprocess.run(
            ["findmnt", "-rn", "-o", "TARGET", "-S", self.device], check=False, capture_output=True, text=True
        ).stdout.split()
        for target in reversed(targets):
            subprocess.run(["umount", target], check=False, capture_output=True)
        subprocess.run(["losetup", "-d", self.device], check=False, capture_output=True)
        self.device = None


@dataclass
class WarmImage:
    repository: str
    digest: str
    tag: str
    reference: str  # what the node is sent: registry/repository:tag@digest

    @property
    def by_tag(self) -> str:
        """What a pod spec names (kubelet asks the CRI for it)."""
        return self.reference.split("@", 1)[0]

    @property
    def by_digest(self) -> str:
        return f"{self.by_tag.rsplit(':', 1)[0]}@{self.digest}"


@dataclass
class Snapshot:
    snapshot_id: str
    path: Path  # the sealed image file: the snapshot's blocks
    stamp: dict[str, str]
    ami: str
    architecture: str
    images: list[WarmImage]
    build: str
    builder: str  # its instance id
    build_seconds: float
    usage: VolumeUsage | None = None  # measured on demand (WarmLoop.usage)


@dataclass(frozen=True)
class VolumeUsage:
    """What a sealed volume holds: as its filesystem counts it, and as its blocks were written (what an EBS snapshot
    stores: EBS has no TRIM, so a block written and then freed, a layer blob deleted after its unpacking, is stored
    all the same), each against an empty volume of its size, as the prepare step formats it."""

    used_bytes: int  # the filesystem's used blocks (statvfs), metadata included
    empty_used_bytes: int
    written_bytes: int  # the volume file's allocated blocks: every block written, freed or not (zeros aside)
    empty_written_bytes: int
    unpacked_bytes: int  # the images' unpacked layers: containerd's snapshotter directory, on disk
    content_bytes: int  # containerd's content store (compressed layer blobs, manifests, configs)

    @property
    def data_bytes(self) -> int:
        """The blocks the build wrote: a first snapshot's data beyond an empty volume's."""
        return self.written_bytes - self.empty_written_bytes

    @property
    def per_unpacked_byte(self) -> float | None:
        return self.data_bytes / self.unpacked_bytes if self.unpacked_bytes else None

    @property
    def used_per_unpacked_byte(self) -> float | None:
        """The filesystem's view: what the blocks in use take, freed ones not counted."""
        return (self.used_bytes - self.empty_used_bytes) / self.unpacked_bytes if self.unpacked_bytes else None


def volume_usage(path: Path, work: Path) -> VolumeUsage:
    """Mount a sealed volume file read-only and measure it (VolumeUsage), against an empty one of its size."""
    work.mkdir(parents=True, exist_ok=True)
    formatted, empty = work / "formatted.img", LoopVolume(work / "empty.img")
    with formatted.open("wb") as out:
        out.truncate(path.stat().st_size)
    _run("mkfs.xfs", "-q", "-f", str(formatted))
    # Copied as the sealed volume was (holes where the blocks are zeros), so that both count alike.
    _run("cp", "--sparse=always", str(formatted), str(empty.path))
    formatted.unlink()
    try:
        empty_written = empty.path.stat().st_blocks * 512
        empty_used, _, _ = _mounted_usage(empty, work / "empty")
    finally:
        empty.path.unlink()
    written = path.stat().st_blocks * 512
    used, unpacked, content = _mounted_usage(LoopVolume(path), work / "sealed")
    return VolumeUsage(used, empty_used, written, empty_written, unpacked, content)


def _mounted_usage(volume: LoopVolume, mountpoint: Path) -> tuple[int, int, int]:
    """(used bytes, bytes under the overlayfs snapshotter, bytes under the content store) of the volume's filesystem."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    device = volume.attach()
    try:
        # nouuid: a copy of the volume may be mounted elsewhere (XFS refuses two mounts of one UUID).
        _run("mount", "-o", "ro,nouuid", device, str(mountpoint))
        try:
            stats = os.statvfs(mountpoint)
            used = (stats.f_blocks - stats.f_bfree) * stats.f_frsize
            return (
                used,
                _du(mountpoint / "io.containerd.snapshotter.v1.overlayfs"),
                _du(mountpoint / "io.containerd.content.v1.content"),
            )
        finally:
            subprocess.run(["umount", str(mountpoint)], check=False, capture_output=True)
    finally:
        volume.detach()


def _du(path: Path) -> int:
    """Bytes of the blocks the files under ``path`` take (0 if there is no such directory)."""
    if not path.exists():
        return 0
    return int(_run("du", "-s", "--block-size=1", str(path)).split()[0])


@dataclass
class Boot:
    instance_id: str
    name: str
    line: str  # warm_boot.sh's one line ("" for a node booted without a volume)
    launched_at: float  # time.monotonic() when the instance booted (its user data started; EC2's part not emulated)
    booted_at: float  # when its containerd had started

    @property
    def warm(self) -> bool:
        return self.line.startswith("eks-image-prefetch: warm boot: ")


class BuildFailed(RuntimeError):
    pass


@dataclass
class _Build:
    """One build by the state machine, and its builder once RunInstances has created it."""

    needed_bytes: int
    release: str | None
    instance_id: str | None = None
    node: Node | None = None
    volume: LoopVolume | None = None
    imds: FakeImds | None = None
    systemd: FakeSystemd | None = None

    def end(self) -> None:
        """The builder is gone (terminated): its processes stop, its volume is detached (its file stays)."""
        if self.node is not None:
            self.node.stop()
        if self.volume is not None:
            self.volume.detach()
        if self.imds is not None:
            self.imds.__exit__()
        if self.systemd is not None:
            self.systemd.close()


@dataclass
class WarmLoop:
    """Build warm snapshots and boot nodes on them, in a World on real nodes. Its volumes are detached when the World
    closes (after its nodes stop), or by close()."""

    world: World
    label: str = field(default_factory=lambda: "ekpf" + secrets.token_hex(4))  # 12 characters, XFS's limit
    snapshots: dict[str, Snapshot] = field(default_factory=dict)
    boots: dict[str, Boot] = field(default_factory=dict)
    executions: list[dict[str, Any]] = field(default_factory=list)  # the builder's, as DescribeExecution ended them
    # The builder's pull with its volume's dirty pages written back this often (_Writeback): what a real builder's
    # pull of images bigger than its page cache writes. None: the kernel's own writeback.
    writeback_seconds: float | None = None

    def __post_init__(self) -> None:
        reason = self.world.dry_run_reason or missing_prerequisites() or missing_block_tools()
        if reason:
            raise RuntimeError(f"the warm loop needs real nodes: {reason}")
        assert self.world.base is not None
        self.base = self.world.base / "warm"
        self.base.mkdir(parents=True, exist_ok=True)
        self._volumes: list[LoopVolume] = []
        self._build: _Build | None = None
        self._names = 0
        self.world.add_cleanup(self.close)
        if self.by_state_machine:
            self.world.on_launch.append(self._builder_launched)

    def __enter__(self) -> WarmLoop:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the nodes on the loop's volumes (their containerd holds the mount), then detach every volume."""
        for boot in self.boots.values():
            self.world.instances[boot.instance_id].node.stop()
        while self._volumes:
            self._volumes.pop().detach()

    # --- the builder ------------------------------------------------------------------------------------------

    @property
    def parameter_name(self) -> str:
        """WarmSnapshotParameter's name, from the template."""
        name = resource("WarmSnapshotParameter")["Properties"]["Name"]["Fn::Sub"]
        return name.replace("${AWS::StackName}", self.world.stack.name)

    def resolve(self, repositories: Sequence[str] | None = None) -> tuple[list[WarmImage], dict[str, list[str]]]:
        """The builder's input as the planner computes it: the newest image of every watched repository (or of
        these), and the prefetch document's parameters for them; by the application's code, in the node-launch
        function's environment."""
        function = self.world.stack.functions["NodeLaunchFunction"]
        with function.container(fresh=True):
            settings_module = importlib.import_module("eks_prefetch.settings")
            settings = settings_module.load(settings_module.LaunchSettings)
            resolution = importlib.import_module("eks_prefetch.prefetch.resolution")
            commands = importlib.import_module("eks_prefetch.prefetch.commands")
            resolved = resolution.NewestImages(settings).every_repository(repositories)
            parameters = commands.document_parameters(resolved, settings)
        images = [WarmImage(image.repository, image.digest, image.tag, image.reference) for image in resolved]
        return images, parameters

    @property
    def by_state_machine(self) -> bool:
        """Whether the stack has the builder (WarmVolumes=true): builds are then its executions."""
        return "WarmVolumeBuilder" in self.world.stack.state_machines

    @property
    def launch_template_id(self) -> str:
        """The launch template the builds publish in: the stack's WarmLaunchTemplate."""
        template_id = self.world.stack.resolver.refs.get("WarmLaunchTemplate")
        if template_id is None:
            raise LookupError("no warm launch template yet")
        return template_id

    def build(self, repositories: Sequence[str] | None = None, release: str | None = None) -> Snapshot:
        """One build: a builder on a fresh labelled volume pulls the newest images through the prefetch document,
        seals through WarmSealDocument, and its volume becomes a snapshot, registered and published. ``release``:
        the builder's containerd (default: the nodes')."""
        started = time.monotonic()
        images, parameters = self.resolve(repositories)
        if not images:
            raise BuildFailed("no image to build: nothing pushed to the watched repositories")
        if not self.by_state_machine:
            raise BuildFailed("the stack has no builder: its parameters need WarmVolumes=true")
        return self._execute(images, parameters, release, started)

    def _execute(
        self, images: list[WarmImage], parameters: dict[str, list[str]], release: str | None, started: float
    ) -> Snapshot:
        """The stack's WarmVolumeBuilder, executed by moto with the planner's input; its builder runs the three
        documents for real (_builder_launched). Then the sealed volume's file is the snapshot it created."""
        sizes = {pushed.digest: pushed.size for pushed in self.world.pushed}
        self._build = build = _Build(ROOM_PER_IMAGE_BYTE * sum(sizes.get(i.digest, 0) for i in images), release)
        self._names += 1
        name = f"harness-{self._names}-" + datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        sfn = boto3.client("stepfunctions", region_name=REGION)
        execution = sfn.start_execution(
            stateMachineArn=self.world.stack.state_machines["WarmVolumeBuilder"],
            name=name,
            input=json.dumps(
                {
                    "images": [
                        {"repository": i.repository, "digest": i.digest, "reference": i.reference} for i in images
                    ],
                    "documentParameters": parameters,
                }
            ),
        )["executionArn"]
        try:
            described = self._wait(sfn, execution)
        finally:
            build.end()
            self._build = None
        self.executions.append(described)
        if described["status"] != "SUCCEEDED" or build.instance_id is None or build.volume is None:
            raise BuildFailed(f"execution {name}: {described['status']}: {_failures(sfn, execution)}")
        published = self.published()
        snapshot_file = self.base / f"{published['snapshotId']}.img"
        _run("cp", "--sparse=always", str(build.volume.path), str(snapshot_file))
        build.volume.path.unlink()
        snapshot = Snapshot(
            published["snapshotId"],
            snapshot_file,
            self._stamp(build.instance_id),
            published["amiId"],
            published["architecture"],
            images,
            name,
            build.instance_id,
            time.monotonic() - started,
        )
        self.snapshots[snapshot.snapshot_id] = snapshot
        return snapshot

    def usage(self, snapshot: Snapshot) -> VolumeUsage:
        """What the snapshot's volume holds (VolumeUsage), measured once."""
        if snapshot.usage is None:
            snapshot.usage = volume_usage(snapshot.path, self.base / f"usage-{snapshot.snapshot_id}")
        return snapshot.usage

    def _wait(self, sfn: Any, execution: str, timeout: float = 1800) -> dict[str, Any]:
        """Run the World (the agent's events routed) until the execution ends."""
        deadline = time.monotonic() + timeout
        while True:
            described = sfn.describe_execution(executionArn=execution)
            if described["status"] != "RUNNING":
                return described
            if time.monotonic() > deadline:
                sfn.stop_execution(executionArn=execution)
                raise BuildFailed(f"execution still running after {timeout:.0f} s")
            self.world.settle(timeout)
            time.sleep(0.2)

    def _stamp(self, builder: str) -> dict[str, str]:
        """What the seal step printed on the builder (the stamp the state machine read)."""
        seal = self.world.stack.physical["WarmSealDocument"]
        (command,) = [
            c for c in self.world.agent.commands.values() if c.document_name == seal and builder in c.invocations
        ]
        return json.loads(command.invocations[builder].stdout)

    def _builder_launched(self, launched: Launched) -> None:
        """RunInstances of the state machine's builder (in its thread, before it answers): the instance gets a node
        whose data volume is a loop device (empty, or a relabelled copy of the snapshot it was launched from), tools
        for what the documents ask of the instance (systemctl, containerd, lsblk), an IMDS answering its AMI, and its
        agent registered."""
        build = self._build
        if build is None or launched.tags.get(BUILDER_TAG) != self.world.stack.name:
            return
        build.instance_id = launched.instance_id
        name = f"warm-builder-{len(self.snapshots) + 1}"
        build.volume = volume = LoopVolume(self.base / f"{name}-{launched.instance_id}.img")
        previous = self.snapshots.get(launched.snapshots.get("/dev/xvdb") or "")
        if previous is not None:
            _run("cp", "--sparse=always", str(previous.path), str(volume.path))
            _run("xfs_admin", "-L", self.label, "-U", "generate", str(volume.path))
            with volume.path.open("r+b") as out:
                out.truncate(max(previous.path.stat().st_size, build.needed_bytes + (BUILT_MIB << 20)))
        else:
            with volume.path.open("wb") as out:
                out.truncate(max(BUILT_MIB << 20, build.needed_bytes + (BUILT_MIB << 20)))  # sparse
        self._volumes.append(volume)
        device = volume.attach()
        build.imds = FakeImds(launched.image_id).__enter__()
        build.systemd = FakeSystemd()
        instance = self.world.adopt(launched.instance_id, name, register_after=None, containerd_release=build.release)
        node = instance.node
        assert isinstance(node, Node)
        build.node = node
        build.systemd.containerd = node.containerd
        bin_dir = node.base / "bin"
        (bin_dir / "systemctl").write_text(_SYSTEMCTL.format(endpoint=build.systemd.endpoint))
        (bin_dir / "containerd").write_text(_CONTAINERD.format(binary=node.containerd.binary("containerd")))
        (bin_dir / "lsblk").write_text(_LSBLK.format(device=Path(device).name))
        for tool in ("systemctl", "containerd", "lsblk"):
            (bin_dir / tool).chmod(0o755)
        substitutions = {
            "ROOT": str(node.containerd.root),
            "LABEL": self.label,
            "STAGING": str(node.base / "staging"),
            "SCRATCH": str(node.base / "content-scratch"),  # the builder's root disk: this machine's, not a loop
        }
        self.world.agent.register(
            launched.instance_id, BuilderAgentView(node, substitutions, build.imds.endpoint, self.writeback_seconds)
        )

    def published(self) -> dict[str, Any]:
        """What the stack's snapshot parameter holds ({} before the first build)."""
        return json.loads(self.world.ssm.get_parameter(Name=self.parameter_name)["Parameter"]["Value"])

    # --- new nodes --------------------------------------------------------------------------------------------

    def boot_warm(self, name: str, snapshot_id: str | None = None, **launch: Any) -> Boot:
        """A new node with a volume made from the snapshot (default: the published one), mounted by warm_boot.sh
        before its containerd starts; ``launch``: World.launch's options (proxy, tags, register_after...)."""
        snapshot = self.snapshots[snapshot_id or self.published()["snapshotId"]]
        volume = LoopVolume(self.base / f"{name}.img")
        _run("cp", "--sparse=always", str(snapshot.path), str(volume.path))
        with volume.path.open("r+b") as out:
            out.truncate(2 * snapshot.path.stat().st_size + (GROWN_MIB << 20))
        label = "ekpf" + secrets.token_hex(4)
        ami = self.world.node_image()["ImageId"]  # what its IMDS answers: the AMI World.launch runs
        _run("xfs_admin", "-L", label, "-U", "generate", str(volume.path))
        volume.attach()
        self._volumes.append(volume)
        lines: list[str] = []

        def user_data(containerd: Containerd) -> None:
            containerd.root.mkdir(parents=True, exist_ok=True)
            with FakeImds(ami) as imds:
                env = {
                    "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
                    "EKS_PREFETCH_WARM_ROOT": str(containerd.root),
                    "EKS_PREFETCH_WARM_STATE": str(containerd.base / "state"),
                    "EKS_PREFETCH_WARM_CONTAINERD": containerd.binary("containerd"),
                    "EKS_PREFETCH_WARM_IMDS": imds.endpoint,
                    "EKS_PREFETCH_WARM_LABEL": label,
                }
                result = subprocess.run(
                    ["bash", str(BOOT_SCRIPT)], check=False, env=env, capture_output=True, text=True, timeout=120
                )
            lines.append(result.stdout.strip() or result.stderr.strip())

        return self._launch(name, user_data, lines, **launch)

    def boot_cold(self, name: str, **launch: Any) -> Boot:
        """A new node without a warm volume: as every node boots today."""
        return self._launch(name, None, [], **launch)

    def _launch(self, name: str, user_data: Any, lines: list[str], **launch: Any) -> Boot:
        booting: list[float] = []

        def boot(containerd: Containerd) -> None:
            booting.append(time.monotonic())  # the instance is up, its user data starts: the boot's clock starts
            if user_data is not None:
                user_data(containerd)

        instance_id = self.world.launch(name, before_containerd=boot, **launch)
        node = self.world.instances[instance_id].node
        assert isinstance(node, Node)
        record = Boot(instance_id, name, lines[0] if lines else "", booting[0], node.started_at)
        self.boots[name] = record
        return record

    def present(self, instance_id: str, images: Sequence[WarmImage]) -> dict[str, bool]:
        """image reference -> whether the node's CRI has it by the tag a pod names (as kubelet asks)."""
        node = self.world.instances[instance_id].node
        assert isinstance(node, Node)
        with Cri(node.containerd.address) as cri:
            return {image.reference: cri.image_status(image.by_tag) is not None for image in images}


def _failures(sfn: Any, execution: str) -> list[Any]:
    """The failed events and the error the execution's states recorded, for BuildFailed's message."""
    events = sfn.get_execution_history(executionArn=execution, maxResults=1000)["events"]
    failures: list[Any] = []
    for event in events:
        if event["type"] == "FailStateEntered":  # the error the states caught (a step's, the snapshot's...)
            failures.append(json.loads(event["stateEnteredEventDetails"]["input"]).get("error"))
        elif "Failed" in event["type"]:
            failures.append({key: value for key, value in event.items() if key.endswith("EventDetails")})
    return failures


# --- the demo's scene -----------------------------------------------------------------------------------------------


def warm_scene(world: World, say: Say, tags: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Build a snapshot of the newest images, then scale out one node cold and one warm: the bytes each pulled from
    the registry (through its own route) and the seconds until its images were present (CRI, by the pod's tag).
    ``tags``: the scaled-out nodes' (their node pool's), so that every image of the snapshot is sent to them."""
    say.step("Warm boot volumes: a builder pulls the newest images through the document, seals, and is snapshotted")
    try:
        loop = WarmLoop(world)
    except RuntimeError as error:
        say.line(f"skipped: {error}")
        return {"warm_boot": {"node": None, "skipped": str(error)}, "cold_boot": {"node": None}}
    snapshot = loop.build()
    say.line(
        f"builder {snapshot.builder}: {len(snapshot.images)} image(s) pulled, sealed by containerd "
        f"{snapshot.stamp['containerd']} on {snapshot.ami}, in {snapshot.build_seconds:.1f} s; builder terminated"
    )
    say.line(f"snapshot {snapshot.snapshot_id} (a copy of the sealed volume), published in {loop.parameter_name}")
    say.step("Scale out: one node boots cold, one on a volume made from the snapshot")
    results = {}
    for kind, name in (("cold_boot", "scale-cold"), ("warm_boot", "scale-warm")):
        launch = {"proxy": True, "tags": dict(tags or {})}
        boot = loop.boot_warm(name, **launch) if kind == "warm_boot" else loop.boot_cold(name, **launch)
        results[kind] = measure_boot(world, loop, boot, snapshot)
        if boot.line:
            say.line(f"{name}: {boot.line}")
    for kind in ("cold_boot", "warm_boot"):
        result = results[kind]
        if result["seconds_to_images"] is None:
            say.line(f"{result['node']}: not every image present after its prefetch: {result['missing']}")
            continue
        say.line(
            f"{result['node']}: images present {result['seconds_to_images']:.1f} s after boot, "
            f"{result['bytes_pulled'] / 1e6:.1f} MB pulled from the registry"
            + (f", present at boot: {result['images_present_at_boot']}" if kind == "warm_boot" else "")
        )
    results["warm_boot"]["snapshot"] = snapshot.snapshot_id
    return results


def measure_boot(
    world: World,
    loop: WarmLoop,
    boot: Boot,
    snapshot: Snapshot,
    timeout: float = 600,
    images: Sequence[WarmImage] | None = None,
) -> dict[str, Any]:
    """Run the World until the node's first prefetch is done: whether its images were present at boot, the seconds
    from its launch until they were (CRI, by the pod's tag), and the bytes its route to the registry carried.
    ``images``: the ones to wait for (default: the snapshot's; the newest ones for a snapshot behind them)."""
    wanted = list(snapshot.images if images is None else images)
    # Asked before anything was sent to the node (its launch event waits in the node-launch queue until settle).
    reached = any(boot.instance_id in command.invocations for command in world.agent.commands.values())
    at_boot = not reached and all(loop.present(boot.instance_id, wanted).values())
    ready: list[float] = [boot.booted_at] if at_boot else []

    def tick() -> None:
        if not ready and all(loop.present(boot.instance_id, wanted).values()):
            ready.append(time.monotonic())

    world.settle(timeout, tick=tick)
    tick()
    present = loop.present(boot.instance_id, wanted)
    proxy = world.instances[boot.instance_id].proxy
    return {
        "node": boot.name,
        "instance_id": boot.instance_id,
        "bytes_pulled": proxy.bytes_down if proxy else None,
        "images_present_at_boot": at_boot,
        # None: not every image was present once its prefetch had run (a node pool the repository is not sent to).
        "seconds_to_images": round(ready[0] - boot.launched_at, 2) if ready else None,
        "missing": sorted(reference for reference, found in present.items() if not found),
        "boot": boot.line or "no warm volume",
    }


def changed_layers(newer: PushedImage, older: PushedImage) -> dict[str, int]:
    """The layers of ``newer`` (an image manifest) that ``older`` does not have: digest -> compressed size."""
    held = {layer["digest"] for layer in json.loads(older.manifest).get("layers", [])}
    return {
        layer["digest"]: int(layer["size"])
        for layer in json.loads(newer.manifest).get("layers", [])
        if layer["digest"] not in held
    }


def measure_one_push_behind(world: World, loop: WarmLoop, snapshot: Snapshot, newer: PushedImage) -> dict[str, Any]:
    """A node booted from ``snapshot`` (which holds the image before ``newer``, one push behind) whose first prefetch
    is ``newer``: the bytes its route to the registry carried against the bytes of the layers ``newer`` changed, and
    how many of the layers it already had were downloaded again (the registry's access log)."""
    (older,) = [
        pushed
        for pushed in world.pushed
        if pushed.repository == newer.repository and pushed.digest in {image.digest for image in snapshot.images}
    ]
    changed = changed_layers(newer, older)
    kept = {layer["digest"] for layer in json.loads(older.manifest).get("layers", [])}
    gets_before = _blob_gets(world, newer.repository, kept)
    images, _parameters = loop.resolve([newer.repository])
    if [image.digest for image in images] != [newer.digest]:
        raise RuntimeError(f"{newer.repository}'s newest image is not {newer.digest}: {images}")
    boot = loop.boot_warm(f"behind-{len(loop.boots) + 1}", snapshot.snapshot_id, proxy=True)
    result = measure_boot(world, loop, boot, snapshot, images=images)
    changed_bytes = sum(changed.values())
    return {
        **result,
        "changed_layer_bytes": changed_bytes,
        "pulled_per_changed_byte": result["bytes_pulled"] / changed_bytes if changed_bytes else None,
        "unchanged_layers_downloaded": _blob_gets(world, newer.repository, kept) - gets_before,
    }


def _blob_gets(world: World, repository: str, digests: set[str]) -> int:
    """How many GETs of these blobs of the repository the registry has served."""
    assert world.registry is not None
    paths = {f"/v2/{repository}/blobs/{digest}" for digest in digests}
    return sum(1 for method, path in world.registry.requests() if method == "GET" and path in paths)
