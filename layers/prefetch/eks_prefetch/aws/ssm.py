"""SSM: Run Command (send, find, invocations) and the managed nodes' agents."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

from botocore.exceptions import ClientError

from eks_prefetch.aws import clients
from eks_prefetch.aws.clients import error_code, is_throttling
from eks_prefetch.aws.errors import CommandRefusedError, InstanceNotAcceptedError


def send_command(request: Mapping[str, Any], ssm: Any = None) -> str:
    """Send one Run Command and return its id. Never retried after an ambiguous failure (see ``clients``).
    Raises CommandRefusedError (InstanceNotAcceptedError for an instance id) when SSM refuses the request."""
    try:
        response = (ssm or clients.client("ssm")).send_command(**request)
    except ClientError as error:
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 400)
        if status >= 500 or is_throttling(error):
            raise
        message = error.response.get("Error", {}).get("Message", "")
        if error_code(error) == "InvalidInstanceId":
            raise InstanceNotAcceptedError(error_code(error), message) from error
        raise CommandRefusedError(error_code(error), message) from error
    return response["Command"]["CommandId"]


def find_command(document_name: str, comment_marker: str, invoked_after: datetime) -> str | None:
    """The id of a command of this document, sent since ``invoked_after``, whose Comment carries the marker."""
    pages = (
        clients.client("ssm")
        .get_paginator("list_commands")
        .paginate(
            Filters=[
                {"key": "DocumentName", "value": document_name},
                {"key": "InvokedAfter", "value": invoked_after.strftime("%Y-%m-%dT%H:%M:%SZ")},
            ],
        )
    )
    for page in pages:
        for command in page["Commands"]:
            if command.get("DocumentName") == document_name and comment_marker in (command.get("Comment") or ""):
                return command["CommandId"]
    return None


def online_agent(instance_id: str, ssm: Any = None) -> Mapping[str, Any] | None:
    """The instance's managed-node information (platform, agent) if its SSM agent has registered and is Online, else
    None: until then SendCommand by id fails."""
    try:
        response = (ssm or clients.client("ssm")).describe_instance_information(
            Filters=[{"Key": "InstanceIds", "Values": [instance_id]}],
        )
    except ClientError as error:
        # The API documents an error, rather than an empty list, for an id it does not know as a managed node.
        if error_code(error) == "InvalidInstanceId":
            return None
        raise
    return next(
        (
            info
            for info in response["InstanceInformationList"]
            if info.get("InstanceId") == instance_id and info.get("PingStatus") == "Online"
        ),
        None,
    )


def agent_online(instance_id: str, ssm: Any = None) -> bool:
    """Whether the instance's SSM agent has registered and is Online."""
    return online_agent(instance_id, ssm) is not None


def get_command_invocation(command_id: str, instance_id: str, ssm: Any = None) -> Mapping[str, Any] | None:
    """One node's invocation with its output (first 24,000 characters of stdout), or None if SSM has none."""
    try:
        return (ssm or clients.client("ssm")).get_command_invocation(CommandId=command_id, InstanceId=instance_id)
    except ClientError as error:
        if error_code(error) in {"InvocationDoesNotExist", "InvalidCommandId", "InvalidInstanceId"}:
            return None
        raise


def get_command(command_id: str, ssm: Any = None) -> Mapping[str, Any] | None:
    """A command as ListCommands shows it (document, parameters, status), or None if SSM does not know it."""
    try:
        commands = (ssm or clients.client("ssm")).list_commands(CommandId=command_id)["Commands"]
    except ClientError as error:
        if error_code(error) == "InvalidCommandId":
            return None
        raise
    return commands[0] if commands else None


def list_document_commands(document_name: str, invoked_after: datetime, ssm: Any = None) -> Iterator[Mapping[str, Any]]:
    """The commands of one document requested after a time, page by page."""
    paginator = (ssm or clients.client("ssm")).get_paginator("list_commands")
    pages = paginator.paginate(
        Filters=[
            {"key": "DocumentName", "value": document_name},
            {"key": "InvokedAfter", "value": invoked_after.strftime("%Y-%m-%dT%H:%M:%SZ")},
        ],
        PaginationConfig={"PageSize": 50},
    )
    for page in pages:
        yield from page["Commands"]


def list_command_invocations(command_id: str, ssm: Any = None) -> Iterator[Mapping[str, Any]]:
    """Every node's invocation of a command, without output (50 a page)."""
    paginator = (ssm or clients.client("ssm")).get_paginator("list_command_invocations")
    for page in paginator.paginate(CommandId=command_id, Details=False, PaginationConfig={"PageSize": 50}):
        yield from page["CommandInvocations"]


def online_managed_nodes(tag_key: str, tag_value: str, ssm: Any = None) -> Iterator[Mapping[str, Any]]:
    """Managed nodes carrying the node tag whose SSM agent is Online, page by page."""
    paginator = (ssm or clients.client("ssm")).get_paginator("describe_instance_information")
    pages = paginator.paginate(
        Filters=[
            {"Key": f"tag:{tag_key}", "Values": [tag_value]},
            {"Key": "PingStatus", "Values": ["Online"]},
        ],
        PaginationConfig={"PageSize": 50},
    )
    for page in pages:
        for info in page["InstanceInformationList"]:
            # The filter is the server's; the check keeps an agent that went offline between pages out.
            if info.get("PingStatus") == "Online":
                yield info


def managed_instances(tag_key: str, tag_value: str, ssm: Any = None) -> list[Mapping[str, Any]]:
    """Managed nodes SSM knows with the node tag, whatever their PingStatus (Online, ConnectionLost, Inactive)."""
    paginator = (ssm or clients.client("ssm")).get_paginator("describe_instance_information")
    pages = paginator.paginate(
        Filters=[{"Key": f"tag:{tag_key}", "Values": [tag_value]}], PaginationConfig={"PageSize": 50}
    )
    return [info for page in pages for info in page["InstanceInformationList"]]


def get_parameter_value(name: str, ssm: Any = None) -> str | None:
    """A parameter's value, or None if it does not exist."""
    try:
        return (ssm or clients.client("ssm")).get_parameter(Name=name)["Parameter"]["Value"]
    except ClientError as error:
        if error_code(error) == "ParameterNotFound":
            return None
        raise
