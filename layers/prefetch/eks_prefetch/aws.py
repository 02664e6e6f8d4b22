"""Thin adapters over boto3: the only module that talks to AWS.

Clients are created on first use, so tests (moto, Stubber) take effect, and share one retry policy: botocore's
standard mode retries throttling and transient faults with jittered backoff. Two guards sit in front of it, on every
client's ``needs-retry`` event:

- SendCommand is not idempotent, so it is never retried blindly after an ambiguous failure (the request may have
  reached SSM: a read timeout, a reset connection, a 5xx). ``sending`` looks the command up instead.
- No retry starts that could outlast the invocation: with a deadline set from the Lambda context, a retry is allowed
  only while its worst-case backoff plus one whole attempt still fits.

(Adaptive mode is not used: its client-side rate limiter can block before a send for as long as throttling lasts,
which no deadline bounds.)
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from typing import Any, TypeVar

import boto3
from aws_lambda_powertools import Logger
from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.config import Config
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
)

from eks_prefetch.images import partition_dns_suffix

logger = Logger(child=True)

CONNECT_TIMEOUT_SECONDS = 3
READ_TIMEOUT_SECONDS = 10
MAX_ATTEMPTS = 8
# botocore's standard mode sleeps at most this long between attempts.
MAX_BACKOFF_SECONDS = 20
# The longest one attempt can take: connecting, then waiting for the answer.
WORST_ATTEMPT_SECONDS = CONNECT_TIMEOUT_SECONDS + READ_TIMEOUT_SECONDS
# Kept free at the end of an invocation to log and return a result.
RESERVE_SECONDS = 2.0

RETRY_CONFIG = Config(
    retries={"mode": "standard", "max_attempts": MAX_ATTEMPTS},
    connect_timeout=CONNECT_TIMEOUT_SECONDS,
    read_timeout=READ_TIMEOUT_SECONDS,
)

# Operations that create something on each call that reaches AWS: never re-sent after an ambiguous failure.
NOT_IDEMPOTENT = frozenset({("ssm", "SendCommand")})

_clock: Callable[[], float] = time.monotonic
_deadline: float | None = None


def set_deadline(remaining_seconds: float | None) -> None:
    """Bound every call's retries by the time this invocation has left (None: no bound)."""
    global _deadline  # noqa: PLW0603 - one invocation at a time per Lambda container
    _deadline = None if remaining_seconds is None else _clock() + remaining_seconds - RESERVE_SECONDS


def seconds_left() -> float | None:
    """Seconds until the invocation's deadline (less the reserve), or None without one."""
    return None if _deadline is None else _deadline - _clock()


Handler = TypeVar("Handler", bound=Callable[..., Any])


def within_invocation_time(handler: Handler) -> Handler:
    """Decorate a Lambda handler so that AWS retries never outlast its invocation."""

    @functools.wraps(handler)
    def bounded(event: Any, context: Any) -> Any:
        remaining_ms = getattr(context, "get_remaining_time_in_millis", None)
        set_deadline(remaining_ms() / 1000 if remaining_ms else None)
        try:
            return handler(event, context)
        finally:
            set_deadline(None)

    return bounded  # type: ignore[return-value]


def is_ambiguous_failure(caught_exception: BaseException | None, response: Any) -> bool:
    """Whether the request may have reached AWS and been carried out although no success came back."""
    if caught_exception is not None:
        # Not connected at all: the request never left. Anything else on the wire (read timeout, reset) may have.
        return isinstance(caught_exception, HTTPClientError) and not isinstance(
            caught_exception, (EndpointConnectionError, ConnectTimeoutError)
        )
    if response is not None:
        http, _parsed = response
        return getattr(http, "status_code", 0) >= 500
    return False


def is_ambiguous_error(error: BaseException) -> bool:
    """Whether an error a call raised may hide a request that AWS carried out (see is_ambiguous_failure)."""
    if isinstance(error, ClientError):
        return error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) >= 500
    return is_ambiguous_failure(error, None)


def _retry_guard(
    attempts: int,
    operation: Any = None,
    response: Any = None,
    caught_exception: BaseException | None = None,
    **_: Any,
) -> bool | None:
    """False vetoes the retry botocore's retry handler would make; None leaves the decision to it."""
    name = (operation.service_model.service_name, operation.name) if operation is not None else None
    if name in NOT_IDEMPOTENT and is_ambiguous_failure(caught_exception, response):
        logger.warning(
            "not retrying a non-idempotent call after an ambiguous failure",
            extra={
                "operation": name[1],
                "attempts": attempts,
                "error": repr(caught_exception) if caught_exception else None,
            },
        )
        return False
    left = seconds_left()
    if left is not None and left < min(MAX_BACKOFF_SECONDS, 2 ** (attempts - 1)) + WORST_ATTEMPT_SECONDS:
        if response is not None or caught_exception is not None:
            logger.warning(
                "no time left in this invocation for another retry",
                extra={"operation": name[1] if name else None, "attempts": attempts, "seconds_left": round(left, 1)},
            )
        return False
    return None


@functools.cache
def client(service: str) -> Any:
    created = boto3.client(service, config=RETRY_CONFIG)
    # First among the service's needs-retry handlers, so that its False wins over the retry handler's delay.
    created.meta.events.register_first(f"needs-retry.{created.meta.service_model.service_id.hyphenize()}", _retry_guard)
    return created


def reset_clients() -> None:
    """Forget cached clients (tests start each AWS mock with new ones)."""
    client.cache_clear()


def describe_tagged_images(repository: str, ecr: Any = None) -> Iterator[Mapping[str, Any]]:
    """Every tagged image of a repository, page by page (ECR neither sorts nor returns more than 1,000 a page)."""
    paginator = (ecr or client("ecr")).get_paginator("describe_images")
    pages = paginator.paginate(
        repositoryName=repository,
        filter={"tagStatus": "TAGGED"},
        PaginationConfig={"PageSize": 1000},
    )
    for page in pages:
        yield from page["imageDetails"]


def image_exists(repository: str, digest: str, ecr: Any = None) -> bool:
    """Whether the repository holds an image with this digest, tagged or not."""
    try:
        (ecr or client("ecr")).describe_images(repositoryName=repository, imageIds=[{"imageDigest": digest}])
    except ClientError as error:
        if error.response["Error"]["Code"] == "ImageNotFoundException":
            return False
        raise
    return True


def send_command(request: Mapping[str, Any], ssm: Any = None) -> str:
    """Send one Run Command and return its id. Never retried after an ambiguous failure (see the module doc)."""
    response = (ssm or client("ssm")).send_command(**request)
    return response["Command"]["CommandId"]


def find_command(document_name: str, comment_marker: str, invoked_after: datetime) -> str | None:
    """The id of a command of this document, sent since ``invoked_after``, whose Comment carries the marker."""
    pages = (
        client("ssm")
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


def record_send_attempt(table_name: str, attempt_key: str, now: datetime, ttl_seconds: int) -> tuple[int, datetime]:
    """Count an attempt to send for this key; return (the attempt's number, when the first attempt began)."""
    response = client("dynamodb").update_item(
        TableName=table_name,
        Key={"id": {"S": attempt_key}},
        UpdateExpression="SET attempts = if_not_exists(attempts, :zero) + :one, "
        "first_attempt_at = if_not_exists(first_attempt_at, :now), expiration = :expiration",
        ExpressionAttributeValues={
            ":zero": {"N": "0"},
            ":one": {"N": "1"},
            ":now": {"S": now.isoformat()},
            ":expiration": {"N": str(int(now.timestamp()) + ttl_seconds)},
        },
        ReturnValues="ALL_NEW",
    )
    item = response["Attributes"]
    return int(item["attempts"]["N"]), datetime.fromisoformat(item["first_attempt_at"]["S"])


def describe_instance(instance_id: str, ec2: Any = None) -> Mapping[str, Any] | None:
    """The instance as DescribeInstances shows it, or None if EC2 does not know it (InvalidInstanceID.NotFound)."""
    try:
        response = (ec2 or client("ec2")).describe_instances(InstanceIds=[instance_id])
    except ClientError as error:
        if error.response["Error"]["Code"] == "InvalidInstanceID.NotFound":
            return None
        raise
    instances = [instance for reservation in response["Reservations"] for instance in reservation["Instances"]]
    return instances[0] if instances else None


def describe_instances(instance_ids: list[str], ec2: Any = None) -> dict[str, Mapping[str, Any]]:
    """The instances EC2 knows among these ids, by id, in one call per 200 ids. A filter, not InstanceIds, so that
    an unknown id is left out instead of failing the call."""
    found: dict[str, Mapping[str, Any]] = {}
    paginator = (ec2 or client("ec2")).get_paginator("describe_instances")
    for start in range(0, len(instance_ids), 200):
        pages = paginator.paginate(Filters=[{"Name": "instance-id", "Values": instance_ids[start : start + 200]}])
        for page in pages:
            for reservation in page["Reservations"]:
                for instance in reservation["Instances"]:
                    found[instance["InstanceId"]] = instance
    return found


def agent_online(instance_id: str, ssm: Any = None) -> bool:
    """Whether the instance's SSM agent has registered and is Online: until then SendCommand by id fails."""
    try:
        response = (ssm or client("ssm")).describe_instance_information(
            Filters=[{"Key": "InstanceIds", "Values": [instance_id]}],
        )
    except ClientError as error:
        # The API documents an error, rather than an empty list, for an id it does not know as a managed node.
        if error.response["Error"]["Code"] == "InvalidInstanceId":
            return False
        raise
    return any(
        info.get("InstanceId") == instance_id and info.get("PingStatus") == "Online"
        for info in response["InstanceInformationList"]
    )


def queue_url(queue_arn: str) -> str:
    """The URL of the SQS queue an ARN names (the Lambda SQS event carries only the ARN)."""
    _arn, _partition, _service, region, account, name = queue_arn.split(":", 5)
    return f"https://sqs.{region}.{partition_dns_suffix(region)}/{account}/{name}"


def change_visibility(queue_arn: str, receipt_handle: str, timeout_seconds: int, sqs: Any = None) -> None:
    """Hide a received message for timeout_seconds from now: the queue's own, Lambda-free, retry delay."""
    (sqs or client("sqs")).change_message_visibility(
        QueueUrl=queue_url(queue_arn),
        ReceiptHandle=receipt_handle,
        VisibilityTimeout=timeout_seconds,
    )


# --- Status function (issue 8): command invocations, managed nodes, the status table, a deployed stack ---------------

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


def get_command_invocation(command_id: str, instance_id: str, ssm: Any = None) -> Mapping[str, Any] | None:
    """One node's invocation with its output (first 24,000 characters of stdout), or None if SSM has none."""
    try:
        return (ssm or client("ssm")).get_command_invocation(CommandId=command_id, InstanceId=instance_id)
    except ClientError as error:
        if error.response["Error"]["Code"] in {"InvocationDoesNotExist", "InvalidCommandId", "InvalidInstanceId"}:
            return None
        raise


def get_command(command_id: str, ssm: Any = None) -> Mapping[str, Any] | None:
    """A command as ListCommands shows it (document, parameters, status), or None if SSM does not know it."""
    try:
        commands = (ssm or client("ssm")).list_commands(CommandId=command_id)["Commands"]
    except ClientError as error:
        if error.response["Error"]["Code"] == "InvalidCommandId":
            return None
        raise
    return commands[0] if commands else None


def list_document_commands(document_name: str, invoked_after: datetime, ssm: Any = None) -> Iterator[Mapping[str, Any]]:
    """The commands of one document requested after a time, page by page."""
    paginator = (ssm or client("ssm")).get_paginator("list_commands")
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
    paginator = (ssm or client("ssm")).get_paginator("list_command_invocations")
    for page in paginator.paginate(CommandId=command_id, Details=False, PaginationConfig={"PageSize": 50}):
        yield from page["CommandInvocations"]


def online_managed_nodes(tag_key: str, tag_value: str, ssm: Any = None) -> Iterator[Mapping[str, Any]]:
    """Managed nodes carrying the node tag whose SSM agent is Online, page by page."""
    paginator = (ssm or client("ssm")).get_paginator("describe_instance_information")
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


def _item(values: Mapping[str, Any]) -> dict[str, Any]:
    return {name: _serializer.serialize(value) for name, value in values.items()}


def _plain(item: Mapping[str, Any]) -> dict[str, Any]:
    return {name: _deserializer.deserialize(value) for name, value in item.items()}


def put_new_item(table: str, item: Mapping[str, Any], dynamodb: Any = None) -> bool:
    """Write the item unless its key exists; False if it did (a conditional write: the first writer wins)."""
    try:
        (dynamodb or client("dynamodb")).put_item(
            TableName=table, Item=_item(item), ConditionExpression="attribute_not_exists(pk)"
        )
    except ClientError as error:
        if error.response["Error"]["Code"] == "ConditionalCheckFailedException":
            return False
        raise
    return True


def put_item(table: str, item: Mapping[str, Any], dynamodb: Any = None) -> None:
    (dynamodb or client("dynamodb")).put_item(TableName=table, Item=_item(item))


def get_item(table: str, key: Mapping[str, Any], dynamodb: Any = None) -> dict[str, Any] | None:
    response = (dynamodb or client("dynamodb")).get_item(TableName=table, Key=_item(key), ConsistentRead=True)
    return _plain(response["Item"]) if "Item" in response else None


def update_item(
    table: str,
    key: Mapping[str, Any],
    update: str,
    values: Mapping[str, Any],
    *,
    condition: str | None = None,
    dynamodb: Any = None,
) -> dict[str, Any] | None:
    """Apply an update expression; return the item's attributes before it ({} if new), or None if the condition
    failed."""
    request: dict[str, Any] = {
        "TableName": table,
        "Key": _item(key),
        "UpdateExpression": update,
        "ExpressionAttributeValues": _item(values),
        "ReturnValues": "ALL_OLD",
    }
    if condition:
        request["ConditionExpression"] = condition
    try:
        response = (dynamodb or client("dynamodb")).update_item(**request)
    except ClientError as error:
        if error.response["Error"]["Code"] == "ConditionalCheckFailedException":
            return None
        raise
    return _plain(response.get("Attributes", {}))


def batch_get_items(table: str, keys: list[Mapping[str, Any]], dynamodb: Any = None) -> list[dict[str, Any]]:
    """Every existing item of the keys, 100 a request, unprocessed keys asked again (botocore retries the rest)."""
    found: list[dict[str, Any]] = []
    ddb = dynamodb or client("dynamodb")
    for start in range(0, len(keys), 100):
        request = {table: {"Keys": [_item(key) for key in keys[start : start + 100]], "ConsistentRead": True}}
        for _attempt in range(10):
            response = ddb.batch_get_item(RequestItems=request)
            found.extend(_plain(item) for item in response["Responses"].get(table, []))
            request = response.get("UnprocessedKeys") or {}
            if not request:
                break
            time.sleep(0.05 * (_attempt + 1))
        else:
            raise RuntimeError(f"DynamoDB left keys of {table} unprocessed after 10 attempts")
    return found


def stack_outputs(stack_name: str, cloudformation: Any = None) -> dict[str, str]:
    (stack,) = (cloudformation or client("cloudformation")).describe_stacks(StackName=stack_name)["Stacks"]
    return {output["OutputKey"]: output["OutputValue"] for output in stack.get("Outputs", [])}


def function_environment(function_name: str, lambda_client: Any = None) -> dict[str, str]:
    configuration = (lambda_client or client("lambda")).get_function_configuration(FunctionName=function_name)
    return dict(configuration.get("Environment", {}).get("Variables", {}))


def current_region() -> str | None:
    """The region boto3 resolves from the environment and the AWS config (for a command run by a person)."""
    return boto3.session.Session().region_name
