"""`make demo`: the whole application on this machine, with real pulls into real containerd nodes.

AWS is moto, in-process, with the stack created from template.yaml; the functions are the real handlers; SSM Run
Command is harness.agent; each node is its own containerd pulling from a registry on 127.0.0.1 that stands in for
ECR. Every process started here is stopped at the end, on Ctrl-C and on failure.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import signal
import statistics
import sys
import time
from typing import Any

from harness.agent import WINDOWS
from harness.cluster import Node, PushedImage
from harness.cri import Cri
from harness.node import PIN_LABEL
from harness.routing import Delivery
from harness.stack import ACCOUNT, REGION
from harness.warm import BUILDER_TAG, warm_scene
from harness.world import World

TRAINER = "ml/trainer"
TOOLS = "ml/tools"
GPU_POOL = {"eks:nodegroup-name": "gpu"}
# Demo settings, each a stack parameter override (printed at the start).
OVERRIDES = {
    "ClusterName": "demo",
    "RepositoryNames": f"{TRAINER},{TOOLS}",
    # The trainer image goes to the GPU pool only; the tools image to every cluster node.
    "RepositoryNodeSelectors": json.dumps({TRAINER: GPU_POOL}),
    # Two nodes pull at a time, so a third waits for a slot: SSM's rate control, visible.
    "MaxConcurrency": "2",
    "MaxErrors": "1",
    # Retention shown with one version: the new push unpins the old one.
    "PinnedVersionsToKeep": "1",
    # Instances here carry their tags from launch: no need to wait for tag propagation.
    "NodeTagGraceSeconds": "0",
    # Compressed backoff for a node whose agent registers late: 1 s, then 2 s (defaults 15 s doubling to 300 s).
    "NodeLaunchRetryBaseSeconds": "1",
    "NodeLaunchRetryMaxSeconds": "2",
    # A node that lacks the newest image is repaired by the next sweep, not 15 minutes after the push (default 900).
    "RepairGraceSeconds": "0",
    # The warm boot volume builder (a Step Functions state machine, run by moto) for the warm boot scene.
    "WarmVolumes": "true",
}
TRAINER_MB = [float(size) for size in os.environ.get("DEMO_IMAGE_MB", "100,100,100").split(",")]
TRAINER_UPDATE_MB = [float(os.environ.get("DEMO_UPDATE_MB", "30"))]
TOOLS_MB = [20.0]
LATE_AGENT_SECONDS = 4.0
SUMMARY_MARK = "DEMO SUMMARY "
# The registry name the functions send (the nodes' hosts.toml route it to the local registry).
ECR_HOST = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com"


class Narrator:
    def __init__(self) -> None:
        self.started = time.monotonic()
        self.tty = sys.stdout.isatty()
        self._last_progress = 0.0
        self._progress_shown = False

    def stamp(self) -> str:
        return f"[{time.monotonic() - self.started:6.1f}s]"

    def step(self, text: str) -> None:
        self.end_progress()
        print(f"\n{self.stamp()} {text}", flush=True)

    def line(self, text: str) -> None:
        self.end_progress()
        print(f"          {text}", flush=True)

    def progress(self, text: str) -> None:
        # On a terminal one line rewritten in place; in a log, a line every 2 seconds.
        if self.tty:
            print(f"\r          {text}\033[K", end="", flush=True)
            self._progress_shown = True
        elif time.monotonic() - self._last_progress >= 2:
            print(f"          {text}", flush=True)
            self._last_progress = time.monotonic()

    def end_progress(self) -> None:
        if self._progress_shown:
            print(flush=True)
            self._progress_shown = False


def _mb(size: float) -> str:
    return f"{size / 1e6:.0f} MB"


def main() -> int:
    say = Narrator()
    say.step("Starting: moto with the stack of template.yaml, the Run Command agent, a registry standing in for ECR")
    say.line("parameter overrides: " + " ".join(f"{key}={value}" for key, value in OVERRIDES.items()))
    world = World(OVERRIDES, on_delivery=lambda delivery: _narrate(say, delivery, world))

    def interrupt(_signum: int, _frame: Any) -> None:
        world.interrupted.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)
    try:
        with world:
            summary = run(world, say)
    except KeyboardInterrupt:
        say.step("Interrupted: every process started was stopped.")
        return 130
    say.step(f"Done in {time.monotonic() - say.started:.0f} s; every process started was stopped.")
    # One machine-readable line for the end-to-end test (and anyone scripting the demo).
    print(SUMMARY_MARK + json.dumps(summary, sort_keys=True), flush=True)
    return 0


def _narrate(say: Narrator, delivery: Delivery, world: World) -> None:
    """One line per function invocation: what the function did, from its result and its own log lines."""
    invocation = delivery.invocation
    if invocation is None:
        return
    if invocation.error:
        say.line(f"{delivery.target}: FAILED ({invocation.error_type}: {invocation.error})")
        return

    def name(instance_id: str) -> str:
        instance = world.instances.get(instance_id)
        return instance.name if instance else instance_id

    for record in invocation.records:
        message = record.get("message")
        if message == "node not ready, retrying later":
            say.line(
                f"{delivery.target}: {name(record['instance_id'])} not ready ({record['reason']}), attempt "
                f"{record['attempt']}: the message comes back in {record['retry_in_seconds']} s"
            )
        elif isinstance(message, str) and (message.startswith("giving up") or message.startswith("unsupported")):
            say.line(f"{delivery.target}: {message}")
        elif message == "prefetch command sent":
            if record.get("targets"):
                target = " AND ".join(f"{t['Key']}={','.join(t['Values'])}" for t in record["targets"])
            else:
                target = ", ".join(name(i) for i in record.get("instance_ids") or [record.get("instance_id", "")])
            what = "repair command" if record.get("repair") else "command"
            say.line(f"{delivery.target}: {what} {record['command_id'][:8]} sent to {target}")
        elif message in {"push ignored", "duplicate event: command already sent"}:
            say.line(f"{delivery.target}: {message} ({record.get('reason', record.get('command_id', ''))})")


def run(world: World, say: Narrator) -> dict[str, Any]:
    if world.dry_run_reason:
        say.line(f"DRY RUN: {world.dry_run_reason}. Nodes record what they would run; nothing is pulled.")
    else:
        assert world.registry is not None
        say.line(f"registry (ECR stand-in) on {world.registry.host}; document {world.stack.document_name}")
    summary: dict[str, Any] = {"dry_run": bool(world.dry_run_reason)}

    gpu = start_cluster(world, say)

    say.step(f"Push {TOOLS}:v1, built for linux/amd64 only (an index with one manifest): it goes to every node")
    tools = world.push(TOOLS, "v1", TOOLS_MB, emit=False, index_for="amd64")
    say.line(f"pushed {tools.digest[:19]}, {_mb(tools.size)} compressed")
    world.emit(world.push_event(tools))
    fan_out(world, say, tools.digest)

    say.step(f"Push {TRAINER}:v1 ({len(TRAINER_MB)} layers, {sum(TRAINER_MB):.0f} MB): the GPU pool only")
    trainer_v1 = world.push(TRAINER, "v1", TRAINER_MB, emit=False)
    say.line(f"pushed {trainer_v1.digest[:19]}, {_mb(trainer_v1.size)} compressed")
    cut = world.instances[gpu[1]].proxy
    if cut is not None:
        # gpu-2's connection to the registry drops 1 MB into the pull, and stays down until repaired below.
        cut.cut(after_bytes=1_000_000)
        say.line("gpu-2's network to the registry goes down 1 MB into its pull")
    world.emit(world.push_event(trainer_v1))
    fan_out(world, say, trainer_v1.digest)
    summary["failed"] = failed_records(world, trainer_v1.digest)

    summary["repair"] = self_repair(world, say, gpu[1])

    say.step(f"Push {TRAINER}:v2 (v1 plus a {TRAINER_UPDATE_MB[0]:.0f} MB layer): only v2 is pulled, v1 loses its pin")
    trainer_v2 = world.push(TRAINER, "v2", TRAINER_UPDATE_MB, based_on="v1", emit=False)
    say.line(f"pushed {trainer_v2.digest[:19]}")
    world.emit(world.push_event(trainer_v2))
    fan_out(world, say, trainer_v2.digest)
    show_pins(world, say, {"v1": trainer_v1.digest, "v2": trainer_v2.digest})

    say.step(f"Scale out: gpu-3 starts in the GPU pool, its SSM agent registers {LATE_AGENT_SECONDS:.0f} s later")
    late = world.launch("gpu-3", tags=GPU_POOL, register_after=LATE_AGENT_SECONDS)
    say.line(f"gpu-3: {late}; EC2 running -> NodeLaunchRule -> NodeLaunchQueue -> NodeLaunchFunction")
    world.settle(120, tick=lambda: _progress(world, say))
    (command,) = [c for c in world.agent.commands.values() if late in c.invocations]
    node_report(world, say, command.command_id, late)

    summary.update(warm_scene(world, say, tags=GPU_POOL))

    say.step("What kubelet sees: the CRI's ImageStatus for the tag a pod names")
    summary["cri"] = cri_view(world, say, {TRAINER: trainer_v2, TOOLS: tools})

    say.step("Status")
    summary.update(status_view(world, say))
    return summary


def start_cluster(world: World, say: Narrator) -> list[str]:
    """The mixed cluster; returns the GPU pool's nodes (gpu-2 reaches the registry through a proxy that can cut)."""
    say.step("Cluster: a GPU pool, a CPU pool with an arm64 node, a Windows node, and an instance that is not a node")
    gpu = [world.launch("gpu-1", tags=GPU_POOL), world.launch("gpu-2", tags=GPU_POOL, proxy=True)]
    cpu = world.launch("cpu-1", tags={"eks:nodegroup-name": "cpu"})
    graviton = world.launch("cpu-arm-1", tags={"eks:nodegroup-name": "cpu-arm"}, uname_machine="aarch64")
    windows = world.launch("win-1", tags={"eks:nodegroup-name": "win"}, platform=WINDOWS)
    bastion = world.launch("bastion", node=False)
    for instance_id in (*gpu, cpu, graviton, windows):
        instance = world.instances[instance_id]
        pool = world.tags(instance_id).get("eks:nodegroup-name")
        say.line(f"{instance.name}: {instance_id}, pool {pool}, tagged {'='.join(world.node_tag)}, SSM agent online")
    say.line("cpu-arm-1 is arm64 as its script sees it (`uname -m`, emulated on this x86 machine)")
    say.line("win-1 reports PlatformType Windows to SSM: the document's step has a Linux precondition")
    say.line(f"bastion: {bastion}, SSM agent online, no cluster tag")
    world.settle(60)
    say.line("their launch events went through NodeLaunchRule -> queue -> NodeLaunchFunction: nothing pushed yet")
    return gpu


def self_repair(world: World, say: Narrator, broken: str) -> dict[str, Any]:
    """The sweep finds the node that failed, its network comes back, and the sweep's repair heals it."""
    say.step("Self-repair: the status function's sweep finds gpu-2 without the newest trainer image")
    status_function_view(world, say)
    world.instances[broken].node.route(world.registry.host if world.registry else "")
    say.line("gpu-2's network is back")
    before = set(world.agent.commands)
    repaired = sweep(world, say)
    world.settle(300, tick=lambda: _progress(world, say))
    for command_id in set(world.agent.commands) - before:
        for instance_id in world.agent.commands[command_id].invocations:
            node_report(world, say, command_id, instance_id)
    show_backoff(world, say, broken)
    return repaired


def fan_out(world: World, say: Narrator, digest: str) -> None:
    world.settle(300, tick=lambda: _progress(world, say))
    commands = [command for command in world.agent.commands.values() if digest in command.values["images"]]
    for command in commands:
        for instance_id in command.invocations:
            node_report(world, say, command.command_id, instance_id)


_BASELINE: dict[tuple[str, str], int] = {}


def _content_bytes(world: World, instance_id: str) -> int:
    """Bytes in the node's containerd content store, downloads in progress included (its real disk)."""
    node = world.instances[instance_id].node
    if node.dry_run:
        return 0
    content = node.containerd.root / "io.containerd.content.v1.content"
    total = 0
    for path in (content / "blobs", content / "ingest"):
        for directory, _dirs, files in os.walk(path):
            for name in files:
                with contextlib.suppress(OSError):
                    total += os.stat(os.path.join(directory, name)).st_size
    return total


def _progress(world: World, say: Narrator) -> None:
    running = [command for command in world.agent.commands.values() if not command.done.is_set()]
    if not running:
        return
    parts = []
    for command in running:
        for invocation in command.invocations.values():
            key = (command.command_id, invocation.instance_id)
            if key not in _BASELINE:
                _BASELINE[key] = _content_bytes(world, invocation.instance_id)
            detail = ""
            if invocation.started and invocation.status == "InProgress":
                fetched = _content_bytes(world, invocation.instance_id) - _BASELINE[key]
                detail = f" {time.time() - invocation.started.timestamp():.0f}s {_mb(max(fetched, 0))}"
            parts.append(f"{invocation.instance_name} {invocation.status}{detail}")
    say.progress("pulling: " + " | ".join(parts))


def node_report(world: World, say: Narrator, command_id: str, instance_id: str) -> None:
    """One node's result, from GetCommandInvocation (the node's JSON lines) and from its containerd."""
    invocation = world.invocation(command_id, instance_id)
    name = world.instances[instance_id].name
    stdout = invocation["StandardOutputContent"]
    lines = _json_lines(stdout)
    images = [line for line in lines if "image" in line]
    detail = ", ".join(_image_result(line) for line in images)
    if any(line.get("dry_run") for line in lines):
        detail = "DRY RUN, nothing pulled"
    elif not lines and stdout.startswith("Step execution skipped"):
        detail = f"no script run: {stdout}"
    say.line(f"{name}: {invocation['Status']:<9} {detail}")


def _image_result(line: dict[str, Any]) -> str:
    repository = line["image"].split("/", 1)[-1].split("@")[0].split(":")[0]
    text = f"{repository} {line['status']}"
    if line["status"] in {"pulled", "cached"}:
        text += f" {line.get('digest', '')[:19]} in {line.get('seconds', 0)} s"
        if line.get("bytes"):
            text += f" (image {_mb(line['bytes'])})"
    elif line.get("reason"):
        text += f" (reason {line['reason']})"
    if line.get("status") == "failed" and line.get("error"):
        text += f": {line['error'][:120]}"
    return text


def failed_records(world: World, digest: str) -> list[dict[str, str]]:
    """The nodes whose run of a command for ``digest`` failed, with the stable reason their script gave."""
    failed = []
    for command in world.agent.commands.values():
        if digest not in command.values["images"]:
            continue
        for instance_id, invocation in command.invocations.items():
            for line in _json_lines(invocation.full_stdout):
                if line.get("status") == "failed":
                    failed.append({"node": world.instances[instance_id].name, "reason": line.get("reason", "")})
    return failed


def sweep(world: World, say: Narrator) -> dict[str, Any]:
    """The status function's 5-minute schedule, fired now: it counts what it finds and repairs what is missing."""
    result: dict[str, Any] = {}
    for delivery in world.router.fire_schedules("StatusFunction"):
        if delivery.invocation and isinstance(delivery.invocation.result, dict):
            result = delivery.invocation.result
            say.line(
                f"{delivery.target} sweep: {result.get('commands')} command(s) looked at, {result.get('counted')} "
                f"counted now (events lost), {result.get('already_counted')} already counted"
            )
            repaired = result.get("repair") or {}
            if repaired.get("commands_sent"):
                say.line(
                    f"{delivery.target} repair: {repaired['commands_sent']} command(s) to "
                    f"{repaired['nodes_repaired']} node(s), {repaired.get('nodes_backed_off', 0)} backed off"
                )
    return result.get("repair") or {}


def show_backoff(world: World, say: Narrator, instance_id: str) -> None:
    """What the node's row records of its repair: the attempt, and when the next one could come if this one had not
    healed it (the backoff that keeps a node that cannot pull from a command every sweep)."""
    function = world.stack.functions.get("StatusFunction")
    if function is None:
        return
    with function.container(fresh=True):
        table = importlib.import_module("eks_prefetch.status.table")
        settings_module = importlib.import_module("eks_prefetch.settings")
        settings = settings_module.load(settings_module.StatusSettings)
        state = table.read_repair_states(settings, [instance_id]).get(instance_id)
    if state is None or not state.attempts:
        return
    name = world.instances[instance_id].name
    say.line(
        f"{name}'s row: repair attempt {state.attempts} sent at {state.sent_at}; had it failed, no new repair before "
        f"{state.next_at} (10 min, doubling up to RepairBackoffCapSeconds)"
    )


def show_pins(world: World, say: Narrator, versions: dict[str, str]) -> None:
    """Each node holding one of these versions: which are pinned in its containerd (the label the script sets)."""
    for instance in world.nodes():
        images = instance.node.images()
        states = []
        for tag, digest in versions.items():
            found = [image for image in images.values() if image["digest"] == digest]
            if not found:
                states.append(f"{tag} absent")
            else:
                states.append(f"{tag} {'pinned' if found[0]['labels'].get(PIN_LABEL) == 'pinned' else 'unpinned'}")
        if any(not state.endswith("absent") for state in states):
            say.line(f"{instance.name} containerd: {', '.join(states)}")


def _json_lines(text: str) -> list[dict[str, Any]]:
    parsed = []
    for line in text.splitlines():
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            parsed.append(value)
    return parsed


def cri_view(world: World, say: Narrator, newest: dict[str, PushedImage]) -> dict[str, dict[str, Any]]:
    """Per node, its containerd release, the snapshotter the CRI keeps images in (ImageFsInfo, kubelet's view) and the
    bytes on disk (unpacked layers there, and blobs: with discard_unpacked_layers, as EKS configures it, no compressed
    layer stays), and, for each repository's newest image, what the CRI's ImageStatus says of the reference a pod spec
    names (registry/repository:tag): present, pinned against kubelet's GC, its platform."""
    view: dict[str, dict[str, Any]] = {}
    for instance in world.nodes():
        node = instance.node
        if node.dry_run:
            reason = getattr(node, "reason", "")
            say.line(f"{instance.name}: no containerd here ({reason})")
            view[instance.name] = {"containerd": None}
            continue
        assert isinstance(node, Node) and world.registry is not None
        release = node.containerd.version
        entry: dict[str, Any] = {"containerd": release}
        parts = []
        with Cri(node.containerd.address) as cri:
            snapshotters = sorted({filesystem.snapshotter for filesystem in cri.image_filesystems()})
            on_disk = node.containerd.bytes_on_disk()
            entry["node"] = {"snapshotter": ",".join(snapshotters), **on_disk}
            for repository, image in newest.items():
                status = cri.image_status(f"{ECR_HOST}/{repository}:{image.tag}")
                if status is None:
                    entry[repository] = {"present": False}
                    parts.append(f"{repository}:{image.tag} not present")
                    continue
                entry[repository] = {"present": True, "pinned": status.pinned, "platform": status.platform}
                pin = {True: "pinned", False: "NOT pinned", None: "no pin in this CRI"}[status.pinned]
                parts.append(f"{repository}:{image.tag} present, {pin}, {status.platform}")
        view[instance.name] = entry
        snapshotter = entry["node"]["snapshotter"]
        disk = f"{_mb(on_disk['unpacked'])} unpacked in {snapshotter}, {_mb(on_disk['blobs'])} of blobs"
        say.line(f"{instance.name} (containerd {release}; {disk}): {'; '.join(parts)}")
    return view


def status_function_view(world: World, say: Narrator) -> dict[str, Any]:
    """`make status` for the emulated stack: the status function's code, in a fresh environment of the function
    (the operator's command is a process of its own). Returns each repository's coverage and the unsupported nodes."""
    function = world.stack.functions.get("StatusFunction")
    if function is None:
        return {}
    with function.container(fresh=True):
        report = importlib.import_module("prefetchctl.status")
        coverage = importlib.import_module("eks_prefetch.status.coverage")
        resolution = importlib.import_module("eks_prefetch.prefetch.resolution")
        settings_module = importlib.import_module("eks_prefetch.settings")
        settings = settings_module.load(settings_module.StatusSettings)
        text = io.StringIO()
        report.report_fleet(report.StackView(settings), text)
        fleet = coverage.look_at_fleet(settings, resolution.NewestImages(settings))
    say.line("make status (the status function's code, on the emulated stack):")
    for line in text.getvalue().splitlines():
        say.line(f"  {line}")

    def name(instance_id: str) -> str:
        return world.instances[instance_id].name

    return {
        # The contract for scripts and CI: repository -> percent.
        "coverage": {c.repository: round(c.percent, 1) for c in fleet.coverages},
        "coverage_detail": {
            c.repository: {
                "percent": round(c.percent, 1),
                "nodes": sorted(name(n) for n in c.online),
                "missing": sorted(name(state.instance_id) for state in c.missing),
            }
            for c in fleet.coverages
        },
        "unsupported": {name(node): why for node, why in fleet.unsupported.items()},
    }


def status_view(world: World, say: Narrator) -> dict[str, Any]:
    """The sweep, then `make status`; then this run's own record: the agent's invocations, the dead-letter queues,
    and the metrics the functions emitted."""
    function = world.stack.functions.get("StatusFunction")
    if function is not None:
        counted = [
            i.result for i in function.invocations if isinstance(i.result, dict) and i.result.get("result") == "counted"
        ]
        say.line(f"StatusFunction counted {len(counted)} invocation(s) from their status events")
        sweep(world, say)
    found = status_function_view(world, say)
    invocations = [
        (command, invocation)
        for command in world.agent.commands.values()
        for invocation in command.invocations.values()
    ]
    latencies = [
        (invocation.ended - command.requested).total_seconds()
        for command, invocation in invocations
        if invocation.ended
    ]
    failures = [invocation for _command, invocation in invocations if invocation.status != "Success"]
    if latencies:
        say.line(
            f"{len(world.agent.commands)} commands, {len(invocations)} invocations; send-to-done "
            f"median {statistics.median(latencies):.1f} s, max {max(latencies):.1f} s"
        )
    say.line(f"failed or cancelled invocations: {len(failures)}")
    dead_letters = {}
    for logical_id in world.stack.queues:
        if "DeadLetter" in logical_id:
            dead_letters[logical_id] = len(world.queue_messages(logical_id))
            say.line(f"{logical_id}: {dead_letters[logical_id]} message(s)")
    touched = []
    for instance in world.instances.values():
        # The warm volume builder is the one instance outside the cluster that is sent commands (its own build).
        if not instance.is_node and BUILDER_TAG not in world.tags(instance.instance_id):
            sent = any(instance.instance_id in command.invocations for command in world.agent.commands.values())
            touched += [instance.name] if sent else []
            say.line(f"{instance.name} (not a node): {'sent a command!' if sent else 'never sent a command'}")
    series = cloudwatch_metrics(world, say)
    metrics: dict[str, dict[str, float]] = {}
    for (name, _dimensions), (_unit, values) in emf_totals(world).items():
        figures = metrics.setdefault(name, {"points": 0, "sum": 0.0})
        figures["points"] += len(values)
        figures["sum"] += sum(values)
    return {
        **found,
        "dead_letters": dead_letters,
        "non_nodes_sent_commands": touched,
        "metric_series": series,
        # Per metric name, over its series: what the end-to-end test checks.
        "metrics": metrics,
    }


def emf_totals(world: World) -> dict[tuple[str, str], tuple[str, list[float]]]:
    """(metric, dimensions) -> (unit, values) of every EMF document the functions printed: what CloudWatch would
    turn into metrics. Each dimension set of a document is a series of its own (``service`` included, as
    CloudWatch keeps it)."""
    totals: dict[tuple[str, str], tuple[str, list[float]]] = {}
    for function in world.stack.functions.values():
        for invocation in function.invocations:
            for record in invocation.records:
                for directive in record.get("_aws", {}).get("CloudWatchMetrics", []):
                    for dimension_set in directive["Dimensions"]:
                        dimensions = ",".join(f"{name}={record[name]}" for name in sorted(dimension_set))
                        for metric in directive["Metrics"]:
                            value = record[metric["Name"]]
                            unit = metric.get("Unit", "")
                            _unit, values = totals.setdefault((metric["Name"], dimensions), (unit, []))
                            values.extend(value if isinstance(value, list) else [value])
    return totals


def cloudwatch_metrics(world: World, say: Narrator) -> int:
    """The metrics the functions emitted (EMF lines, no PutMetricData), one row per series: for counts the data
    points and their sum; for latencies the count, p50 and max; otherwise the last value and the max."""
    totals = emf_totals(world)
    say.line(f"metrics that would reach CloudWatch (namespace EksImagePrefetch), {len(totals)} series:")
    for (name, dimensions), (unit, values) in sorted(totals.items()):
        if unit == "Count":
            # Events (summed) and gauges (their last value) share the unit: both figures.
            figure = f"{len(values)} point(s), sum {sum(values):g}, last {values[-1]:g}"
        elif unit == "Seconds":
            figure = f"count {len(values)}, p50 {statistics.median(values):.1f} s, max {max(values):.1f} s"
        else:
            figure = f"last {values[-1]:g}, max {max(values):g} {unit.lower()}"
        say.line(f"  {name:<26} {dimensions:<58} {figure}")
    return len(totals)


if __name__ == "__main__":
    sys.exit(main())
