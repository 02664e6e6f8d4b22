"""End-to-end overhead: from a push to the image cached on every node, minus the pulls themselves.

The local harness (harness.world.World): the stack emulated from template.yaml, the real ecr_push handler routed by
the template's rule, the Run Command agent, and real containerd nodes pulling from a registry on 127.0.0.1. The clock
starts as ECR's push event is put on the bus and stops, per node, when the agent records the node's run as ended;
the pull's own time is what the node reports (`seconds` of its per-image record). What is left is the application's
overhead: routing, the handler (DescribeImages, SendCommand, DynamoDB), SSM's fan-out, the script's start, login and
bookkeeping.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from bench.report import Row, Section, median, not_measured, ratio, verdict
from harness.node import missing_prerequisites
from harness.world import World

NODES = 5
TARGET_SECONDS = 1.0
REPOSITORY = "ml/trainer"
LAYERS_MB = [20.0, 20.0]
PARAMETERS = {
    "ClusterName": "bench",
    "RepositoryNames": REPOSITORY,
    "NodeTagGraceSeconds": "0",
    "NodeLaunchRetryBaseSeconds": "1",
    "NodeLaunchRetryMaxSeconds": "1",
    "MaxConcurrency": "100%",
}
FIGURES = [f"push → image on every node of {NODES}, minus the pulls (the last node)", "the same, median node"]


def one_push(world: World, tag: str, based_on: str | None) -> list[tuple[float, float]]:
    """(seconds from the push event to the node's run ended, the node's own pull seconds), per node."""
    image = world.push(REPOSITORY, tag, LAYERS_MB, based_on=based_on, emit=False)
    started = datetime.now(UTC)
    world.emit(world.push_event(image))
    world.settle(300)
    (command,) = [
        command
        for command in world.agent.commands.values()
        if image.digest in (command.values.get("images") or "") and len(command.invocations) == NODES
    ]
    per_node = []
    for invocation in command.invocations.values():
        if invocation.status != "Success" or invocation.ended is None:
            raise RuntimeError(f"{invocation.instance_id}: {invocation.status} {invocation.stderr[:200]}")
        (record,) = [json.loads(line) for line in invocation.stdout.splitlines() if '"summary"' not in line]
        if record["status"] != "pulled":
            raise RuntimeError(f"{invocation.instance_id}: {record}")
        per_node.append(((invocation.ended - started).total_seconds(), float(record["seconds"])))
    return per_node


def measure(section: Section, quick: bool) -> None:
    reason = missing_prerequisites()
    if reason:
        not_measured(section, FIGURES, f"needs real nodes: {reason} (root, make system-deps)")
        return
    rounds = 1 if quick else 3
    pushes: list[list[tuple[float, float]]] = []
    with World(dict(PARAMETERS), real_nodes=True) as world:
        for index in range(NODES):
            world.launch(f"node-{index + 1}")
        world.settle(120)
        previous = None
        for round_index in range(rounds):
            tag = f"v{round_index + 1}"
            pushes.append(one_push(world, tag, previous))
            previous = tag

    # Per push: the last node's overhead (every node cached), and the median node's.
    last = [max(total - pull for total, pull in push) for push in pushes]
    typical = [median([total - pull for total, pull in push]) for push in pushes]
    pulls = [median([pull for _total, pull in push]) for push in pushes]
    totals = [max(total for total, _pull in push) for push in pushes]
    overhead, pull = median(last), median(pulls)
    section.rows += [
        Row(
            FIGURES[0],
            f"{overhead:.2f} s (median of {rounds} push{'es' if rounds > 1 else ''}; push to all cached "
            f"{median(totals):.2f} s)",
            f"{pull:.2f} s (the pull itself, median node)",
            ratio(overhead, pull),
            f"< {TARGET_SECONDS:.0f} s",
            verdict(overhead < TARGET_SECONDS, f"by {overhead - TARGET_SECONDS:.2f} s"),
        ),
        Row(
            FIGURES[1],
            f"{median(typical):.2f} s",
            f"{pull:.2f} s (the pull itself, median node)",
            ratio(median(typical), pull),
            verdict="(reported)",
        ),
    ]
    section.notes.append(
        f"Method: `harness.world.World` on {NODES} real containerd nodes (root), `MaxConcurrency=100%` so that they "
        f"pull at once, a {sum(LAYERS_MB):.0f} MB image of random layers pushed to the registry on 127.0.0.1, "
        f"{rounds} successive pushes (each a new version on the last). Clock: from ECR's event on the bus to the "
        "agent's end of each node's run, minus the pull's `seconds` the node reports. Per push the figure is the "
        "last node's (the moment every node holds the image), then the median over pushes. Not in the clock: "
        "EventBridge's and SSM's own delivery latency on AWS (not emulated), Lambda's cold start (section 5). "
        f"The {NODES} pulls share this machine's 2 cores and disk, so the pull time is longer than one alone."
    )
