"""DynamoDB: items of a table as plain Python values, conditional writes as booleans."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

from eks_prefetch.aws import clients
from eks_prefetch.aws.clients import error_code

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


def to_item(values: Mapping[str, Any]) -> dict[str, Any]:
    return {name: _serializer.serialize(value) for name, value in values.items()}


def from_item(item: Mapping[str, Any]) -> dict[str, Any]:
    return {name: _deserializer.deserialize(value) for name, value in item.items()}


def put_new_item(table: str, item: Mapping[str, Any], dynamodb: Any = None) -> bool:
    """Write the item unless its key exists; False if it did (a conditional write: the first writer wins)."""
    try:
        (dynamodb or clients.client("dynamodb")).put_item(
            TableName=table, Item=to_item(item), ConditionExpression="attribute_not_exists(pk)"
        )
    except ClientError as error:
        if error_code(error) == "ConditionalCheckFailedException":
            return False
        raise
    return True


def put_item(table: str, item: Mapping[str, Any], dynamodb: Any = None) -> None:
    (dynamodb or clients.client("dynamodb")).put_item(TableName=table, Item=to_item(item))


def get_item(table: str, key: Mapping[str, Any], dynamodb: Any = None) -> dict[str, Any] | None:
    response = (dynamodb or clients.client("dynamodb")).get_item(TableName=table, Key=to_item(key), ConsistentRead=True)
    return from_item(response["Item"]) if "Item" in response else None


def update_item(
    table: str,
    key: Mapping[str, Any],
    update: str,
    values: Mapping[str, Any],
    *,
    condition: str | None = None,
    names: Mapping[str, str] | None = None,
    returning: str = "ALL_OLD",
    dynamodb: Any = None,
) -> dict[str, Any] | None:
    """Apply an update expression; return the item's attributes before it ({} if new; after it with
    ``returning="ALL_NEW"``), or None if the condition failed."""
    request: dict[str, Any] = {
        "TableName": table,
        "Key": to_item(key),
        "UpdateExpression": update,
        "ExpressionAttributeValues": to_item(values),
        "ReturnValues": returning,
    }
    if condition:
        request["ConditionExpression"] = condition
    if names:
        request["ExpressionAttributeNames"] = dict(names)
    try:
        response = (dynamodb or clients.client("dynamodb")).update_item(**request)
    except ClientError as error:
        if error_code(error) == "ConditionalCheckFailedException":
            return None
        raise
    return from_item(response.get("Attributes", {}))


def batch_get_items(table: str, keys: list[Mapping[str, Any]], dynamodb: Any = None) -> list[dict[str, Any]]:
    """Every existing item of the keys, 100 a request, unprocessed keys asked again (botocore retries the rest)."""
    found: list[dict[str, Any]] = []
    ddb = dynamodb or clients.client("dynamodb")
    for start in range(0, len(keys), 100):
        request = {table: {"Keys": [to_item(key) for key in keys[start : start + 100]], "ConsistentRead": True}}
        for _attempt in range(10):
            response = ddb.batch_get_item(RequestItems=request)
            found.extend(from_item(item) for item in response["Responses"].get(table, []))
            request = response.get("UnprocessedKeys") or {}
            if not request:
                break
            time.sleep(0.05 * (_attempt + 1))
        else:
            raise RuntimeError(f"DynamoDB left keys of {table} unprocessed after 10 attempts")
    return found
