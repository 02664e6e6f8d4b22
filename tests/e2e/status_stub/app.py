"""A stand-in for a function the template may wire to SSM status events (tests/e2e/test_emulator.py)."""

from typing import Any


def lambda_handler(event: dict[str, Any], _context: Any) -> dict[str, Any]:
    return {"instance": event["detail"]["instance-id"], "status": event["detail"]["status"]}
