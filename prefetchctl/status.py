"""The operator's view of a deployed stack: ``make status STACK=<name>`` (``python -m prefetchctl status``).

It reads the stack with the same code the status function runs: the stack's outputs name the status function, whose
environment becomes the Settings; coverage is ``coverage.look_at_fleet``, exactly what the sweep measures. It prints,
per watched repository, the newest image, the coverage and the online nodes missing it with their last error and
when self-repair will next send to them, and the nodes this application cannot serve, with why (Windows,
Bottlerocket, a node without containerd, EKS Auto Mode); with WarmVolumes, the published warm boot snapshot and
whether it holds each repository's newest image.

Exit status: 0 when every repository is at 100%, 1 when one is below (for scripts and alarms' runbooks), 2 when the
stack cannot be read (no region or credentials included). ``scripts/operator.sh status`` keeps it; make makes it 2.
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

from pydantic import ValidationError

from eks_prefetch import aws
from eks_prefetch.images import ResolvedImage
from eks_prefetch.node_contract import auto_mode_reason
from eks_prefetch.prefetch.resolution import NewestImages
from eks_prefetch.settings import StatusSettings
from eks_prefetch.status import repair
from eks_prefetch.status.coverage import RepositoryCoverage, look_at_fleet
from eks_prefetch.warm import planner as warm_planner
from prefetchctl.cli import stack_arguments

STATUS_FUNCTION_OUTPUT = "StatusFunctionName"
# With WarmVolumes only: the SSM parameter the warm volume builder publishes its snapshot in.
WARM_SNAPSHOT_OUTPUT = "WarmSnapshotParameterName"


class StackError(RuntimeError):
    """The stack, its status function or its configuration cannot be read."""


@dataclass(frozen=True)
class StackView:
    """What `make status` reads of a stack: the status function's settings, and the published warm snapshot's
    parameter when the stack has warm volumes ("" without)."""

    settings: StatusSettings
    warm_snapshot_parameter: str = ""


def view_of_stack(stack_name: str, region: str | None = None) -> StackView:
    """The status function's settings, read from the deployed stack (CloudFormation outputs, Lambda environment)."""
    outputs = aws.stack.stack_outputs(stack_name)
    function = outputs.get(STATUS_FUNCTION_OUTPUT)
    if not function:
        raise StackError(
            f"stack {stack_name} has no {STATUS_FUNCTION_OUTPUT} output: is it an EKS Image Prefetch stack of this "
            "version? (sam deploy it again)"
        )
    environment = aws.stack.function_environment(function)
    region = region or aws.stack.current_region() or os.environ.get("AWS_REGION")
    try:
        settings = StatusSettings.from_env({**environment, "AWS_REGION": region or ""})
    except ValidationError as error:
        raise StackError(f"the status function's environment is not valid: {error}") from error
    # The status function does not read the warm snapshot: the stack's output tells whether there is one.
    return StackView(settings, outputs.get(WARM_SNAPSHOT_OUTPUT) or "")


def render(
    coverages: Sequence[RepositoryCoverage],
    cluster: str,
    out: TextIO,
    next_repair: Callable[[str], str] = lambda _node: "",
    names: Mapping[str, str] | None = None,
    *,
    online: int | None = None,
    unsupported: Mapping[str, str] | None = None,
    selector_of: Callable[[str], Mapping[str, Sequence[str]]] | None = None,
) -> None:
    """``names``: instance id -> Kubernetes node name (the private DNS name), shown beside the id. ``online``: every
    online cluster node (a repository's own denominator, its nodes, may be fewer); ``unsupported``: node -> why this
    application cannot serve it."""
    names = names or {}
    unsupported = unsupported or {}
    if online is None:
        online = len(coverages[0].online) if coverages else 0
    out.write(f"cluster {cluster}: {online} online node(s)\n")
    for node, why in sorted(unsupported.items()):
        shown = f"{names[node]} ({node})" if names.get(node) else node
        out.write(f"  unsupported: {shown}  {why} (outside coverage, never repaired)\n")
    for coverage in coverages:
        out.write(f"\n{coverage.repository}\n")
        if coverage.newest is None:
            out.write("  newest: none (no tagged image matches the filter, or the repository does not exist)\n")
            continue
        newest = coverage.newest
        holding = len(coverage.online) - len(coverage.missing)
        out.write(f"  newest:   {newest.tag} {newest.digest} (pushed {newest.pushed_at.isoformat()})\n")
        # The repository's own denominator: the supported online nodes its selector matches, less platform skips.
        selector = f", selected by {_selector_text(selector_of(coverage.repository))}" if selector_of else ""
        out.write(f"  coverage: {coverage.percent:.1f}% ({holding}/{len(coverage.online)} nodes{selector})\n")
        for state in coverage.missing:
            if state.last_error:
                why = f"last error at {state.last_error_at}: {state.last_error}"
            elif state.digest:
                # Not a newer one: a node holding a newer image than the newest is covered (coverage_of).
                why = f"holds digest {state.digest}, not the newest (since {state.cached_at}), no error reported"
            else:
                why = "never reported (no prefetch result yet)"
            node = (
                f"{names[state.instance_id]} ({state.instance_id})"
                if names.get(state.instance_id)
                else state.instance_id
            )
            out.write(f"  missing:  {node}  {why}\n")
            repair_line = next_repair(state.instance_id)
            if repair_line:
                out.write(f"            {repair_line}\n")


def render_warm_snapshot(
    published: Mapping[str, Any], newest: Mapping[str, ResolvedImage | None], out: TextIO, now: datetime
) -> None:
    """The warm boot snapshot the builder published (``published``: its SSM parameter's JSON, {} before the first
    build), and whether it holds each watched repository's ``newest`` image."""
    if not published.get("snapshotId"):
        out.write("\nwarm boot snapshot: none published yet (the planner starts the first build at its first tick)\n")
        return
    out.write(
        f"\nwarm boot snapshot: {published['snapshotId']} (launch template version "
        f"{published.get('launchTemplateVersion', '?')}, build {published.get('build', '?')})\n"
    )
    built = _built_at(published.get("builtAt"))
    age = f" ({(now - built).total_seconds() / 3600:.1f} h ago)" if built else ""
    out.write(
        f"  built on: {published.get('amiId', '?')} ({published.get('architecture', '?')}), containerd "
        f"{published.get('containerdVersion', '?')}, at {published.get('builtAt', '?')}{age}\n"
    )
    held = {
        str(image.get("repository")): str(image.get("digest"))
        for image in published.get("images") or []
        if isinstance(image, dict)
    }
    width = max(len(repository) for repository in {*newest, *held})
    for repository in [*newest, *sorted(set(held) - set(newest))]:
        digest = held.get(repository)
        image = newest.get(repository)
        if repository not in newest:
            why = "no longer watched"
        elif digest is None:
            why = "not in the snapshot" + (f" (newest: {image.tag} {image.digest})" if image else "")
        elif image is None:
            why = "no newest image to compare"
        elif image.digest == digest:
            why = "newest"
        else:
            why = f"not the newest (newest: {image.tag} {image.digest}, pushed {image.pushed_at.isoformat()})"
        out.write(f"  {repository.ljust(width)}  {digest or '-'}  {why}\n")


def _built_at(value: Any) -> datetime | None:
    try:
        built = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return built if built.tzinfo else None


def _selector_text(selector: Mapping[str, Sequence[str]]) -> str:
    if not selector:
        return "every cluster node"
    return " and ".join(f"{key}={'|'.join(values)}" for key, values in sorted(selector.items()))


def report_fleet(view: StackView, out: TextIO) -> list[str]:
    """What `make status` prints for the stack; returns the repositories below 100%. Raises AWS's errors (the caller
    says it cannot read the stack)."""
    settings = view.settings
    newest = NewestImages(settings)
    fleet = look_at_fleet(settings, newest)
    # Commands in flight are known to the sweep only; this view sees the repairs the rows record.
    plan = repair.plan_for(repair.RepairInputs(fleet, frozenset(), newest), settings, datetime.now(UTC))
    coverages = fleet.coverages
    # EKS Auto Mode nodes carrying the node tag: SSM never lists them, so coverage never counts them; named here.
    running = aws.ec2.running_instances(settings.node_tag_key, settings.node_tag_value)
    auto_mode = {i["InstanceId"]: why for i in running if (why := auto_mode_reason(i)) is not None}
    unsupported = {**fleet.unsupported, **auto_mode}
    shown = {s.instance_id for c in coverages for s in c.missing} | set(unsupported)
    names = aws.ec2.private_dns_names(sorted(shown))
    render(
        coverages,
        settings.cluster_name,
        out,
        lambda node: repair.next_repair(plan, node, settings),
        names,
        online=len(fleet.online),
        unsupported=unsupported,
        selector_of=settings.selector_for if settings.node_selectors else None,
    )
    if view.warm_snapshot_parameter:
        newest_of = {coverage.repository: coverage.newest for coverage in coverages}
        try:
            published = warm_planner.published_snapshot(view.warm_snapshot_parameter)
        except aws.AWS_ERRORS as error:
            # The coverage above stands without it (the caller may lack ssm:GetParameter on this parameter).
            out.write(f"\nwarm boot snapshot: cannot read {view.warm_snapshot_parameter}: {error}\n")
        else:
            render_warm_snapshot(published, newest_of, out, datetime.now(UTC))
    return [coverage.repository for coverage in coverages if coverage.percent < 100.0]


def main(argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    args = stack_arguments("make status", __doc__.splitlines()[0], argv, err)
    if args is None:
        return 2
    text = io.StringIO()
    try:
        below = report_fleet(view_of_stack(args.stack, args.region), text)
    except (StackError, *aws.AWS_ERRORS) as error:
        err.write(f"cannot read the stack {args.stack}: {error}\n")
        return 2
    out.write(text.getvalue())
    if below:
        out.write(f"\ncoverage below 100%: {', '.join(below)}\n")
        return 1
    return 0
