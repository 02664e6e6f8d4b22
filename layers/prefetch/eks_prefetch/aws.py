"""Thin adapters over boto3: the only module that talks to AWS.

Clients are created on first use, so tests (moto, Stubber) take effect, and share one retry policy: botocore's
adaptive mode retries throttling and transient faults with backoff and client-side rate limiting.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

import boto3
from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.config import Config
from botocore.exceptions import ClientError

from eks_prefetch.images import partition_dns_suffix

RETRY_CONFIG = Config(
    retries={"mode": "adaptive", "max_attempts": 8},
    connect_timeout=5,
    read_timeout=20,
)


@functools.cache
def client(service: str) -> Any:
    return boto3.client(service, config=RETRY_CONFIG)


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
    """Send one Run Command and return its id."""
    response = (ssm or client("ssm")).send_command(**request)
    return response["Command"]["CommandId"]


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
