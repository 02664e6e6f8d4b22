"""Time to full coverage: how long a push takes to reach every node, under MaxConcurrency, simulated.

The pacing is SSM's as the local harness implements it: `harness.agent.Rollout` (the sliding window of
MaxConcurrency, MaxErrors) and `harness.agent.target_count` (a count or a percentage of the targets), the code the
agent runs on real nodes, here driven by a simulated clock. Pull times: section 4's per-round times of the document
on a real containerd (`bench/results/node.json`, this run's), scaled so that their median is what the rule's model
gives a prefetch of a 3.5 GB image on a real node (kubelet's ~109 s times the fastest measured prefetch/kubelet
ratio, section 9's: `prefetch.commands`), drawn per node with a fixed seed; other sizes scale the part past section
4's tiny-image run (the fixed work per image). A stated throughput cap stands for the registry and the NAT: when the
pulls running at once ask for more, every pull slows in proportion (processor sharing).

The default (MaxConcurrency left empty) is the push path's own rule, `prefetch.commands.max_concurrency_for`, from
the image's size and the default RegistryBandwidthGbps, which is the cap here; so are the ECR calls the nodes make
during such a rollout, set against ECR's published default quotas.
"""

from __future__ import annotations

import bisect
import heapq
import json
import math
import random
import statistics
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from bench.node_overhead import RESULTS as NODE_RESULTS
from bench.report import Row, Section, not_measured, ratio, verdict
from eks_prefetch.images import ResolvedImage
from eks_prefetch.node_contract import DEFAULT_CONNECTIONS, RANGE_CHUNK_BYTES
from eks_prefetch.prefetch.commands import (
    FASTEST_PREFETCH_TO_KUBELET,
    KUBELET_PULL_BYTES,
    KUBELET_PULL_SECONDS,
    PULL_BYTES_PER_SECOND,
    PULL_FIXED_SECONDS,
    max_concurrency_for,
)
from eks_prefetch.settings import CommandSettings
from harness.agent import Rollout, target_count

IMAGE_BYTES = KUBELET_PULL_BYTES
# A prefetch of IMAGE_BYTES on a real node, by the rule's model: kubelet's pull time over the prefetch's fastest
# measured speed-up (section 9). The simulated pulls' median.
PREFETCH_PULL_SECONDS = KUBELET_PULL_SECONDS * FASTEST_PREFETCH_TO_KUBELET
# The stated cap: the default RegistryBandwidthGbps, half of a NAT gateway's 100 Gbit/s ceiling (it starts at 5
# Gbit/s and scales up by itself), the rest left to the cluster's other traffic. ECR publishes no pull throughput;
# with a VPC endpoint, no NAT is involved.
CAP_GBITS = float(CommandSettings.model_fields["registry_bandwidth_gbps"].default)
CAP_BYTES = CAP_GBITS * 1e9 / 8
BASELINE = "50"  # SSM's default MaxConcurrency: the blog recipe's fan-out
FORMER_DEFAULT = "100"  # the default before the budget rule (issue 26)
# The deployed defaults (template.yaml's, which CommandSettings mirrors; a test keeps them equal): MaxConcurrency
# empty, from the budget.
DEFAULT = str(CommandSettings.model_fields["max_concurrency"].default)
MAX_ERRORS = str(CommandSettings.model_fields["max_errors"].default)
SETTINGS = ("10%", "25%", BASELINE, FORMER_DEFAULT, "100%", "200")
FLEETS = (10, 100, 1_000, 10_000)
TARGET_FLEET = 100
TARGET_FACTOR = 2.0
SEED = 11
# The default rule: at these fleets the cap binds, and the rollout's time is held against what the cap allows.
DEFAULT_FLEETS = (1_000, 10_000)
DEFAULT_SIZES = (500e6, 3.5e9, 10e9)
LIMIT_FACTOR = 1.2
# ECR's default API quotas, per account and Region, adjustable (Amazon ECR User Guide, "Amazon ECR service quotas").
ECR_QUOTAS = {"GetAuthorizationToken": 500, "BatchGetImage": 2_000, "GetDownloadUrlForLayer": 3_000}
# What a node's pull of one image asks of ECR (assumptions, docs/scale.md): one login per command run (the document
# logs in once per registry), the manifest (two for a multi-architecture index), and a download URL per blob request:
# one per blob it lacks (the config and each layer), and where the document fetches a layer as byte ranges, one per
# range (each range asks the registry's blob URL, which ECR answers with a redirect), on up to `connections` at once.
LAYERS_PER_IMAGE = 30
MANIFESTS_PER_IMAGE = 2


@dataclass(frozen=True)
class Coverage:
    last_warm: float  # seconds from the command's start to the last node's pull done
    peak_demand: float  # bytes/s the running pulls ask for at full speed, at most
    peak_running: int
    cancelled: int
    # When each node's pull started, in order (seconds from the command's start).
    starts: list[float] = field(default_factory=list, repr=False)

    def peak_starts(self, window: float = 1.0) -> int:
        """The most pulls started within any ``window`` seconds."""
        return max(
            (bisect.bisect_left(self.starts, start + window) - index for index, start in enumerate(self.starts)),
            default=0,
        )


def simulate(
    durations: list[float], max_concurrency: str, max_errors: str = MAX_ERRORS, image_bytes: float = IMAGE_BYTES
) -> Coverage:
    """One command over len(durations) nodes: node i's pull of ``image_bytes`` takes durations[i] s alone (no
    failures)."""
    nodes = len(durations)
    rollout = Rollout(
        [str(index) for index in range(nodes)],
        target_count(max_concurrency, nodes, minimum=1),
        target_count(max_errors, nodes, minimum=0),
    )
    now = virtual = 0.0  # real seconds; seconds of full-speed progress every running pull has made
    demand = peak_demand = 0.0
    peak_running = cancelled = 0
    running: list[tuple[float, int]] = []  # (virtual time the pull ends at, node)
    starts: list[float] = []
    while True:
        step = rollout.step()
        cancelled += len(step.cancelled)
        for target in step.started:
            node = int(target)
            starts.append(now)
            heapq.heappush(running, (virtual + durations[node], node))
            demand += image_bytes / durations[node]
        peak_demand = max(peak_demand, demand)
        peak_running = max(peak_running, len(running))
        if not running:
            break
        speed = min(1.0, CAP_BYTES / demand)
        ends, node = heapq.heappop(running)
        now += (ends - virtual) / speed
        virtual = ends
        demand -= image_bytes / durations[node]
        rollout.finished(str(node), error=False)
    return Coverage(now, peak_demand, peak_running, cancelled, starts)


def pull_times() -> list[float]:
    """Section 4's document pull times, scaled to a median of PREFETCH_PULL_SECONDS."""
    rounds = json.loads(NODE_RESULTS.read_text())["rounds"]
    measured = [entry["document"] for entry in rounds]
    scale = PREFETCH_PULL_SECONDS / statistics.median(measured)
    return [seconds * scale for seconds in measured]


def fixed_seconds() -> float:
    """Section 4's document run of a tiny image (median): the work per image that does not grow with its size."""
    tiny = json.loads(NODE_RESULTS.read_text()).get("tiny", {}).get("rounds") or []
    return statistics.median(entry["document"] for entry in tiny) if tiny else 0.0


def sized(durations: list[float], image_bytes: float, fixed: float) -> list[float]:
    """Pull times of a 3.5 GB image as pull times of another size: the fixed part as it is, the rest in
    proportion to the bytes."""
    return [fixed + (seconds - fixed) * image_bytes / IMAGE_BYTES for seconds in durations]


def default_concurrency(image_bytes: float) -> str:
    """What the push path sends as MaxConcurrency for an image of this size, with the template's defaults."""
    image = ResolvedImage("registry", "repository", "sha256:" + "0" * 64, "v1", datetime.now(UTC), int(image_bytes))
    return max_concurrency_for([image], CommandSettings.model_construct())


def _size(image_bytes: float) -> str:
    return f"{image_bytes / 1e9:g} GB" if image_bytes >= 1e9 else f"{image_bytes / 1e6:g} MB"


def _gbits(rate: float) -> str:
    return f"{rate * 8 / 1e9:.1f} Gbit/s"


def measure(section: Section, quick: bool) -> None:
    figures = [f"fleet of {fleet:,}, MaxConcurrency {setting}" for fleet in FLEETS for setting in SETTINGS]
    if not Path(NODE_RESULTS).exists():
        not_measured(
            section,
            figures,
            "needs section 4's per-round pull times (bench/results/node.json): root and containerd (make system-deps)",
        )
        return
    scaled = pull_times()
    single = statistics.median(scaled)
    fleets = FLEETS[:3] if quick else FLEETS
    for fleet in fleets:
        draw = random.Random(f"{SEED}-{fleet}")  # noqa: S311 (a simulation, not cryptography)
        durations = [draw.choice(scaled) for _ in range(fleet)]
        # The default (from the budget) here too where the fleet is smaller than it: from 1,000 nodes on, the default's
        # own rows follow, against the budget's limit.
        default = default_concurrency(IMAGE_BYTES)
        settings = SETTINGS if fleet >= DEFAULT_FLEETS[0] else (*SETTINGS, default)
        results = {setting: simulate(durations, setting) for setting in settings}
        baseline = results[BASELINE]
        for setting, result in results.items():
            over_cap = result.peak_demand > CAP_BYTES
            value = (
                f"{result.last_warm:,.0f} s ({result.last_warm / single:.1f}x a pull); "
                f"{result.peak_running:,} at once, {_gbits(result.peak_demand)}"
                + (" (over the cap)" if over_cap else "")
            )
            label = f"fleet of {fleet:,}, MaxConcurrency {setting}" + (
                " (former default)"
                if setting == FORMER_DEFAULT
                else " (SSM's default)"
                if setting == BASELINE
                else f" (default: from RegistryBandwidthGbps {CAP_GBITS:g}, 3.5 GB)"
                if setting == default and setting not in SETTINGS
                else ""
            )
            row = Row(
                label,
                value,
                f"{baseline.last_warm:,.0f} s (MaxConcurrency 50)",
                ratio(result.last_warm, baseline.last_warm),
            )
            if fleet == TARGET_FLEET:
                limit = TARGET_FACTOR * single
                met = result.last_warm <= limit and not over_cap
                why = []
                if result.last_warm > limit:
                    waves = -(-fleet // target_count(setting, fleet, minimum=1))
                    why.append(
                        f"by {result.last_warm - limit:,.1f} s ({result.last_warm / limit:.2f}x the target): "
                        f"{waves} waves of pulls"
                    )
                if over_cap:
                    why.append(f"asks {_gbits(result.peak_demand)}, over the {CAP_GBITS:.0f} Gbit/s cap")
                row = Row(
                    row.figure,
                    row.value,
                    row.baseline,
                    row.ratio,
                    f"≤ {limit:.0f} s (2x a pull), ≤ {CAP_GBITS:.0f} Gbit/s",
                    verdict(met, "; ".join(why)),
                )
            else:
                row = Row(row.figure, row.value, row.baseline, row.ratio, verdict="(reported)")
            section.rows.append(row)
    if quick:
        not_measured(section, ["fleet of 10,000, every setting"], "skipped in a quick run")
    _measure_default(section, scaled, fleets)
    section.notes += [
        f"Simulated, not run: `harness.agent.Rollout` and `target_count` (the local agent's MaxConcurrency/MaxErrors "
        f"semantics, the code it runs on real nodes) driven by a simulated clock. Pull times: section 4's "
        f"{len(scaled)} per-round document pulls of this run (a 524 MB image on loopback), scaled to a median of "
        f"{PREFETCH_PULL_SECONDS:.1f} s, the rule's model of a prefetch of a 3.5 GB image on a real node (kubelet's "
        f"~{KUBELET_PULL_SECONDS} s, README, times {FASTEST_PREFETCH_TO_KUBELET:g}, the fastest prefetch/kubelet "
        f"ratio section 9 measured: one big layer in byte ranges): {', '.join(f'{s:.0f}' for s in sorted(scaled))} s, "
        f"drawn per node with a fixed seed. A pull alone asks for 3.5 GB over its time (~"
        f"{_gbits(IMAGE_BYTES / single)} at the median); the registry and NAT together are capped at "
        f"{CAP_GBITS:.0f} Gbit/s (an assumption: half of a NAT gateway's 100 Gbit/s ceiling; ECR publishes no pull "
        "throughput); above it every running pull slows in proportion. No node fails here (MaxErrors 25% is never "
        "reached), SSM's delivery latency and the nodes' logins are not in the clock; nor are SSM's delivery "
        "timeouts, which the harness does not emulate.",
        "Reading it: percentages make the time grow with the fleet only through the spread of the pulls, but the "
        "load grows with the fleet (10% of 10,000 nodes is 1,000 pulls at once, far over any NAT); an absolute count "
        "keeps the load fixed and makes the time grow with the fleet. Once the cap is reached, more concurrency "
        "buys nothing: the fleet is limited by the cap's bytes per second, and the pulls only run slower, each one "
        "more exposed to the pull timeout.",
        f"The default (MaxConcurrency empty): the push path's own `max_concurrency_for`, from the image's size and "
        f"RegistryBandwidthGbps {CAP_GBITS:g} (the cap), held against the cap's own limit, the fleet's bytes over "
        f"{CAP_GBITS:g} Gbit/s. The rule budgets a pull at {PULL_BYTES_PER_SECOND / 1e6:g} MB/s past "
        f"{PULL_FIXED_SECONDS:g} s per image (prefetch/commands.py), "
        f"{(PULL_BYTES_PER_SECOND / (IMAGE_BYTES / single) - 1) * 100:.0f}% above the median pull here, for the "
        "fluctuation of the pulls running at once; what is left between the time and the limit is that margin and "
        "the last wave, whose nodes finish one pull's time after the budget's bytes (at 1,000 nodes, "
        f"{_waves_note(1_000, single)}). Other sizes: this run's pull times past section 4's tiny-image run (the "
        "fixed work per image), scaled by the bytes. An image of many small layers pulls slower than the fastest "
        f"shape (section 9: up to ~0.54x of kubelet's time rather than {FASTEST_PREFETCH_TO_KUBELET:g}x), asks "
        "less than the rule budgets, and its rollout takes longer in proportion: the budget is held for the fastest "
        "shape, never passed.",
        f"ECR calls by the nodes: per node and command, {1} GetAuthorizationToken (the document logs in once per "
        f"registry), up to {MANIFESTS_PER_IMAGE} BatchGetImage (a multi-architecture index, then the platform's "
        f"manifest) and a GetDownloadUrlForLayer per blob request: at most one per {RANGE_CHUNK_BYTES >> 20} MiB "
        f"byte range (the document's ranged fetch) and one more per blob (assumed {LAYERS_PER_IMAGE} layers and the "
        f"config), {DEFAULT_CONNECTIONS} at a time (`connections`). Average: over the rollout; peak: the most "
        "pulls the simulation starts within one second (every node of the first wave at once: SSM's own ramp, "
        "doubling from one node as each acknowledges, spreads them over several seconds and is not modelled). "
        "Quotas: ECR's defaults per account and Region (Amazon ECR User Guide, service quotas), shared with every "
        "other pull in the account: kubelet's own, CI's.",
    ]


def _waves_note(fleet: int, single: float) -> str:
    """How many waves of the default's pulls a fleet takes against how many pulls' time the budget's limit is: the
    least a sliding window of equal pulls could take."""
    waves = -(-fleet // int(default_concurrency(IMAGE_BYTES)))
    carried = fleet * IMAGE_BYTES / CAP_BYTES / single
    return (
        f"{waves} waves of a 3.5 GB image's pulls where the budget carries {carried:.1f}: "
        f"{waves / carried:.2f}x with equal pulls"
    )


def _measure_default(section: Section, scaled: list[float], fleets: tuple[int, ...]) -> None:
    """The default rule at the fleets where the cap binds, for three image sizes; and the nodes' ECR calls."""
    fixed = fixed_seconds()
    measured = [fleet for fleet in DEFAULT_FLEETS if fleet in fleets]
    for image_bytes in DEFAULT_SIZES:
        concurrency = default_concurrency(image_bytes)
        for fleet in measured:
            draw = random.Random(f"{SEED}-{fleet}")  # noqa: S311 (a simulation, not cryptography)
            durations = sized([draw.choice(scaled) for _ in range(fleet)], image_bytes, fixed)
            result = simulate(durations, concurrency, image_bytes=image_bytes)
            limit = fleet * image_bytes / CAP_BYTES
            over_cap = result.peak_demand > CAP_BYTES
            slow = result.last_warm > LIMIT_FACTOR * limit
            why = []
            if slow:
                # Whole waves of pulls against the budget's fraction of one: the least a sliding window of equal
                # pulls could take; the spread of this run's pulls adds its slowest to the last wave.
                waves = -(-fleet // int(concurrency))
                floor = waves / (limit / statistics.median(durations))
                why.append(
                    f"by {result.last_warm / limit - LIMIT_FACTOR:.2f}x of the limit: {waves} waves of pulls where the "
                    f"budget carries {limit / statistics.median(durations):.1f} ({floor:.2f}x with equal pulls), and "
                    f"this run's pulls spread {min(durations):.0f}-{max(durations):.0f} s, their mean "
                    f"{statistics.mean(durations) / statistics.median(durations):.2f}x their median (section 4's "
                    "rounds: a slow pull leaves part of the budget unused)"
                )
            if over_cap:
                why.append(f"asks {_gbits(result.peak_demand)}, over the {CAP_GBITS:g} Gbit/s budget")
            section.rows.append(
                Row(
                    f"fleet of {fleet:,}, {_size(image_bytes)} image, default (MaxConcurrency {concurrency}, from "
                    f"RegistryBandwidthGbps {CAP_GBITS:g})",
                    f"{result.last_warm:,.0f} s; {result.peak_running:,} at once, {_gbits(result.peak_demand)}",
                    f"{limit:,.0f} s (the fleet's bytes over {CAP_GBITS:g} Gbit/s)",
                    ratio(result.last_warm, limit),
                    f"≤ {LIMIT_FACTOR}x the limit, ≤ {CAP_GBITS:g} Gbit/s",
                    verdict(not slow and not over_cap, "; ".join(why)),
                )
            )
        if measured:
            section.rows.append(_ecr_calls(measured[-1], image_bytes, result))
    if DEFAULT_FLEETS[-1] not in measured:
        not_measured(section, [f"fleet of {DEFAULT_FLEETS[-1]:,}, default, every size"], "skipped in a quick run")


def url_requests(image_bytes: float) -> int:
    """The most blob requests a node makes for an image it lacks: a byte range per chunk, and each blob's last,
    partial one (the config and every layer)."""
    return math.ceil(image_bytes / RANGE_CHUNK_BYTES) + LAYERS_PER_IMAGE + 1


def _ecr_calls(fleet: int, image_bytes: float, result: Coverage) -> Row:
    """The ECR calls the nodes make during a default rollout, against ECR's default quotas."""
    started_per_second = len(result.starts) / result.last_warm
    peak = result.peak_starts()
    requests = url_requests(image_bytes)
    # A running pull asks for its ranges' URLs over its time (on average, as many a second as the nodes it starts
    # times its requests); in the first second of a wave, each node its first `connections` at once.
    urls = max(peak * DEFAULT_CONNECTIONS, started_per_second * requests)
    rates = {
        "GetAuthorizationToken": (started_per_second, peak),
        "BatchGetImage": (started_per_second * MANIFESTS_PER_IMAGE, peak * MANIFESTS_PER_IMAGE),
        "GetDownloadUrlForLayer": (started_per_second * requests, urls),
    }
    worst = max(highest / ECR_QUOTAS[name] for name, (_average, highest) in rates.items())
    return Row(
        f"ECR calls by the nodes, fleet of {fleet:,}, {_size(image_bytes)} image, default (average / peak second)",
        "; ".join(f"{name} {average:,.1f} / {highest:,.0f} per s" for name, (average, highest) in rates.items()),
        "quotas " + " / ".join(f"{quota:,}" for quota in ECR_QUOTAS.values()) + " per s",
        f"{worst:.2f}x (the peak nearest its quota)",
        "≤ ECR's default quotas",
        verdict(worst <= 1, f"the peak second asks {worst:.2f}x a quota"),
    )
