"""A local Run Command service and agent: the honest stand-in for what moto's SSM does not do.

moto records SendCommand, but marks every invocation Success, validates no parameter, targets every instance for
InstanceIds, and has no ListCommandInvocations or DescribeInstanceInformation. This module patches moto's SSM
responses (explicitly, for the duration of install()/uninstall()) so that:

- SendCommand resolves its targets as SSM does: tag targets -> running EC2 instances with the tag whose agent is
  registered (others are skipped silently); InstanceIds that are not registered -> InvalidInstanceId. Parameters are
  checked against the document's allowedPattern/allowedValues (InvalidParameters), defaults filled in.
- The command runs on each instance's node (harness.cluster.Node) in the background, under MaxConcurrency (a sliding
  window: a new target starts as one finishes) and MaxErrors (once the errors exceed it, targets not started yet
  are not sent the command and end Cancelled; running ones finish).
- GetCommandInvocation, ListCommandInvocations, ListCommands and DescribeInstanceInformation answer from these
  records, with output truncated to SSM's limits.
- Every status change emits `EC2 Command Invocation Status-change Notification` (and the command's own
  `EC2 Command Status-change Notification`), drained by the harness into the router.
"""

from __future__ import annotations

import json
import math
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import yaml
from moto.core.exceptions import JsonRESTError
from moto.core.responses import ActionResult
from moto.ec2.models import ec2_backends
from moto.ssm.models import ssm_backends
from moto.ssm.responses import SimpleSystemManagerResponse

from harness.routing import event_envelope
from harness.stack import ACCOUNT, REGION

# GetCommandInvocation's limits; ListCommandInvocations' plugin Output holds less.
STDOUT_LIMIT = 24_000
STDERR_LIMIT = 8_000
PLUGIN_OUTPUT_LIMIT = 2_500
TERMINAL = frozenset({"Success", "Failed", "Cancelled", "TimedOut"})
# Statuses that count against MaxErrors.
ERRORS = frozenset({"Failed", "TimedOut"})


class NodeRun(Protocol):
    returncode: int
    stdout: str
    stderr: str


class ManagedNode(Protocol):
    """What the agent runs a command on (harness.cluster.Node)."""

    name: str

    def execute(self, content: dict[str, Any], values: dict[str, str], command_id: str, timeout: float) -> NodeRun:
        """Run the document's step; raises TimeoutError when the step's timeout expires."""


@dataclass
class CommandInvocation:
    command_id: str
    instance_id: str
    instance_name: str
    requested: datetime
    status: str = "Pending"
    status_details: str = "Pending"
    response_code: int = -1
    stdout: str = ""
    stderr: str = ""
    # What the node printed, whole: CloudWatch Logs gets all of it, the API only the first 24,000/8,000 characters.
    full_stdout: str = ""
    full_stderr: str = ""
    started: datetime | None = None
    ended: datetime | None = None

    @property
    def seconds(self) -> float | None:
        if self.started and self.ended:
            return (self.ended - self.started).total_seconds()
        return None


@dataclass
class AgentCommand:
    command_id: str
    document_name: str
    document_version: str
    content: dict[str, Any]
    values: dict[str, str]
    request: dict[str, Any]
    requested: datetime
    invocations: dict[str, CommandInvocation] = field(default_factory=dict)
    status: str = "Pending"
    status_details: str = "Pending"
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def max_concurrency(self) -> int:
        return target_count(self.request.get("MaxConcurrency") or "50", len(self.invocations), minimum=1)

    @property
    def max_errors(self) -> int:
        return target_count(self.request.get("MaxErrors") or "0", len(self.invocations), minimum=0)


def target_count(value: str, targets: int, minimum: int) -> int:
    """An absolute count, or a percentage of the targets (rounded down; at least one target runs at a time)."""
    if value.endswith("%"):
        return max(minimum, math.floor(targets * int(value[:-1]) / 100))
    return max(minimum, int(value))


@dataclass(frozen=True)
class RolloutStep:
    started: tuple[str, ...] = ()
    cancelled: tuple[str, ...] = ()


class Rollout:
    """SSM's pacing of one command over its targets, without time or threads: the one implementation of
    MaxConcurrency and MaxErrors, which the agent runs on real nodes and the benchmark drives with simulated time.

    A sliding window: ``step()`` starts targets, in order, while fewer than ``max_concurrency`` run and the errors
    do not exceed ``max_errors``; once they exceed it, the targets not started yet are cancelled (running ones
    finish). ``finished()`` reports a target's end, an error (Failed, TimedOut) or not.
    """

    def __init__(self, targets: list[str], max_concurrency: int, max_errors: int) -> None:
        self.pending = list(reversed(targets))  # popped from the end: the first target first
        self.running: set[str] = set()
        self.max_concurrency = max(1, max_concurrency)
        self.max_errors = max_errors
        self.errors = 0

    @property
    def done(self) -> bool:
        return not self.pending and not self.running

    def step(self) -> RolloutStep:
        started = []
        while self.pending and len(self.running) < self.max_concurrency and self.errors <= self.max_errors:
            target = self.pending.pop()
            self.running.add(target)
            started.append(target)
        cancelled: list[str] = []
        if self.errors > self.max_errors:
            # SSM stops sending the command to targets once the errors exceed MaxErrors.
            cancelled = self.cancel_pending()
        return RolloutStep(tuple(started), tuple(cancelled))

    def cancel_pending(self) -> list[str]:
        cancelled, self.pending = list(reversed(self.pending)), []
        return cancelled

    def finished(self, target: str, error: bool) -> None:
        self.running.discard(target)
        if error:
            self.errors += 1


# What SSM's agent prints for a step whose precondition does not hold (amazon-ssm-agent's executer): the invocation
# still ends Success, with this as the step's output.
PRECONDITION_SKIP = "Step execution skipped due to unsatisfied preconditions: '{condition}'. Step name: {step}"


@dataclass(frozen=True)
class Platform:
    """What SSM reports of a managed node's OS (DescribeInstanceInformation) and checks preconditions against."""

    type: str = "Linux"
    name: str = "Amazon Linux"
    version: str = "2023"


LINUX = Platform()
WINDOWS = Platform("Windows", "Microsoft Windows Server 2022 Datacenter", "10.0.20348")
BOTTLEROCKET = Platform("Linux", "Bottlerocket", "1.20.0")


@dataclass
class _Managed:
    node: ManagedNode
    registers_at: float | None  # time.monotonic(); None: never registers
    platform: Platform = LINUX

    @property
    def registered(self) -> bool:
        return self.registers_at is not None and time.monotonic() >= self.registers_at


class RunCommandAgent:
    def __init__(self) -> None:
        self.managed: dict[str, _Managed] = {}
        self.commands: dict[str, AgentCommand] = {}
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self._lock = threading.RLock()
        self._threads: list[threading.Thread] = []
        self._saved: dict[str, Any] = {}
        self._stopping = threading.Event()

    # --- managed instances ------------------------------------------------------------------------------------

    def register(
        self, instance_id: str, node: ManagedNode, after_seconds: float | None = 0.0, platform: Platform = LINUX
    ) -> None:
        """The instance's agent registers (is Online) after_seconds from now; None: never."""
        registers_at = None if after_seconds is None else time.monotonic() + after_seconds
        self.managed[instance_id] = _Managed(node, registers_at, platform)

    def registered(self, instance_id: str) -> bool:
        managed = self.managed.get(instance_id)
        return managed is not None and managed.registered

    # --- moto patches -----------------------------------------------------------------------------------------

    def install(self) -> None:
        patches = {
            "send_command": self._send_command,
            "get_command_invocation": self._get_command_invocation,
            "list_command_invocations": self._list_command_invocations,
            "list_commands": self._list_commands,
            "describe_instance_information": self._describe_instance_information,
        }
        for name, patch in patches.items():
            self._saved[name] = SimpleSystemManagerResponse.__dict__.get(name)

            def method(response: SimpleSystemManagerResponse, _patch: Callable = patch) -> Any:
                return _patch(response)

            setattr(SimpleSystemManagerResponse, name, method)

    def stop_starting(self) -> None:
        """No invocation starts from now on (those not started end Cancelled)."""
        self._stopping.set()

    def uninstall(self) -> None:
        self._stopping.set()
        for name, original in self._saved.items():
            if original is None:
                delattr(SimpleSystemManagerResponse, name)
            else:
                setattr(SimpleSystemManagerResponse, name, original)
        self._saved.clear()
        for thread in self._threads:
            thread.join(timeout=60)

    # --- SendCommand --------------------------------------------------------------------------------------------

    def _send_command(self, response: SimpleSystemManagerResponse) -> ActionResult:
        request = {
            key: response._get_param(key)
            for key in (
                "DocumentName",
                "DocumentVersion",
                "Parameters",
                "InstanceIds",
                "Targets",
                "MaxConcurrency",
                "MaxErrors",
                "TimeoutSeconds",
                "Comment",
                "CloudWatchOutputConfig",
            )
        }
        backend = ssm_backends[ACCOUNT][REGION]
        document = backend.get_document(request["DocumentName"], request.get("DocumentVersion") or "", "", "")
        content = (yaml.safe_load if document["DocumentFormat"] == "YAML" else json.loads)(document["Content"])
        values = _checked_parameters(content, request.get("Parameters") or {})
        instance_ids = self._targets(request)
        # moto keeps the command for ListCommands; given InstanceIds only, never its own (wrong) targeting.
        command = backend.send_command(
            comment=request.get("Comment") or "",
            document_name=request["DocumentName"],
            timeout_seconds=request.get("TimeoutSeconds") or 3600,
            instance_ids=list(instance_ids),  # moto extends the list it is given
            max_concurrency=request.get("MaxConcurrency") or "50",
            max_errors=request.get("MaxErrors") or "0",
            notification_config=None,
            output_s3_bucket_name="",
            output_s3_key_prefix="",
            output_s3_region="",
            parameters=request.get("Parameters") or {},
            service_role_arn="",
            targets=[],
        )
        # As SSM answers: InstanceIds as given (empty for tag targets), and the targets; not moto's own resolution.
        command.targets = request.get("Targets") or []
        command.instance_ids = list(request.get("InstanceIds") or [])
        command.invocations = [
            command.invocation_response(instance_id, "aws:runShellScript") for instance_id in instance_ids
        ]
        now = datetime.now(UTC)
        record = AgentCommand(
            command_id=command.command_id,
            document_name=request["DocumentName"],
            document_version=document["DocumentVersion"],
            content=content,
            values=values,
            request=request,
            requested=now,
        )
        for instance_id in instance_ids:
            record.invocations[instance_id] = CommandInvocation(
                command.command_id, instance_id, self.managed[instance_id].node.name, now
            )
        with self._lock:
            self.commands[command.command_id] = record
        thread = threading.Thread(target=self._run, args=(record,), name=f"ssm-{command.command_id[:8]}", daemon=True)
        self._threads.append(thread)
        thread.start()
        response_object = command.response_object()
        response_object.update(self._command_counts(record))
        return ActionResult({"Command": response_object})

    def _targets(self, request: dict[str, Any]) -> list[str]:
        instance_ids = request.get("InstanceIds") or []
        if instance_ids:
            unknown = [instance_id for instance_id in instance_ids if not self.registered(instance_id)]
            if unknown:
                raise JsonRESTError("InvalidInstanceId", f"Instances {unknown} not in a valid state for account")
            return list(instance_ids)
        targets = request.get("Targets") or []
        ec2 = ec2_backends[ACCOUNT][REGION]
        matched = []
        for instance in ec2.all_instances():
            if instance._state.name != "running" or not self.registered(instance.id):
                continue
            tags = {tag["key"]: tag["value"] for tag in instance.get_tags()}
            if all(_target_matches(target, instance.id, tags) for target in targets):
                matched.append(instance.id)
        return matched

    def seed_command(
        self, command_id: str, document_name: str, instance_id: str, status: str, stdout: str, images: str
    ) -> None:
        """A command SSM already ran, with a given id (make invoke: the one a sample status event names)."""
        backend = ssm_backends[ACCOUNT][REGION]
        document = backend.get_document(document_name, "", "", "")
        content = (yaml.safe_load if document["DocumentFormat"] == "YAML" else json.loads)(document["Content"])
        parameters = {"images": [images]}
        command = backend.send_command(
            comment="seeded",
            document_name=document_name,
            timeout_seconds=600,
            instance_ids=[instance_id],
            max_concurrency="50",
            max_errors="0",
            notification_config=None,
            output_s3_bucket_name="",
            output_s3_key_prefix="",
            output_s3_region="",
            parameters=parameters,
            service_role_arn="",
            targets=[],
        )
        command.command_id = command_id
        command.instance_ids = [instance_id]
        command.invocations = [command.invocation_response(instance_id, "aws:runShellScript")]
        now = datetime.now(UTC)
        record = AgentCommand(
            command_id,
            document_name,
            document["DocumentVersion"],
            content,
            {"images": images},
            {"Parameters": parameters},
            now,
        )
        invocation = CommandInvocation(command_id, instance_id, instance_id, now, status, status)
        invocation.stdout = stdout
        invocation.response_code = 0 if status == "Success" else 1
        invocation.started = invocation.ended = now if status in TERMINAL else None
        record.invocations[instance_id] = invocation
        record.status = record.status_details = status
        record.done.set()
        with self._lock:
            self.commands[command_id] = record

    # --- running ----------------------------------------------------------------------------------------------

    def _run(self, command: AgentCommand) -> None:
        rollout = Rollout(list(command.invocations), command.max_concurrency, command.max_errors)
        self._set_command_status(command, "InProgress" if command.invocations else "Success")
        with ThreadPoolExecutor(max_workers=command.max_concurrency) as pool:
            running: dict[Future, CommandInvocation] = {}
            while True:
                if self._stopping.is_set():
                    # The harness is shutting down: nothing new starts.
                    for instance_id in rollout.cancel_pending():
                        self._set_status(command, command.invocations[instance_id], "Cancelled", "Cancelled")
                step = rollout.step()
                for instance_id in step.cancelled:
                    self._set_status(command, command.invocations[instance_id], "Cancelled", "Cancelled")
                for instance_id in step.started:
                    invocation = command.invocations[instance_id]
                    self._set_status(command, invocation, "InProgress", "InProgress")
                    running[pool.submit(self._execute, command, invocation)] = invocation
                if not running:
                    break
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    invocation = running.pop(future)
                    rollout.finished(invocation.instance_id, error=invocation.status in ERRORS)
        errors = rollout.errors
        statuses = {invocation.status for invocation in command.invocations.values()}
        # SSM's command StatusDetails: Success (every invocation), Failed (errors beyond MaxErrors), Incomplete (tried
        # everywhere, some not Success, errors within MaxErrors); the last two report Status Failed here.
        if statuses <= {"Success"}:
            final, details = "Success", "Success"
        elif errors > command.max_errors:
            final, details = "Failed", "Failed"
        else:
            final, details = "Failed", "Incomplete"
        self._set_command_status(command, final, details)
        command.done.set()

    def _execute(self, command: AgentCommand, invocation: CommandInvocation) -> None:
        managed = self.managed[invocation.instance_id]
        node = managed.node
        (step,) = command.content["mainSteps"]
        timeout = float(_render(str(step.get("inputs", {}).get("timeoutSeconds", 3600)), command.values))
        invocation.started = datetime.now(UTC)
        unmet = _unmet_precondition(step, managed.platform)
        if unmet is not None:
            invocation.ended = datetime.now(UTC)
            invocation.response_code = 0
            invocation.stdout = invocation.full_stdout = PRECONDITION_SKIP.format(condition=unmet, step=step["name"])
            self._set_status(command, invocation, "Success", "Success")
            return
        try:
            run = node.execute(command.content, command.values, command.command_id, timeout)
        except TimeoutError as error:
            invocation.ended = datetime.now(UTC)
            invocation.stdout, invocation.stderr = _truncate(getattr(error, "stdout", "") or "", str(error))
            self._set_status(command, invocation, "TimedOut", "ExecutionTimedOut")
            return
        except Exception as error:  # the agent's own failure to run the step: the invocation fails
            invocation.ended = datetime.now(UTC)
            invocation.stderr = f"failed to run the command: {error}"[:STDERR_LIMIT]
            self._set_status(command, invocation, "Failed", "Failed")
            return
        invocation.ended = datetime.now(UTC)
        invocation.response_code = run.returncode
        invocation.full_stdout, invocation.full_stderr = run.stdout, run.stderr
        invocation.stdout, invocation.stderr = _truncate(run.stdout, run.stderr)
        status = "Success" if run.returncode == 0 else "Failed"
        self._set_status(command, invocation, status, status)

    def _set_status(self, command: AgentCommand, invocation: CommandInvocation, status: str, details: str) -> None:
        with self._lock:
            invocation.status, invocation.status_details = status, details
        self.events.put(
            event_envelope(
                "aws.ssm",
                "EC2 Command Invocation Status-change Notification",
                {
                    "command-id": command.command_id,
                    "document-name": command.document_name,
                    "instance-id": invocation.instance_id,
                    "requested-date-time": _iso(command.requested),
                    "status": status,
                },
                [f"arn:aws:ec2:{REGION}:{ACCOUNT}:instance/{invocation.instance_id}"],
            )
        )

    def _set_command_status(self, command: AgentCommand, status: str, details: str | None = None) -> None:
        with self._lock:
            command.status = status
            command.status_details = details or status
        self.events.put(
            event_envelope(
                "aws.ssm",
                "EC2 Command Status-change Notification",
                {
                    "command-id": command.command_id,
                    "document-name": command.document_name,
                    "expire-after": _iso(command.requested),
                    "parameters": command.request.get("Parameters") or {},
                    "requested-date-time": _iso(command.requested),
                    "status": status,
                },
            )
        )

    def drain_events(self) -> Iterator[dict[str, Any]]:
        while True:
            try:
                yield self.events.get_nowait()
            except queue.Empty:
                return

    def busy(self) -> bool:
        return any(not command.done.is_set() for command in self.commands.values())

    def wait(self, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        for command in list(self.commands.values()):
            command.done.wait(max(0.0, deadline - time.monotonic()))

    # --- read APIs --------------------------------------------------------------------------------------------

    def _invocation(self, command_id: str, instance_id: str) -> tuple[AgentCommand, CommandInvocation]:
        command = self.commands.get(command_id)
        if command is None or instance_id not in command.invocations:
            raise JsonRESTError("InvocationDoesNotExist", "An error occurred (InvocationDoesNotExist)")
        return command, command.invocations[instance_id]

    def _get_command_invocation(self, response: SimpleSystemManagerResponse) -> ActionResult:
        command, invocation = self._invocation(response._get_param("CommandId"), response._get_param("InstanceId"))
        (step,) = command.content["mainSteps"]
        with self._lock:
            answer = {
                "CommandId": command.command_id,
                "InstanceId": invocation.instance_id,
                "Comment": command.request.get("Comment") or "",
                "DocumentName": command.document_name,
                "DocumentVersion": command.document_version,
                "PluginName": step["name"],
                "ResponseCode": invocation.response_code,
                "ExecutionStartDateTime": _iso(invocation.started) if invocation.started else "",
                "ExecutionElapsedTime": _elapsed(invocation),
                "ExecutionEndDateTime": _iso(invocation.ended) if invocation.ended else "",
                "Status": invocation.status,
                "StatusDetails": invocation.status_details,
                "StandardOutputContent": invocation.stdout,
                "StandardOutputUrl": "",
                "StandardErrorContent": invocation.stderr,
                "StandardErrorUrl": "",
                "CloudWatchOutputConfig": command.request.get("CloudWatchOutputConfig") or {},
            }
        return ActionResult(answer)

    def _list_command_invocations(self, response: SimpleSystemManagerResponse) -> ActionResult:
        command_id = response._get_param("CommandId")
        instance_id = response._get_param("InstanceId")
        details = bool(response._get_param("Details"))
        max_results = min(int(response._get_param("MaxResults") or 50), 50)
        start = int(response._get_param("NextToken") or 0)
        with self._lock:
            selected = [
                (command, invocation)
                for command in self.commands.values()
                if command_id in (None, command.command_id)
                for invocation in command.invocations.values()
                if instance_id in (None, invocation.instance_id)
            ]
            page = selected[start : start + max_results]
            items = [self._list_item(command, invocation, details) for command, invocation in page]
        answer: dict[str, Any] = {"CommandInvocations": items}
        if start + max_results < len(selected):
            answer["NextToken"] = str(start + max_results)
        return ActionResult(answer)

    def _list_item(self, command: AgentCommand, invocation: CommandInvocation, details: bool) -> dict[str, Any]:
        item: dict[str, Any] = {
            "CommandId": command.command_id,
            "InstanceId": invocation.instance_id,
            "InstanceName": invocation.instance_name,
            "Comment": command.request.get("Comment") or "",
            "DocumentName": command.document_name,
            "DocumentVersion": command.document_version,
            "RequestedDateTime": invocation.requested,
            "Status": invocation.status,
            "StatusDetails": invocation.status_details,
            "TraceOutput": "",
            "StandardOutputUrl": "",
            "StandardErrorUrl": "",
            "CommandPlugins": [],
            "CloudWatchOutputConfig": command.request.get("CloudWatchOutputConfig") or {},
        }
        if details:
            (step,) = command.content["mainSteps"]
            plugin = {
                "Name": step["name"],
                "Status": invocation.status,
                "StatusDetails": invocation.status_details,
                "ResponseCode": invocation.response_code,
                "Output": invocation.stdout[:PLUGIN_OUTPUT_LIMIT],
                "StandardOutputUrl": "",
                "StandardErrorUrl": "",
            }
            if invocation.started:
                plugin["ResponseStartDateTime"] = invocation.started
            if invocation.ended:
                plugin["ResponseFinishDateTime"] = invocation.ended
            item["CommandPlugins"] = [plugin]
        return item

    def _command_counts(self, command: AgentCommand) -> dict[str, Any]:
        invocations = command.invocations.values()
        return {
            "Status": command.status,
            "StatusDetails": command.status_details,
            "TargetCount": len(command.invocations),
            "CompletedCount": sum(invocation.status in TERMINAL for invocation in invocations),
            "ErrorCount": sum(invocation.status in ERRORS for invocation in invocations),
            "DeliveryTimedOutCount": 0,
        }

    def _list_commands(self, response: SimpleSystemManagerResponse) -> ActionResult:
        backend = ssm_backends[ACCOUNT][REGION]
        commands = backend.list_commands(response._get_param("CommandId"), response._get_param("InstanceId"))
        items = []
        with self._lock:
            for command in commands:
                item = command.response_object()
                if command.command_id in self.commands:
                    item.update(self._command_counts(self.commands[command.command_id]))
                items.append(item)
        return ActionResult({"Commands": items})

    def _describe_instance_information(self, response: SimpleSystemManagerResponse) -> ActionResult:
        """Registered (Online) instances; Filters InstanceIds, PingStatus, tag:<key> and tag-key; pages of 50."""
        wanted: list[str] | None = None
        filters: list[tuple[str, list[str]]] = []
        for item in response._get_param("Filters") or []:
            filters.append((item["Key"], item["Values"]))
        for item in response._get_param("InstanceInformationFilterList") or []:
            filters.append((item["key"], item["valueSet"]))
        for key, values in filters:
            if key == "InstanceIds":
                wanted = values
        if wanted is not None and any(not self.registered(instance_id) for instance_id in wanted):
            # The API answers an error, not an empty list, for an id that is not a managed node.
            raise JsonRESTError("InvalidInstanceId", "Instance id(s) not registered with Systems Manager")
        ec2 = ec2_backends[ACCOUNT][REGION]
        tags_of = {
            instance.id: {tag["key"]: tag["value"] for tag in instance.get_tags()} for instance in ec2.all_instances()
        }
        items = []
        for instance_id, managed in self.managed.items():
            tags = tags_of.get(instance_id, {})
            if not managed.registered or not all(
                _info_matches(key, values, instance_id, tags) for key, values in filters
            ):
                continue
            items.append(
                {
                    "InstanceId": instance_id,
                    "PingStatus": "Online",
                    "LastPingDateTime": datetime.now(UTC),
                    "AgentVersion": "3.3.2746.0",
                    "IsLatestVersion": True,
                    "PlatformType": managed.platform.type,
                    "PlatformName": managed.platform.name,
                    "PlatformVersion": managed.platform.version,
                    "ResourceType": "EC2Instance",
                    "ComputerName": managed.node.name,
                }
            )
        max_results = min(int(response._get_param("MaxResults") or 50), 50)
        start = int(response._get_param("NextToken") or 0)
        answer: dict[str, Any] = {"InstanceInformationList": items[start : start + max_results]}
        if start + max_results < len(items):
            answer["NextToken"] = str(start + max_results)
        return ActionResult(answer)


def _unmet_precondition(step: dict[str, Any], platform: Platform) -> str | None:
    """The step's precondition as SSM prints it when the node does not satisfy it; None when it runs. Only
    StringEquals on platformType, the one this project's documents use."""
    precondition = step.get("precondition")
    if not precondition:
        return None
    ((operator, (variable, value)),) = precondition.items()
    if (operator, variable) != ("StringEquals", "platformType"):
        raise ValueError(f"precondition {precondition} is not emulated")
    return None if platform.type == value else f'"{operator}": [{variable}, {value}]'


def _info_matches(key: str, values: list[str], instance_id: str, tags: dict[str, str]) -> bool:
    if key == "InstanceIds":
        return instance_id in values
    if key == "PingStatus":
        return "Online" in values
    if key.startswith("tag:"):
        return tags.get(key[4:]) in values
    if key == "tag-key":
        return any(value in tags for value in values)
    raise JsonRESTError("InvalidInstanceInformationFilterValue", f"filter {key} is not emulated")


def _target_matches(target: dict[str, Any], instance_id: str, tags: dict[str, str]) -> bool:
    key, values = target["Key"], target.get("Values") or []
    if key == "InstanceIds":
        return instance_id in values
    if key.startswith("tag:"):
        return tags.get(key[4:]) in values
    if key == "tag-key":
        return any(value in tags for value in values)
    raise JsonRESTError("InvalidTarget", f"target key {key} is not emulated")


def _checked_parameters(content: dict[str, Any], given: dict[str, list[str]]) -> dict[str, str]:
    """The document's parameters with defaults filled in, checked as SendCommand checks them."""
    declared = content.get("parameters") or {}
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise JsonRESTError("InvalidParameters", f"Parameters {unknown} are not defined in the document")
    values = {}
    for name, spec in declared.items():
        if name in given:
            items = given[name]
            if len(items) != 1:
                raise JsonRESTError("InvalidParameters", f"Parameter {name} takes one String value")
            value = items[0]
        elif "default" in spec:
            value = str(spec["default"])
        else:
            raise JsonRESTError("InvalidParameters", f"Parameter {name} is required")
        pattern = spec.get("allowedPattern")
        if pattern is not None and not re.search(pattern, value):
            raise JsonRESTError("InvalidParameters", f"Parameter {name} does not match allowedPattern {pattern}")
        allowed = spec.get("allowedValues")
        if allowed is not None and value not in allowed:
            raise JsonRESTError("InvalidParameters", f"Parameter {name} is not one of {allowed}")
        values[name] = value
    return values


def _render(text: str, values: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda match: values.get(match.group(1), match.group(0)), text)


def _truncate(stdout: str, stderr: str) -> tuple[str, str]:
    return stdout[:STDOUT_LIMIT], stderr[:STDERR_LIMIT]


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _elapsed(invocation: CommandInvocation) -> str:
    seconds = invocation.seconds
    if seconds is None:
        return ""
    return f"PT{seconds:.3f}S"
