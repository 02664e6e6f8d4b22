"""`make status` (prefetchctl.status) against moto: a deployed stack's outputs and its status function's
environment, the status table the function wrote, and the fleet.

Test doubles: ``FakeInvocations`` and ``Agents`` (testing/ssm.py) for what moto lacks (invocation
results, ListCommandInvocations, DescribeInstanceInformation). moto's CloudFormation needs extras this project does
not install, so DescribeStacks is answered by a botocore Stubber on the code's own client (``DeployedStacks``). The
function is a moto Lambda function (never invoked) with the environment the template gives it.
"""

from __future__ import annotations

import io
import json
import zipfile

import boto3
import pytest

from eks_prefetch import aws
from eks_prefetch.settings import StatusSettings, load
from eks_prefetch.status import invocations
from eks_prefetch.status import table as status_table
from prefetchctl import status as report
from testing.cloudformation import DeployedStacks
from testing.ecr import at
from testing.environment import CLUSTER, DEPLOYMENT_ENV, DOCUMENT, STATUS_TABLE
from testing.output import image_line, summary_line
from testing.ssm import Answer
from tests.integration.test_status import ENDED, TRAINER, good_output, ref, run_node, send

STACK = "eks-image-prefetch"
FUNCTION = "eks-image-prefetch-StatusFunction-1A2B3C"


def deploy_stack() -> None:
    """The status function, with the environment the template gives it."""
    iam = boto3.client("iam")
    role = iam.create_role(
        RoleName="status-role",
        AssumeRolePolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}
                ],
            }
        ),
    )["Role"]["Arn"]
    code = io.BytesIO()
    with zipfile.ZipFile(code, "w") as archive:
        archive.writestr("app.py", "def lambda_handler(event, context):\n    return {}\n")
    # Lambda sets AWS_* itself; the template sets the rest.
    environment = {k: v for k, v in DEPLOYMENT_ENV.items() if not k.startswith("AWS_")}
    boto3.client("lambda").create_function(
        FunctionName=FUNCTION,
        Runtime="python3.13",
        Role=role,
        Handler="app.lambda_handler",
        Code={"ZipFile": code.getvalue()},
        Environment={"Variables": {**environment, "STATUS_TABLE": STATUS_TABLE, "POWERTOOLS_SERVICE_NAME": "status"}},
    )


@pytest.fixture
def stacks(status_env) -> DeployedStacks:
    return DeployedStacks()


@pytest.fixture
def deployed(images, stacks, fake, fleet):
    deploy_stack()
    stacks.exists(STACK, {"StatusFunctionName": FUNCTION, "PrefetchDocumentName": DOCUMENT})
    return fake, fleet


def run_report(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = report.main(["--stack", STACK, *args], out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_names_the_failed_node_with_its_reason_and_exits_non_zero(deployed, images):
    fake, fleet = deployed
    # Two nodes launched long ago, one just now (the node-launch path's, for the repair's grace period).
    healthy, broken, fresh = run_node(at(-120)), run_node(at(-120)), run_node()
    fleet.online = {healthy, broken, fresh}
    digest = images[TRAINER]
    ok = send([healthy], [ref(TRAINER, digest)])
    fake.set(ok, healthy, Answer("Success", "Success", good_output([(ref(TRAINER, digest), "pulled", digest)]), ENDED))
    failed = send([broken], [ref(TRAINER, digest)])
    output = image_line(ref(TRAINER, digest), "failed", error="failed to pull: 403 Forbidden") + "\n"
    fake.set(failed, broken, Answer("Failed", "Failed", output + summary_line(failed=1), ENDED))
    for command_id, node in ((ok, healthy), (failed, broken)):
        invocations.record_invocation(command_id, node, load(StatusSettings), via="event")

    code, out, err = run_report()

    assert (code, err) == (1, "")
    assert f"cluster {CLUSTER}: 3 online node(s)" in out
    assert f"newest:   v2 {digest}" in out
    assert "coverage: 33.3% (1/3 nodes)" in out
    trainer = out[out.index("\nml/trainer\n") : out.index("\nml/inference\n")]
    # Nodes by their Kubernetes name (the private DNS name) and instance id.
    names = {
        i["InstanceId"]: i["PrivateDnsName"]
        for r in boto3.client("ec2").describe_instances()["Reservations"]
        for i in r["Instances"]
    }
    broken, fresh = f"{names[broken]} ({broken})", f"{names[fresh]} ({fresh})"
    assert names[healthy].endswith(".internal")
    assert (
        f"missing:  {broken}  last error at {status_table.timestamp(ENDED)}: failed to pull: 403 Forbidden" in trainer
    )
    assert f"missing:  {fresh}  never reported" in trainer
    assert healthy not in trainer
    assert "coverage below 100%: ml/trainer, ml/inference" in out
    # When self-repair sends next: the pushes are long past their grace period, and nothing was repaired yet; the
    # node that just started is left to the node-launch path for the grace period.
    failed_line = f"missing:  {broken}  last error at {status_table.timestamp(ENDED)}: failed to pull: 403 Forbidden"
    assert f"{failed_line}\n            repair due now (attempt 1)" in trainer
    assert "the node started recently, the node-launch path is at work" in trainer


def test_shows_when_a_backed_off_node_is_repaired_next(deployed, images):
    _fake, fleet = deployed
    node = run_node(at(-120))
    fleet.online = {node}
    aws.dynamodb.update_item(
        STATUS_TABLE,
        status_table.node_row_key(node),
        "SET repair_digests = :g, repair_attempts = :a, repair_sent_at = :s, repair_next_at = :n",
        {
            ":g": ",".join(sorted(images.values())),
            ":a": 3,
            ":s": "2026-11-01T10:00:00.000000Z",
            ":n": "2999-01-01T00:00:00.000000Z",
        },
    )

    code, out, _err = run_report()

    assert code == 1
    assert out.count("next repair at 2999-01-01T00:00:00.000000Z (backed off after 3 attempt(s))") == 2


def test_full_coverage_exits_zero(deployed, images):
    fake, fleet = deployed
    node = run_node()
    fleet.online = {node}
    command_id = send([node], [ref(TRAINER, images[TRAINER]), ref("ml/inference", images["ml/inference"])])
    records = [(ref(TRAINER, images[TRAINER]), "cached", images[TRAINER])]
    records.append((ref("ml/inference", images["ml/inference"]), "pulled", images["ml/inference"]))
    fake.set(command_id, node, Answer("Success", "Success", good_output(records), ENDED))
    invocations.record_invocation(command_id, node, load(StatusSettings), via="event")

    code, out, _err = run_report("--region", "us-east-1")

    assert code == 0
    assert "coverage: 100.0% (1/1 nodes)" in out
    assert "missing" not in out


def test_an_unknown_stack_is_a_clear_error(stacks):
    stacks.missing("no-such-stack")
    out, err = io.StringIO(), io.StringIO()

    code = report.main(["--stack", "no-such-stack"], out=out, err=err)

    assert code == 2
    assert "cannot read the stack no-such-stack" in err.getvalue()


def test_a_stack_without_the_status_function_is_a_clear_error(stacks):
    stacks.exists("older", {"PrefetchDocumentName": DOCUMENT})
    out, err = io.StringIO(), io.StringIO()

    assert report.main(["--stack", "older"], out=out, err=err) == 2
    assert "has no StatusFunctionName output" in err.getvalue()


# --- WarmVolumes: the published warm boot snapshot -------------------------------------------------------------------

WARM_PARAMETER = f"/eks-image-prefetch/{STACK}/warm-snapshot"


@pytest.fixture
def warm_deployed(images, stacks, fake, fleet):
    """A WarmVolumes stack: its outputs name the snapshot parameter, holding what the builder published."""
    deploy_stack()
    stacks.exists(
        STACK,
        {"StatusFunctionName": FUNCTION, "PrefetchDocumentName": DOCUMENT, "WarmSnapshotParameterName": WARM_PARAMETER},
    )
    boto3.client("ssm").put_parameter(Name=WARM_PARAMETER, Type="String", Value="{}")
    return fake, fleet


def publish(value: dict) -> None:
    boto3.client("ssm").put_parameter(Name=WARM_PARAMETER, Type="String", Value=json.dumps(value), Overwrite=True)


def test_shows_the_warm_snapshot_and_which_newest_images_it_holds(warm_deployed, images):
    old_inference = "sha256:" + "e" * 64
    publish(
        {
            "snapshotId": "snap-0123456789abcdef0",
            "amiId": "ami-0123456789abcdef0",
            "architecture": "arm64",
            "containerdVersion": "1.7.27",
            "images": [
                {"repository": TRAINER, "digest": images[TRAINER]},
                {"repository": "ml/inference", "digest": old_inference},
                {"repository": "ml/retired", "digest": "sha256:" + "f" * 64},
            ],
            "launchTemplateVersion": 4,
            "builtAt": "2026-11-01T11:00:00.000Z",
            "build": "push-20261101T103000Z",
        }
    )

    code, out, _err = run_report()

    section = out[out.index("warm boot snapshot:") :].splitlines()
    assert section[0] == (
        "warm boot snapshot: snap-0123456789abcdef0 (launch template version 4, build push-20261101T103000Z)"
    )
    assert section[1].startswith(
        "  built on: ami-0123456789abcdef0 (arm64), containerd 1.7.27, at 2026-11-01T11:00:00.000Z ("
    )
    assert section[2].split() == [TRAINER, images[TRAINER], "newest"]
    assert section[3].split()[:4] == ["ml/inference", old_inference, "not", "the"]
    assert f"newest: v1 {images['ml/inference']}" in section[3]
    assert section[4].split() == ["ml/retired", "sha256:" + "f" * 64, "no", "longer", "watched"]
    # An older image in the snapshot does not change the exit status: coverage does (no online node here).
    assert code == 0


def test_before_the_first_build_says_none_yet(warm_deployed):
    _code, out, _err = run_report()

    assert "warm boot snapshot: none published yet" in out


def test_a_stack_without_warm_volumes_has_no_snapshot_section(deployed):
    _code, out, _err = run_report()

    assert "warm boot snapshot" not in out
