"""New-node delay: from the moment a new node's SSM agent comes online to the prefetch command.

The real node-launch handler, with the template's default parameters, is driven through a simulated queue clock
(testing/simulated_queue.py: the template's 5 s batching window, the visibility the function asks for, the redrive
budget), against moto, for agents registering at every 2 s from 20 to 180 s after the launch event. The baseline is the
schedule before tuning (15 s doubling to 300 s, 15 receives), run the same way in the same run.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from bench.report import Row, Section, median, percentile, ratio, verdict
from harness import template as cfn
from testing.clock import Clock
from testing.deployment import deployment
from testing.ec2 import run_nodes, set_launch_time
from testing.ecr import fill_repository
from testing.events import running_event
from testing.simulated_queue import SimulatedQueue
from testing.ssm import Agents

REGISTRATION_SECONDS = (20, 180)
TARGET_P95_SECONDS = 20
TARGET_INVOCATIONS = 20
TARGET_DLQ_MINUTES = (45, 55)
# The schedule before tuning, as parameters of today's code (one fast retry is plain doubling from the base).
BASELINE = {
    "NODE_LAUNCH_RETRY_BASE_SECONDS": "15",
    "NODE_LAUNCH_FAST_RETRIES": "1",
    "NODE_LAUNCH_RETRY_MAX_SECONDS": "300",
    "NODE_LAUNCH_MAX_RECEIVES": "15",
}
_PARAMETERS = {
    "NODE_LAUNCH_RETRY_BASE_SECONDS": "NodeLaunchRetryBaseSeconds",
    "NODE_LAUNCH_FAST_RETRIES": "NodeLaunchFastRetries",
    "NODE_LAUNCH_RETRY_MAX_SECONDS": "NodeLaunchRetryMaxSeconds",
    "NODE_LAUNCH_MAX_RECEIVES": "NodeLaunchMaxReceives",
    "NODE_TAG_GRACE_SECONDS": "NodeTagGraceSeconds",
}


def template_defaults() -> dict[str, str]:
    parameters = cfn.template()["Parameters"]
    return {variable: str(parameters[name]["Default"]) for variable, name in _PARAMETERS.items()}


def batching_window() -> float:
    event = cfn.resource("NodeLaunchFunction")["Properties"]["Events"]["NodeLaunch"]["Properties"]
    return float(event.get("MaximumBatchingWindowInSeconds", 0))


@dataclass
class Schedule:
    delays: list[float]  # per node: command time minus registration time
    invocations: list[int]  # per node: deliveries to the function, the sending one included
    dlq_seconds: float  # an agent that never registers: time of the last delivery before the DLQ
    dlq_invocations: int
    non_node_invocations: int  # an untagged instance that never gets the node tag, until it is dropped


def simulate(environment: Mapping[str, str], step: int) -> Schedule:
    """One schedule, every registration time, each node alone in the queue (a lone launch: the worst batching)."""
    window = batching_window()
    with deployment(REPOSITORY_NAMES="ml/trainer", **environment):
        fill_repository("ml/trainer", 2)
        clock = Clock()
        agents = Agents(clock).install()
        queue = SimulatedQueue(clock, max_receives=int(environment["NODE_LAUNCH_MAX_RECEIVES"]), batching_window=window)
        delays, invocations = [], []
        times = range(REGISTRATION_SECONDS[0], REGISTRATION_SECONDS[1] + 1, step)
        nodes = run_nodes(len(times) + 1)
        for node, registered in zip(nodes, times, strict=False):
            clock.now = 0.0
            agents.registered_at[node] = registered
            queue.publish(running_event(node), node)
            queue.run()
            outcome = queue.outcomes[node]
            if outcome.sent_at is None:
                raise AssertionError(f"agent registered at {registered} s got no command")
            delays.append(outcome.sent_at - registered)
            invocations.append(outcome.invocations)
        # The agent that never registers.
        never = nodes[-1]
        clock.now = 0.0
        queue.publish(running_event(never), never)
        queue.run()
        if not queue.outcomes[never].dead_lettered:
            raise AssertionError("an agent that never registers must end in the dead-letter queue")
        dlq_seconds, dlq_invocations = clock.now, queue.outcomes[never].invocations

        # An instance of the account that is not a node: looked at until NodeTagGraceSeconds after its launch.
        (stranger,) = run_nodes(1, tags={"Name": "batch-worker"})
        launched = datetime.now(UTC)
        queue.on_deliver = lambda now: set_launch_time(stranger, launched - timedelta(seconds=now))
        clock.now = 0.0
        queue.publish(running_event(stranger), stranger)
        queue.run()
        queue.on_deliver = None
        return Schedule(delays, invocations, dlq_seconds, dlq_invocations, queue.outcomes[stranger].invocations)


def measure(section: Section, quick: bool) -> None:
    step = 8 if quick else 2
    tuned_environment = template_defaults()
    baseline_environment = {**tuned_environment, **BASELINE}
    # The handlers log every delivery as JSON on stdout: thousands of lines that say nothing here.
    with contextlib.redirect_stdout(io.StringIO()):
        tuned = simulate(tuned_environment, step)
        baseline = simulate(baseline_environment, step)

    def seconds(value: float) -> str:
        return f"{value:.0f} s"

    def delay(figure: str, of: Callable[[list[float]], float], target: str = "", met: str = "(reported)") -> Row:
        """A row of one statistic ``of`` the delays, tuned against the baseline."""
        measured, before = of(tuned.delays), of(baseline.delays)
        return Row(figure, seconds(measured), seconds(before), ratio(measured, before), target, met)

    p95 = percentile(tuned.delays, 0.95)
    most, most_old = max(tuned.invocations), max(baseline.invocations)
    dlq_minutes, dlq_minutes_old = tuned.dlq_seconds / 60, baseline.dlq_seconds / 60
    section.rows += [
        delay("delay p50 (agent online → command)", median),
        delay(
            "delay p95",
            lambda delays: percentile(delays, 0.95),
            f"≤ {TARGET_P95_SECONDS} s",
            verdict(p95 <= TARGET_P95_SECONDS, f"by {p95 - TARGET_P95_SECONDS:.0f} s"),
        ),
        delay("delay max", max),
        Row(
            "invocations per node, agent online at 20-180 s (max; p50)",
            f"{most}; {median(tuned.invocations):.0f}",
            f"{most_old}; {median(baseline.invocations):.0f}",
            ratio(most, most_old),
            f"≤ about {TARGET_INVOCATIONS}",
            verdict(most <= TARGET_INVOCATIONS, f"by {most - TARGET_INVOCATIONS}"),
        ),
        Row(
            "wait before the DLQ, agent never online",
            f"{dlq_minutes:.0f} min, {tuned.dlq_invocations} invocations",
            f"{dlq_minutes_old:.0f} min, {baseline.dlq_invocations} invocations",
            ratio(dlq_minutes, dlq_minutes_old),
            f"about 50 min ({TARGET_DLQ_MINUTES[0]}-{TARGET_DLQ_MINUTES[1]})",
            verdict(TARGET_DLQ_MINUTES[0] <= dlq_minutes <= TARGET_DLQ_MINUTES[1], f"{dlq_minutes:.0f} min"),
        ),
        Row(
            "invocations per untagged non-node instance (until NodeTagGraceSeconds)",
            str(tuned.non_node_invocations),
            str(baseline.non_node_invocations),
            ratio(tuned.non_node_invocations, baseline.non_node_invocations),
            verdict="(reported: the price of polling often early)",
        ),
    ]
    defaults = ", ".join(f"`{_PARAMETERS[k]}={v}`" for k, v in tuned_environment.items())
    section.notes += [
        f"Method: the real `node_launch` handler and `launch.backoff_seconds`, with the template's defaults "
        f"({defaults}), driven by a simulated SQS clock (`testing/simulated_queue.py`: the visibility the function "
        f"sets, then the event source's {batching_window():.0f} s batching window in full, as for a lone message) "
        f"against moto, for {len(tuned.delays)} agents registering every {step} s from {REGISTRATION_SECONDS[0]} "
        f"to {REGISTRATION_SECONDS[1]} s after the launch event. Baseline: the schedule before tuning "
        "(15 s doubling to 300 s, 15 receives), same handler, same run. Lambda's own latency and the handler's run "
        "time (tens of ms) are not in the clock.",
        "Tuning: agents usually register 20-180 s after launch, so the default schedule looks every 10 s (+5 s of "
        "batching window) for its first 14 deliveries, about 3.5 minutes, then doubles to 300 s; 27 deliveries keep "
        "the budget before the dead-letter queue at about 50 minutes. Uniform registration times make the delay "
        "uniform over one polling period: p95 is 95% of the period, whatever the window. The price: an untagged "
        "instance of the account is looked at every 15 s until `NodeTagGraceSeconds` (300 s): see the last row.",
    ]
