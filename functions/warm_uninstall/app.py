"""The warm volumes' uninstall custom resource: on stack deletion, stop the builds, terminate the builders and
disable Fast Snapshot Restore, so that nothing left behind keeps billing. Always answers SUCCESS, so the deletion is
never blocked by it."""

from __future__ import annotations

from typing import Annotated, Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.parser import parse
from aws_lambda_powertools.utilities.parser.models import (
    CloudFormationCustomResourceCreateModel,
    CloudFormationCustomResourceDeleteModel,
    CloudFormationCustomResourceUpdateModel,
)
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import Field, ValidationError

from eks_prefetch import aws
from eks_prefetch.deploy.custom_resource import deliver, response_body
from eks_prefetch.deploy.unpin import physical_resource_id
from eks_prefetch.warm.uninstall import WarmUninstallOutcome, WarmUninstallSettings, on_custom_resource

logger = Logger()

CustomResourceRequest = Annotated[
    CloudFormationCustomResourceCreateModel
    | CloudFormationCustomResourceUpdateModel
    | CloudFormationCustomResourceDeleteModel,
    Field(discriminator="request_type"),
]


@logger.inject_lambda_context(clear_state=True)
@aws.within_invocation_time
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    try:
        request = parse(event, CustomResourceRequest)
    except (ValidationError, ValueError) as error:
        # Still answer if we can: an unanswered request holds the stack operation until ServiceTimeout.
        logger.error("malformed custom resource request", extra={"error": str(error)[:500]})
        return _answer_malformed(event)

    resource_id = getattr(request, "physical_resource_id", None) or physical_resource_id(
        request.stack_id, request.logical_resource_id
    )
    outcome = on_custom_resource(request.request_type, resource_id, settings=WarmUninstallSettings.from_env)
    logger.info("custom resource answered", extra={"request_type": request.request_type, **outcome.as_dict()})
    body = response_body(outcome, request.stack_id, request.request_id, request.logical_resource_id, data=outcome.data)
    _deliver(str(request.response_url), body)
    return outcome.as_dict()


def _answer_malformed(event: Any) -> dict[str, Any]:
    fields = event if isinstance(event, dict) else {}
    resource_id = str(fields.get("PhysicalResourceId") or fields.get("LogicalResourceId") or "warm-uninstall")
    outcome = WarmUninstallOutcome(resource_id, "malformed request: nothing done")
    url = fields.get("ResponseURL")
    if isinstance(url, str) and url.startswith(("https://", "http://")):
        stack_id, request_id = str(fields.get("StackId", "")), str(fields.get("RequestId", ""))
        _deliver(url, response_body(outcome, stack_id, request_id, str(fields.get("LogicalResourceId", ""))))
    return outcome.as_dict()


def _deliver(url: str, body: dict[str, Any]) -> None:
    failed = deliver(url, body)
    if failed:
        logger.error("custom resource response not delivered", extra={"error": failed})
