"""``make unpin STACK=<name>``: what deleting the stack does, on demand: one command, by the node tag, that removes
this application's pins (and no one else's) from every node (eks_prefetch.deploy.unpin builds the request)."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import TextIO

from eks_prefetch import aws
from eks_prefetch.deploy.unpin import UnpinTarget, unpin_request
from prefetchctl.cli import stack_arguments

UNPIN_DOCUMENT_OUTPUT = "UnpinDocumentName"


def target_of_stack(outputs: Mapping[str, str], parameters: Mapping[str, str]) -> UnpinTarget:
    """The unpin document and the node tag of a deployed stack (an empty NodeTagValue means the cluster name)."""
    document = outputs.get(UNPIN_DOCUMENT_OUTPUT)
    if not document:
        raise LookupError(f"the stack has no {UNPIN_DOCUMENT_OUTPUT} output: deploy this version first")
    return UnpinTarget(
        document_name=document,
        node_tag_key=parameters.get("NodeTagKey") or "eks:cluster-name",
        node_tag_value=parameters.get("NodeTagValue") or parameters["ClusterName"],
    )


def main(argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """``make unpin STACK=<name>``: exit 0 when the command was sent, 2 when the stack cannot be read or SSM refused."""
    out, err = out or sys.stdout, err or sys.stderr
    args = stack_arguments("make unpin", "Remove this application's pins from every node.", argv, err)
    if args is None:
        return 2
    try:
        outputs, parameters = aws.stack.describe_stack(args.stack)
        target = target_of_stack(outputs, parameters)
        command_id = aws.ssm.send_command(unpin_request(target))
    except (LookupError, aws.CommandRefusedError, *aws.AWS_ERRORS) as error:
        err.write(f"cannot unpin for the stack {args.stack}: {error}\n")
        return 2
    out.write(
        f"unpin command {command_id} sent to the nodes tagged {target.node_tag_key}={target.node_tag_value}\n"
        f"follow it: aws ssm list-command-invocations --command-id {command_id} --details\n"
    )
    return 0
