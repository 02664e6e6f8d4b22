"""The ValidateConfiguration custom resource: refuses a deploy whose configuration the functions would refuse
(``eks_prefetch.deploy.config_check``), with the problem as CloudFormation's reason."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from eks_prefetch.deploy.config_check import CheckOutcome, on_request
from eks_prefetch.deploy.custom_resource import answer, malformed_resource_id

logger = Logger()

RESOURCE = "ValidateConfiguration"


@logger.inject_lambda_context(clear_state=True)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    # Read leniently, not with the custom resource request model: the check needs only the request type and the
    # properties, and the local stack (harness.stack) sends it neither ServiceToken nor ResponseURL.
    fields = event if isinstance(event, dict) else {}
    request_type = str(fields.get("RequestType", ""))
    properties = fields.get("ResourceProperties")
    if request_type not in {"Create", "Update", "Delete"} or not isinstance(properties, dict):
        # Still answered when possible (deploy.custom_resource.answer). A delete is never refused.
        status = "SUCCESS" if request_type == "Delete" else "FAILED"
        outcome = CheckOutcome(status, "malformed custom resource request", malformed_resource_id(event, RESOURCE))
    else:
        logical_id = str(fields.get("LogicalResourceId") or RESOURCE)
        outcome = on_request(request_type, properties, fields.get("PhysicalResourceId"), logical_id)
    log = logger.info if outcome.status == "SUCCESS" else logger.error
    log(
        "configuration check answered",
        extra={"request_type": request_type, "status": outcome.status, "reason": outcome.reason},
    )
    undelivered = answer(event, outcome)
    if undelivered:
        logger.error("custom resource response not delivered", extra={"error": undelivered})
    return {"status": outcome.status, "reason": outcome.reason}
