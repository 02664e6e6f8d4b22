"""Recording one (command, node) invocation: counted exactly once, with the node's state it reports.

Two ways in, one way to count: an SSM invocation status-change event (EventBridge: at least once, best effort, so
duplicated or lost), and the scheduled sweep (``sweep``), which finds the terminal invocations whose event never
came. Both call ``record_invocation``. It reads the invocation with its output, updates the node's rows
(``reports``: idempotent, newest report wins), then claims the (command, node) with a conditional write
(``claims``): only the claimant emits metrics. A crash before the claim leaves it uncounted, so a retry or the sweep
counts it; duplicates find the claim.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aws_lambda_powertools import Logger

from eks_prefetch import aws
from eks_prefetch.events import SsmInvocationStatusEvent
from eks_prefetch.node_contract import unsupported_reason
from eks_prefetch.node_output import NodeOutput, OutputProblem, parse_node_output
from eks_prefetch.settings import StatusSettings
from eks_prefetch.status import claims
from eks_prefetch.status import metrics as m
from eks_prefetch.status.reports import NOT_RUN, RecordingScope, new_node_report, update_node_state
from eks_prefetch.status.table import parse_time

logger = Logger(child=True)

# Invocation statuses that are not final; the rule excludes them, and the code does not trust the rule alone.
NON_TERMINAL = frozenset({"Pending", "InProgress", "Delayed", "Cancelling"})
# StatusDetails finer than Status: "TimedOut" is one of two timeouts, "Failed" may be a delivery failure.
DETAIL_STATUSES = frozenset(
    {"DeliveryTimedOut", "ExecutionTimedOut", "Undeliverable", "Terminated", "InvalidPlatform", "AccessDenied"}
)
# Final statuses reached with or without the script having run.
MAY_NOT_HAVE_RUN = frozenset({"Cancelled", "TimedOut"})
# What the SSM agent says of a step it did not run: a precondition not met (platformType Linux, on a Windows node
# reached by a push's tag Targets), or a plugin the platform lacks (aws:runShellScript on Windows). The agent counts
# a skipped step as a success (amazon-ssm-agent: "Skipped is a form of success"): the invocation is Success, with
# this text as the step's output, or no stdout at all.
_SKIPPED_BY_AGENT = re.compile(r"^Step execution skipped due to ")
_STATUS_NAME = re.compile(r"^[A-Za-z]{1,40}$")


def final_status(status: str, details: str | None) -> str:
    """The status an invocation is counted under: StatusDetails where it is finer, else Status."""
    chosen = details if details in DETAIL_STATUSES else status
    return chosen if _STATUS_NAME.match(chosen or "") else "Unknown"


@dataclass(frozen=True)
class InvocationOutcome:
    command_id: str
    instance_id: str
    result: str  # counted | duplicate | in_progress | pending | missing | foreign
    status: str = ""
    via: str = ""
    output: NodeOutput | None = None
    push_to_cached: tuple[tuple[str, float], ...] = ()
    launch_to_cached: float | None = None
    # Why the node cannot be served, when this invocation showed it: the script found no containerd socket, or SSM
    # skipped the step on a node that is not Linux. Neither is a failure.
    unsupported: str = ""
    # The new node's first report (measured as launch_to_cached): True when it found every image already cached (a
    # warm boot: nothing to pull), False when it pulled or failed something; None for any other report.
    booted_warm: bool | None = None

    @property
    def counted(self) -> bool:
        return self.result == "counted"

    @property
    def problem(self) -> OutputProblem | None:
        return self.output.problem if self.output else None

    @property
    def failed(self) -> bool:
        """Not a clean success: an SSM failure of any kind, bad output, or a run-level error on the node."""
        if self.unsupported and self.status == "Success":
            return False
        run_error = self.output.run_error if self.output else None
        return self.status != "Success" or self.problem is not None or bool(run_error)

    def as_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = {
            "result": self.result,
            "command_id": self.command_id,
            "instance_id": self.instance_id,
        }
        if self.status:
            result["status"] = self.status
        if self.problem:
            result["problem"] = self.problem.value
        if self.unsupported:
            result["unsupported"] = self.unsupported
        return result


def _skipped_by_ssm(status: str, stdout: str, instance_id: str, scope: RecordingScope) -> str | None:
    """Why SSM ran nothing on the node, when the invocation is a step the agent skipped; None otherwise.

    The agent reports a skipped step as Success, with its skip message or no stdout at all; the script itself always
    prints a summary. No stdout is told apart from a broken run (EmptyOutput) by the node's platform, one
    DescribeInstanceInformation per node in the scope's life: only for such an invocation, never for a run that
    printed something."""
    if status != "Success":
        return None
    text = stdout.strip()
    if text:
        return f"SSM skipped the document's step: {text[:200]}" if _SKIPPED_BY_AGENT.match(text) else None
    info = scope.online_agent(instance_id)
    why = unsupported_reason(info) if info else None
    return f"{why} (SSM skipped the document's step)" if why else None


def record_invocation(
    command_id: str,
    instance_id: str,
    settings: StatusSettings,
    *,
    via: str,
    scope: RecordingScope | None = None,
    now: datetime | None = None,
) -> InvocationOutcome:
    """Count one (command, node) invocation exactly once: node state, then the claim, then metrics.

    Every step before the claim is idempotent (a retry, a duplicate delivery or the sweep gets the same answers), and
    the metrics are built before it: a recording that fails or dies anywhere before its claim is finished by the
    next one. The claim carries this recording's token, so that a lost reply to its write is told apart from a claim
    by someone else; it is final once the metrics are out, and a claim left unfinished past any function's timeout
    is taken over. Never raises for what SSM or the node reported (any status, any output); AWS errors propagate.
    """
    now = now or datetime.now(UTC)
    scope = scope or RecordingScope.for_sweep(settings)
    fields = {"command_id": command_id, "instance_id": instance_id, "via": via}
    earlier = claims.read_claim(settings, command_id, instance_id)
    standing = earlier.standing(now) if earlier else None
    if standing is claims.Standing.COUNTED:
        logger.info("invocation already counted", extra=fields)
        return InvocationOutcome(command_id, instance_id, "duplicate", via=via)
    if standing is claims.Standing.IN_PROGRESS:
        # Another recording claimed it moments ago; if it died, the sweep takes the claim over once it is stale.
        logger.info("invocation being counted by another delivery", extra=fields)
        return InvocationOutcome(command_id, instance_id, "in_progress", via=via)

    invocation = aws.ssm.get_command_invocation(command_id, instance_id)
    if invocation is None:
        logger.warning("invocation not found in SSM, not counted", extra=fields)
        return InvocationOutcome(command_id, instance_id, "missing", via=via)
    if invocation.get("DocumentName", settings.document_name) != settings.document_name:
        # The rule filters on our document; this is a second guard, so that no other document is ever counted.
        logger.warning(
            "invocation of another document dropped", extra={**fields, "document": invocation["DocumentName"]}
        )
        return InvocationOutcome(command_id, instance_id, "foreign", via=via)
    if invocation.get("Status") in NON_TERMINAL:
        # The final status comes later, by its own event or the sweep.
        logger.info("invocation not finished yet", extra={**fields, "ssm_status": invocation.get("Status")})
        return InvocationOutcome(command_id, instance_id, "pending", status=invocation["Status"], via=via)

    status = final_status(invocation.get("Status", ""), invocation.get("StatusDetails"))
    at = parse_time(invocation.get("ExecutionEndDateTime")) or now
    stdout = invocation.get("StandardOutputContent") or ""
    # Cancelled or timed out before it started, a run prints nothing: that is its status, not bad output.
    not_run = status in NOT_RUN or (status in MAY_NOT_HAVE_RUN and not stdout.strip())
    # A node that is not Linux, reached by a push's tag Targets: SSM skipped the step. Nothing to record on its rows
    # (coverage knows it from its platform), and no failure.
    skipped = None if not_run else _skipped_by_ssm(status, stdout, instance_id, scope)
    output = None if not_run or skipped else parse_node_output(stdout, watched=settings.repository_names)
    unsupported = skipped or (output.unsupported if output else None) or ""
    push_to_cached = [] if skipped else update_node_state(scope, command_id, instance_id, status, output, at)
    new_node = new_node_report(settings, command_id, instance_id, output, at, comment=invocation.get("Comment") or "")
    outcome = InvocationOutcome(
        command_id,
        instance_id,
        "counted",
        status=status,
        via=via,
        output=output,
        push_to_cached=tuple(push_to_cached),
        launch_to_cached=new_node.seconds if new_node else None,
        booted_warm=new_node.booted_warm if new_node else None,
        unsupported=unsupported,
    )
    metrics = m.invocation_metrics(outcome, settings)

    token = uuid.uuid4().hex
    replacing = earlier if standing is claims.Standing.STALE else None
    if replacing is not None:
        logger.warning("taking over a claim left unfinished", extra={**fields, "claimed_at": replacing.claimed_at})
    if not claims.claim(
        settings, command_id, instance_id, token=token, status=status, via=via, now=now, replacing=replacing
    ):
        logger.info("invocation counted concurrently by another delivery", extra=fields)
        return InvocationOutcome(command_id, instance_id, "duplicate", status=status, via=via)
    _log_outcome(outcome, invocation)
    m.emit_all(metrics)
    claims.mark_counted(settings, command_id, instance_id, token)
    return outcome


def _log_outcome(outcome: InvocationOutcome, invocation: Mapping[str, Any]) -> None:
    output = outcome.output
    fields: dict[str, Any] = {
        "command_id": outcome.command_id,
        "instance_id": outcome.instance_id,
        "via": outcome.via,
        "status": outcome.status,
        "ssm_status": invocation.get("Status"),
        "ssm_status_details": invocation.get("StatusDetails"),
    }
    if output is not None:
        fields["problem"] = output.problem.value if output.problem else None
        fields["images"] = {status: len(output.by_status(status)) for status in m.IMAGES_BY_STATUS}
        failed = [{"image": r.image, "status": r.status, "detail": r.detail} for r in output.records if r.detail]
        if failed:
            fields["details"] = failed[:20]
        if output.run_error:
            fields["run_error"] = output.run_error
    if outcome.unsupported:
        fields["unsupported"] = outcome.unsupported
    if outcome.failed:
        logger.warning("invocation failed", extra=fields)
    elif outcome.unsupported:
        logger.info("invocation on a node that cannot be served: outside coverage and self-repair", extra=fields)
    else:
        logger.info("invocation succeeded", extra=fields)


def record_status_event(event: SsmInvocationStatusEvent, scope: RecordingScope) -> InvocationOutcome:
    settings = scope.settings
    detail = event.detail
    if detail.document_name != settings.document_name:
        logger.warning("status event of another document dropped", extra={"document": detail.document_name})
        return InvocationOutcome(detail.command_id, detail.instance_id, "foreign", via="event")
    return record_invocation(detail.command_id, detail.instance_id, settings, via="event", scope=scope)
