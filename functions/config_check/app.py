"""The ValidateConfiguration custom resource: refuses a deploy whose configuration the functions would refuse
(``eks_prefetch.deploy.config_check``), with the problem as CloudFormation's reason."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from eks_prefetch import aws
from eks_prefetch.deploy.config_check import CheckOutcome, on_request
from eks_prefetch.deploy.custom_resource import response_body

logger = Logger()


@logger.inject_lambda_context(clear_state=True)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    fields = event if isinstance(event, dict) else {}
    request_type = str(fields.get("RequestType", ""))
    logical_id = str(fields.get("LogicalResourceId") or "ValidateConfiguration")
    properties = fields.get("ResourceProperties")
    if request_type not in {"Create", "Update", "Delete"} or not isinstance(properties, dict):
        # Still answered when possible: an unanswered request holds the stack operation until ServiceTimeout. A
        # delete is never refused.
        status = "SUCCESS" if request_type == "Delete" else "FAILED"
        outcome = CheckOutcome(
            status, "malformed custom resource request", str(fields.get("PhysicalResourceId") or logical_id)
        )
    else:
        outcome = on_request(request_type, properties, fields.get("PhysicalResourceId"), logical_id)
    log = logger.info if outcome.status == "SUCCESS" else logger.error
    log(
        "configuration check answered",
        extra={"request_type": request_type, "status": outcome.status, "reason": outcome.reason},
    )
    url = fields.get("ResponseURL")
    if isinstance(url, str) and url.startswith(("https://", "http://")):
        body = response_body(outcome, str(fields.get("StackId", "")), str(fields.get("RequestId", "")), logical_id)
        try:
            aws.stack.put_custom_resource_response(url, body)
        except ConnectionError as error:
            # CloudFormation fails the operation after ServiceTimeout. The URL is pre-signed: not logged.
            logger.error("custom resource response not delivered", extra={"error": str(error)[:300]})
    return {"status": outcome.status, "reason": outcome.reason}
