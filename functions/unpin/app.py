"""The uninstall custom resource: on stack deletion, one best-effort command that removes this application's pins
from the cluster's nodes. Always answers SUCCESS, so the deletion is never blocked by it."""

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
from eks_prefetch.deploy.unpin import CustomResourceOutcome, UnpinTarget, on_custom_resource

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

    outcome = on_custom_resource(
        request.request_type,
        getattr(request, "physical_resource_id", None),
        request.stack_id,
        request.logical_resource_id,
        target=UnpinTarget.from_env,
        send=aws.ssm.send_command,
    )
    logger.info("custom resource answered", extra={"request_type": request.request_type, **outcome.as_dict()})
    body = response_body(outcome, request.stack_id, request.request_id, request.logical_resource_id, data=outcome.data)
    _deliver(str(request.response_url), body)
    return outcome.as_dict()


def _answer_malformed(event: Any) -> dict[str, Any]:
    fields = event if isinstance(event, dict) else {}
    outcome = CustomResourceOutcome(
        str(fields.get("PhysicalResourceId") or fields.get("LogicalResourceId") or "unpin"), "malformed request"
    )
    url = fields.get("ResponseURL")
    if isinstance(url, str) and url.startswith(("https://", "http://")):
        body = response_body(
            outcome,
            str(fields.get("StackId", "")),
            str(fields.get("RequestId", "")),
            str(fields.get("LogicalResourceId", "")),
            data=outcome.data,
        )
        _deliver(url, body)
    return outcome.as_dict()


def _deliver(url: str, body: dict[str, Any]) -> None:
    failed = deliver(url, body)
    if failed:
        logger.error("custom resource response not delivered", extra={"error": failed})
