"""AWS API calls per push, per new node and per burst of launches, counted with botocore event hooks in the real code
paths against moto (testing/apicalls.py, the same scenarios tests/integration/test_api_calls.py asserts).

Baseline: the blog recipe, where every node runs DescribeImages and GetAuthorizationToken itself (2 calls per node
per push; per new node, one DescribeImages per repository and one GetAuthorizationToken). That is the recipe's
definition, not a measurement: it has no code here to count.
"""

from __future__ import annotations

import contextlib
import io

from bench.report import Row, Section, ratio, verdict
from testing.apicalls import (
    CONTROL_PLANE,
    ApiCalls,
    calls_per_launch_burst,
    calls_per_push,
    calls_per_status_event,
    calls_per_sweep,
)

TARGET_PER_PUSH = 3
# Per counted invocation of a push, before issue 26 (this section's scenario run on bf71200): GetCommandInvocation and
# DescribeInstances (the node's launch time, for LaunchToCachedSeconds), and 6 DynamoDB calls for a node that had
# reported before (the first-report marker's conditional write failing, then its read).
BEFORE_PER_INVOCATION = 2
BEFORE_PER_INVOCATION_DYNAMODB = 6


def _split(calls: ApiCalls) -> str:
    """ECR/SSM/EC2 calls, then DynamoDB apart, with the operations."""
    control = ", ".join(f"{key.split(':')[1]} {count}" for key, count in sorted(calls.only(CONTROL_PLANE).items()))
    return f"{calls.total()} ({control}); DynamoDB {calls.total(('dynamodb',))}"


def measure(section: Section, quick: bool) -> None:
    fleets = (1, 100) if quick else (1, 100, 1_000, 10_000)  # 10,000: about 100 s of moto
    repositories_images = (10, 1_001) if quick else (10, 1_000, 1_001, 5_000)
    watched = (1, 20) if quick else (1, 5, 20)
    burst = 30 if quick else 100
    sweep_sizes = (10, 1_000) if quick else (10, 100, 1_000, 10_000)
    lost_size = 100 if quick else 1_000

    with contextlib.redirect_stdout(io.StringIO()):
        pushes = {fleet: calls_per_push(fleet=fleet, images=10) for fleet in fleets}
        listings = {images: calls_per_push(fleet=1, images=images) for images in repositories_images}
        new_nodes = {count: calls_per_launch_burst(launches=1, repositories=count) for count in watched}
        ready = calls_per_launch_burst(launches=1, repositories=2)
        polled = calls_per_launch_burst(launches=1, repositories=2, not_ready_polls=3)
        bursts = calls_per_launch_burst(launches=burst, repositories=2)
        sweeps = {count: calls_per_sweep(invocations=count) for count in sweep_sizes}
        lost = calls_per_sweep(invocations=lost_size, events_lost=True)
        repairing = calls_per_sweep(invocations=0, missing=500)
        events = {
            command: calls_per_status_event(command=command, reported_before=True)
            for command in ("push", "new-node", "new-node-legacy")
        }

    for fleet, calls in pushes.items():
        blog = 2 * fleet
        section.rows.append(
            Row(
                f"per push, fleet of {fleet:,} node{'s' if fleet > 1 else ''}, 10 images",
                _split(calls),
                f"{blog:,} (on the nodes)",
                ratio(calls.total(), blog),
                f"≤ {TARGET_PER_PUSH}, constant in fleet size",
                verdict(calls.total() <= TARGET_PER_PUSH and calls.total() == pushes[fleets[0]].total()),
            )
        )
    if 10_000 not in pushes:
        section.rows.append(
            Row(
                "per push, fleet of 10,000 nodes",
                f"{pushes[fleets[-1]].total()} (extrapolated)",
                "20,000 (on the nodes)",
                ratio(pushes[fleets[-1]].total(), 20_000),
                f"≤ {TARGET_PER_PUSH}, constant in fleet size",
                "not measured in a quick run (moto takes ~100 s for 10,000 instances); extrapolated from the counts "
                f"above, equal from 1 to {fleets[-1]:,} nodes (tag targets: the functions never list the fleet)",
            )
        )
    for images, calls in listings.items():
        pages = -(-images // 1000)
        met = calls.total() <= TARGET_PER_PUSH
        section.rows.append(
            Row(
                f"per push, repository of {images:,} images",
                _split(calls),
                "2 per node",
                "—",
                f"≤ {TARGET_PER_PUSH}",
                verdict(
                    met,
                    f"by {calls.total() - TARGET_PER_PUSH}: ECR lists at most 1,000 images a page, "
                    f"so {pages} DescribeImages pages",
                ),
            )
        )
    for count, calls in new_nodes.items():
        blog = count + 1
        section.rows.append(
            Row(
                f"per new node, {count} watched repositor{'y' if count == 1 else 'ies'}",
                _split(calls),
                f"{blog} (on the node)",
                ratio(calls.total(), blog),
                verdict="(reported: one DescribeImages per repository, one command per 50; DynamoDB: the send's 3 and "
                "the new-node schedule's reservation)",
            )
        )
    # Three looks before the agent is online, then the ready one: the difference from a ready node is their cost.
    looks = polled.invocations - ready.invocations
    section.rows.append(
        Row(
            "per look at a node whose agent is not online yet",
            f"{(polled.total() - ready.total()) // looks} (DescribeInstances, DescribeInstanceInformation); "
            f"SQS ChangeMessageVisibility {polled.counts['sqs:ChangeMessageVisibility'] // looks}",
            "0 (the recipe waits on the node)",
            "—",
            verdict="(reported: times the looks of section 2)",
        )
    )
    blog = burst * 3
    section.rows.append(
        Row(
            f"per burst of {burst} launches, 2 repositories, one container",
            f"{_split(bursts)}; {bursts.invocations} invocations",
            f"{blog} (on the nodes)",
            ratio(bursts.total(), blog),
            verdict="(reported: DescribeImages once per repository per invocation, a batch of up to 10 records)",
        )
    )
    push_event = events["push"]
    section.rows.append(
        Row(
            "per counted invocation of a push, the node reported before (status event, warm container)",
            _split(push_event),
            f"{BEFORE_PER_INVOCATION} (GetCommandInvocation 1, DescribeInstances 1); DynamoDB "
            f"{BEFORE_PER_INVOCATION_DYNAMODB} (before issue 26)",
            ratio(push_event.total(), BEFORE_PER_INVOCATION),
            "fewer than before; no DescribeInstances",
            verdict(
                push_event.total() < BEFORE_PER_INVOCATION and not push_event.counts["ec2:DescribeInstances"],
                "an EC2 call per invocation",
            ),
        )
    )
    for command, why in (
        ("new-node", "the launch time from the command's Comment"),
        ("new-node-legacy", "a command sent before its Comment carried the launch time: EC2 gives it"),
    ):
        section.rows.append(
            Row(
                f"per counted invocation of a new node's command ({command}), a later report of the launch",
                _split(events[command]),
                f"{BEFORE_PER_INVOCATION}; DynamoDB {BEFORE_PER_INVOCATION_DYNAMODB} (before issue 26)",
                ratio(events[command].total(), BEFORE_PER_INVOCATION),
                verdict=f"(reported: {why})",
            )
        )
    for count, calls in sweeps.items():
        pages = -(-count // 50)
        linear = calls.total() == 2 + 2 * pages and calls.total(("dynamodb",)) == 2 + 2 * -(-count // 100)
        # The per-node alternative: one GetCommandInvocation (SSM) and one claim read (DynamoDB) per invocation.
        section.rows.append(
            Row(
                f"per status sweep, {count:,} invocations already counted, 1 repository",
                _split(calls),
                f"{2 * count:,} (by definition: a GetCommandInvocation and a claim read per node)",
                ratio(calls.total() + calls.total(("dynamodb",)), 2 * count),
                "linear in pages (50 SSM, 100 DynamoDB), never per node",
                verdict(linear, "calls grow per node"),
            )
        )
    section.rows.append(
        Row(
            f"per status sweep, {lost_size:,} invocations whose events were lost",
            _split(lost),
            f"{lost_size:,} invocations counted",
            "—",
            verdict="(reported: each lost invocation read once with GetCommandInvocation, as its event would have "
            "been)",
        )
    )
    bound = repairing.counts["ssm:SendCommand"]
    section.rows.append(
        Row(
            "per repairing sweep, 500 online nodes missing the newest image (bound 200 a sweep)",
            _split(repairing),
            "500 nodes missing",
            "—",
            "bounded: ≤ 200 nodes, commands of ≤ 50 ids",
            verdict(bound == 4 and repairing.counts["dynamodb:UpdateItem"] <= 200 + 2 * bound, "unbounded"),
        )
    )
    section.notes += [
        "Counted: every API call the functions' clients make (botocore `before-parameter-build`, one per call and "
        "per page; no retries happen against moto), in the real handlers. ECR/SSM/EC2 first, the DynamoDB "
        "idempotency table apart (Powertools' in-progress record and completion, and the attempt counter of the "
        "at-most-once send: 3 per command). Fleets are real moto instances carrying the node tag: a push targets "
        "them by tag, so SSM resolves the fleet and the functions never list it. moto ignores DescribeImages "
        "paging, so listings are served from moto's repository in ECR's pages of 1,000.",
        "Not counted here: what the nodes call themselves. Each node that pulls from ECR logs in once per registry "
        "(GetAuthorizationToken, the node role's own call), so a push still costs the account one "
        "GetAuthorizationToken per node that pulls, spread by `MaxConcurrency`; the recipe's DescribeImages per "
        "node is gone. The node-launch path resolves the repositories once per invocation (a batch of up to 10 "
        "records, each invocation its own request id), never across invocations: a resolution kept for 30 s could "
        "hand a node registering right after a push the images of before it. A burst therefore costs one "
        "DescribeImages per repository per batch, whichever of the (at most 5, `MaximumConcurrency: 5`) containers "
        "runs it, plus the looks at nodes not ready yet (one batch each time they come back).",
        "Sweeps: one scheduled run of the status function (`repair.sweep_and_repair`, self-repair on) over one fleet "
        "command whose invocations all succeeded, against moto with the doubles of testing/ssm.py "
        "(FakeInvocations, Agents) answering ListCommandInvocations and DescribeInstanceInformation in SSM's "
        "pages of 50 at botocore's level, so that the real adapters page and every page is counted. The steady "
        "state (events received) reads SSM in pages and DynamoDB in batches of 100 (the claims, then the nodes' "
        "rows); before this benchmark the claims were read one GetItem per invocation (10,000 reads a sweep at "
        "10,000 nodes). A repairing sweep sends at most `RepairMaxNodesPerSweep` (200) nodes, 50 ids a command, "
        "and writes one repair row per node sent to; it reads the missing nodes' EC2 launch times (200 a "
        "DescribeInstances) where SSM gives no registration date, as here.",
        "Status events: one invocation that pulled the newest image, recorded by the status function's handler in a "
        "warm container (the newest image already resolved by an earlier event: a push's burst), for a node that "
        "reported the image before. The launch time LaunchToCachedSeconds is measured from comes from the new-node "
        "command's Comment (GetCommandInvocation returns it); any other command's report is noted on the node's row "
        "with one conditional write, so that a new-node report recorded after it is not taken for the launch's "
        "first. Before issue 26 every invocation asked EC2 for the launch time: at 10,000 nodes, 10,000 "
        "DescribeInstances per push on the account's DescribeInstances bucket, which Karpenter and the cluster "
        "autoscaler draw from too.",
    ]
