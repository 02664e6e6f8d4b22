"""What the operator's commands (`make status`, `make preflight`, `make unpin`) share: their arguments and the
check, before any AWS call, that this shell can make one."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import TextIO

from eks_prefetch import aws


def stack_arguments(prog: str, description: str, argv: Sequence[str] | None, err: TextIO) -> argparse.Namespace | None:
    """``--stack`` and ``--region``, the region applied; None (the reason written to ``err``) when no AWS call can be
    made from this shell (no region, no credentials)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--stack", required=True, help="the CloudFormation stack name")
    parser.add_argument("--region", default=None, help="the stack's region (default: the AWS configuration's)")
    args = parser.parse_args(argv)
    if args.region:
        # Before the first AWS call: clients are created on first use and then read it.
        os.environ["AWS_DEFAULT_REGION"] = args.region
    problem = aws.stack.session_problem()
    if problem:
        err.write(problem + "\n")
        return None
    return args
