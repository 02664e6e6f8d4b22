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

from harness.node import PIN_LABEL
from harness.routing import Delivery
from harness.world import World

REPOSITORY = "ml/trainer"
# Demo settings, each a stack parameter override (printed at the start).
OVERRIDES = {
    "ClusterName": "demo",
    "RepositoryNames": REPOSITORY,
    # Two nodes pull at a time, so the third waits for a slot: SSM's rate control, visible.
    "MaxConcurrency": "2",
    "MaxErrors": "1",
    # Retention shown with one version: the new push unpins the old one.
    "PinnedVersionsToKeep": "1",
    # Instances here carry their tags from launch: no need to wait for tag propagation.
    "NodeTagGraceSeconds": "0",
    # Compressed backoff for a node whose agent registers late: 1 s, then 2 s (defaults 15 s doubling to 300 s).
    "NodeLaunchRetryBaseSeconds": "1",
    "NodeLaunchRetryMaxSeconds": "2",
}
V1_LAYERS_MB = [float(size) for size in os.environ.get("DEMO_IMAGE_MB", "100,100,100").split(",")]
V2_EXTRA_MB = [float(os.environ.get("DEMO_UPDATE_MB", "30"))]
LATE_AGENT_SECONDS = 4.0


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
    world = World(OVERRIDES, on_delivery=lambda delivery: _narrate(say, delivery))

    def interrupt(_signum: int, _frame: Any) -> None:
        world.interrupted.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)
    try:
        with world:
            run(world, say)
    except KeyboardInterrupt:
        say.step("Interrupted: every process started was stopped.")
        return 130
    say.step(f"Done in {time.monotonic() - say.started:.0f} s; every process started was stopped.")
    return 0


def _narrate(say: Narrator, delivery: Delivery) -> None:
    """One line per function invocation: what the function did, from its result and its own log lines."""
    invocation = delivery.invocation
    if invocation is None:
        return
    if invocation.error:
        say.line(f"{delivery.target}: FAILED ({invocation.error_type}: {invocation.error})")
        return
    for record in invocation.records:
        message = record.get("message")
        if message == "node not ready, retrying later":
            say.line(
                f"{delivery.target}: {record['instance_id']} not ready ({record['reason']}), attempt "
                f"{record['attempt']}: the message comes back in {record['retry_in_seconds']} s"
            )
        elif isinstance(message, str) and message.startswith("giving up"):
            say.line(f"{delivery.target}: {message}")
        elif message == "prefetch command sent":
            if record.get("targets"):
                target = " ".join(f"{t['Key']}={','.join(t['Values'])}" for t in record["targets"])
            else:
                target = record.get("instance_id")
            say.line(f"{delivery.target}: command {record['command_id'][:8]} sent to {target}")
        elif message in {"push ignored", "duplicate event: command already sent"}:
            say.line(f"{delivery.target}: {message} ({record.get('reason', record.get('command_id', ''))})")


def run(world: World, say: Narrator) -> None:
    if world.dry_run_reason:
        say.line(f"DRY RUN: {world.dry_run_reason}. Nodes record what they would run; nothing is pulled.")
    else:
        assert world.registry is not None
        say.line(f"registry (ECR stand-in) on {world.registry.host}; document {world.stack.document_name}")

    say.step("Cluster: 3 nodes (each its own containerd, unless a dry run) and 1 instance that is not a node")
    for name in ("node-1", "node-2", "node-3"):
        instance_id = world.launch(name)
        say.line(f"{name}: {instance_id}, tagged {'='.join(world.node_tag)}, SSM agent online")
    bastion = world.launch("bastion", node=False)
    say.line(f"bastion: {bastion}, SSM agent online, no cluster tag")
    world.settle(60)
    say.line("their launch events went through NodeLaunchRule -> queue -> NodeLaunchFunction: nothing pushed yet")

    say.step(f"Push {REPOSITORY}:v1 ({len(V1_LAYERS_MB)} random layers, {sum(V1_LAYERS_MB):.0f} MB)")
    v1 = world.push(REPOSITORY, "v1", V1_LAYERS_MB, emit=False)
    say.line(f"pushed {v1.digest[:19]}, {_mb(v1.size)} compressed; ECR emits ECR Image Action")
    world.emit(world.push_event(v1))
    fan_out(world, say, v1.digest)

    say.step(f"Push {REPOSITORY}:v2 (v1 plus a {V2_EXTRA_MB[0]:.0f} MB layer): only v2 is pulled, v1 loses its pin")
    v2 = world.push(REPOSITORY, "v2", V2_EXTRA_MB, based_on="v1", emit=False)
    say.line(f"pushed {v2.digest[:19]}; ECR emits ECR Image Action")
    world.emit(world.push_event(v2))
    fan_out(world, say, v2.digest)
    (command,) = [c for c in world.commands() if v2.digest in c["Parameters"]["images"][0]]
    sent = command["Parameters"]["images"][0].split(",")
    say.line(f"the command named {len(sent)} image(s): {', '.join(ref.rsplit('/', 1)[-1][:32] for ref in sent)}")
    show_pins(world, say, {"v1": v1.digest, "v2": v2.digest})

    say.step(f"Scale out: node-4 starts, its SSM agent registers {LATE_AGENT_SECONDS:.0f} s later")
    late = world.launch("node-4", register_after=LATE_AGENT_SECONDS)
    say.line(f"node-4: {late}; EC2 running -> NodeLaunchRule -> NodeLaunchQueue -> NodeLaunchFunction")
    world.settle(120, tick=lambda: _progress(world, say))
    (command,) = [c for c in world.agent.commands.values() if late in c.invocations]
    node_report(world, say, command.command_id, late)

    say.step("Status")
    status_view(world, say, {"v1": v1.digest, "v2": v2.digest})


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
    lines = _json_lines(invocation["StandardOutputContent"])
    images = [line for line in lines if "image" in line]
    detail = ", ".join(
        f"{line['status']} {line.get('digest', '')[:19]} in {line.get('seconds', 0)} s"
        + (f" (image {_mb(line['bytes'])})" if line.get("bytes") else "")
        + (f" error: {line['error']}" if line.get("error") else "")
        for line in images
    )
    if any(line.get("dry_run") for line in lines):
        detail = "DRY RUN, nothing pulled"
    say.line(f"{name}: {invocation['Status']:<9} {detail}")


def show_pins(world: World, say: Narrator, versions: dict[str, str]) -> None:
    for instance in world.nodes():
        images = instance.node.images()
        states = []
        for tag, digest in versions.items():
            found = [image for image in images.values() if image["digest"] == digest]
            if not found:
                states.append(f"{tag} absent")
            else:
                states.append(f"{tag} {'pinned' if found[0]['labels'].get(PIN_LABEL) == 'pinned' else 'unpinned'}")
        say.line(f"{instance.name} containerd: {', '.join(states)}")


def _json_lines(text: str) -> list[dict[str, Any]]:
    parsed = []
    for line in text.splitlines():
        try:
            parsed.append(json.loads(line))
        except ValueError:
            continue
    return parsed


def status_function_view(world: World, say: Narrator) -> bool:
    """The status function's own view: its sweep (the 5-minute schedule, fired now), then the coverage `make status`
    prints for a deployed stack, computed by the same code in the function's environment. False without one."""
    function = world.stack.functions.get("StatusFunction")
    if function is None:
        return False
    counted = [
        i.result for i in function.invocations if isinstance(i.result, dict) and i.result.get("result") == "counted"
    ]
    say.line(f"StatusFunction counted {len(counted)} invocation(s) from their status events")
    for delivery in world.router.fire_schedules():
        if delivery.invocation and isinstance(delivery.invocation.result, dict):
            result = delivery.invocation.result
            say.line(
                f"{delivery.target} sweep: {result.get('commands')} command(s) looked at, {result.get('counted')} "
                f"counted now (events lost), {result.get('already_counted')} already counted"
            )
    with function.container(fresh=True):  # `make status` is a process of its own
        report = importlib.import_module("eks_prefetch.report")
        coverage = importlib.import_module("eks_prefetch.coverage")
        resolution = importlib.import_module("eks_prefetch.resolution")
        settings = importlib.import_module("eks_prefetch.settings").get_settings()
        coverages = coverage.look_at_fleet(settings, resolution.NewestImages(settings)).coverages
        text = io.StringIO()
        report.render(coverages, settings.cluster_name, text)
    say.line("make status (the status function's code, on the emulated stack):")
    for line in text.getvalue().splitlines():
        say.line(f"  {line}")
    return True


def status_view(world: World, say: Narrator, versions: dict[str, str]) -> None:
    """The status function's view if the stack has one; then this run's own record: coverage from containerd's real
    state, latencies and failures from the agent's records, the dead-letter queues."""
    status_function_view(world, say)
    newest = next(reversed(versions.values()))
    nodes = world.nodes()
    having = [
        instance.name for instance in nodes if any(i["digest"] == newest for i in instance.node.images().values())
    ]
    say.line(f"{REPOSITORY}: newest {newest[:19]} on {len(having)}/{len(nodes)} nodes ({', '.join(having)})")
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
    for logical_id in world.stack.queues:
        if "DeadLetter" in logical_id:
            say.line(f"{logical_id}: {len(world.queue_messages(logical_id))} message(s)")
    non_nodes = [instance for instance in world.instances.values() if not instance.is_node]
    for instance in non_nodes:
        touched = any(instance.instance_id in command.invocations for command in world.agent.commands.values())
        say.line(f"{instance.name} (not a node): {'sent a command!' if touched else 'never sent a command'}")
    cloudwatch_metrics(world, say)


def emf_totals(world: World) -> dict[tuple[str, str], tuple[str, list[float]]]:
    """(metric, dimensions) -> (unit, values) of every EMF document the functions printed: what CloudWatch would
    turn into metrics."""
    totals: dict[tuple[str, str], tuple[str, list[float]]] = {}
    for function in world.stack.functions.values():
        for invocation in function.invocations:
            for record in invocation.records:
                for directive in record.get("_aws", {}).get("CloudWatchMetrics", []):
                    names = [name for dimension_set in directive["Dimensions"] for name in dimension_set]
                    dimensions = ",".join(f"{name}={record[name]}" for name in names if name != "service")
                    for metric in directive["Metrics"]:
                        value = record[metric["Name"]]
                        _unit, values = totals.setdefault((metric["Name"], dimensions), (metric.get("Unit", ""), []))
                        values.extend(value if isinstance(value, list) else [value])
    return totals


def cloudwatch_metrics(world: World, say: Narrator) -> None:
    """The metrics the functions emitted (EMF lines, no PutMetricData): sums for counts, last and max otherwise."""
    totals = emf_totals(world)
    say.line(f"metrics that would reach CloudWatch (namespace EksImagePrefetch), {len(totals)} series:")
    for (name, dimensions), (unit, values) in sorted(totals.items()):
        if unit == "Count":
            figure = f"sum {sum(values):g}"
        else:
            figure = f"last {values[-1]:g}, max {max(values):g} {unit.lower()}"
        say.line(f"  {name:<26} {dimensions or '-':<40} {figure}")


if __name__ == "__main__":
    sys.exit(main())
