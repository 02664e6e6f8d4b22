"""AWS API calls per push, per new node and per burst of launches, counted in the real code paths (moto).

The same scenarios `make bench` reports at large sizes (bench/api_calls.py); here at sizes that run in seconds.
"""

from __future__ import annotations

from collections import Counter

import pytest

from testing.apicalls import calls_per_launch_burst, calls_per_push, calls_per_status_event, calls_per_sweep

# What one send costs in the idempotency table: Powertools' in-progress record and its completion, and sending's
# attempt counter (see eks_prefetch.prefetch.sending).
DYNAMODB_PER_SEND = Counter({"dynamodb:PutItem": 1, "dynamodb:UpdateItem": 2})
# A new node's reservation in the new-node schedule (prefetch/pacing.py): one conditional update, and, for a node
# looked at before, the look for a reservation an earlier delivery made.
DYNAMODB_PER_SLOT = Counter({"dynamodb:UpdateItem": 1})
DYNAMODB_PER_SLOT_LOOKED_AT_BEFORE = Counter({"dynamodb:UpdateItem": 1, "dynamodb:GetItem": 1})


@pytest.mark.parametrize("fleet", [1, 100])
def test_a_push_costs_the_same_few_calls_whatever_the_fleet(fleet: int) -> None:
    calls = calls_per_push(fleet=fleet, images=10)

    assert calls.only(("ecr", "ssm", "ec2")) == Counter({"ecr:DescribeImages": 1, "ssm:SendCommand": 1})
    assert calls.only(("dynamodb",)) == DYNAMODB_PER_SEND
    assert calls.only(("sqs",)) == Counter()


@pytest.mark.parametrize(("images", "pages"), [(1000, 1), (1001, 2), (2500, 3)])
def test_a_push_lists_the_repository_in_pages_of_1000(images: int, pages: int) -> None:
    calls = calls_per_push(fleet=1, images=images)

    assert calls.only(("ecr", "ssm", "ec2")) == Counter({"ecr:DescribeImages": pages, "ssm:SendCommand": 1})


@pytest.mark.parametrize("repositories", [1, 20])
def test_a_ready_new_node_costs_one_describe_per_repository_and_one_command(repositories: int) -> None:
    calls = calls_per_launch_burst(launches=1, repositories=repositories)

    assert calls.only(("ecr", "ssm", "ec2")) == Counter(
        {
            "ec2:DescribeInstances": 1,
            "ssm:DescribeInstanceInformation": 1,
            "ecr:DescribeImages": repositories,
            "ssm:SendCommand": 1,
        }
    )
    assert calls.only(("dynamodb",)) == DYNAMODB_PER_SEND + DYNAMODB_PER_SLOT
    assert calls.invocations == 1


def test_each_look_at_a_node_not_ready_yet_costs_two_describes_and_a_visibility_change() -> None:
    calls = calls_per_launch_burst(launches=1, repositories=2, not_ready_polls=3)

    assert (
        calls.counts
        == Counter(
            {
                "ec2:DescribeInstances": 4,
                "ssm:DescribeInstanceInformation": 4,
                "sqs:ChangeMessageVisibility": 3,
                "ecr:DescribeImages": 2,
                "ssm:SendCommand": 1,
            }
        )
        + DYNAMODB_PER_SEND
        + DYNAMODB_PER_SLOT_LOOKED_AT_BEFORE
    )
    assert calls.invocations == 4


def test_a_burst_of_launches_resolves_each_repository_once_per_batch_and_sends_one_command_per_node() -> None:
    calls = calls_per_launch_burst(launches=30, repositories=2)

    assert calls.only(("ecr", "ssm", "ec2")) == Counter(
        {
            "ec2:DescribeInstances": 3,  # one per batch: its instances by the instance-id filter
            "ssm:DescribeInstanceInformation": 30,
            "ecr:DescribeImages": 2 * 3,  # 2 repositories, once per batch (invocation) of 10
            "ssm:SendCommand": 30,
        }
    )
    per_node = DYNAMODB_PER_SEND + DYNAMODB_PER_SLOT
    assert calls.only(("dynamodb",)) == Counter({key: 30 * count for key, count in per_node.items()})
    assert calls.invocations == 3  # batches of 10


def pages(items: int, size: int) -> int:
    return -(-items // size)


@pytest.mark.parametrize("invocations", [10, 120])
def test_a_status_sweep_costs_pages_not_calls_per_node(invocations: int) -> None:
    """Every invocation already counted from its event (the steady state): SSM is read in pages of 50, the claims
    and the nodes' rows in DynamoDB batches of 100; nothing is called once per node."""
    calls = calls_per_sweep(invocations=invocations)

    assert calls.only(("ecr", "ssm", "ec2")) == Counter(
        {
            "ssm:ListCommands": 1,
            "ssm:ListCommandInvocations": pages(invocations, 50),
            "ssm:DescribeInstanceInformation": pages(invocations, 50),
            "ecr:DescribeImages": 1,
        }
    )
    assert calls.only(("dynamodb",)) == Counter(
        {
            "dynamodb:GetItem": 1,  # the watermark
            "dynamodb:PutItem": 1,  # the watermark moved
            "dynamodb:BatchGetItem": pages(invocations, 100) * 2,  # the claims, then the nodes' rows (1 repository)
        }
    )


def test_a_sweep_that_counts_lost_events_reads_each_invocation_once() -> None:
    calls = calls_per_sweep(invocations=60, events_lost=True)

    assert calls.counts["ssm:GetCommandInvocation"] == 60
    assert calls.counts["ec2:DescribeInstances"] == 0  # no launch time is needed for a fleet command's report
    assert calls.counts["ssm:ListCommandInvocations"] == 2


def test_a_repairing_sweep_is_bounded_by_the_per_sweep_limit() -> None:
    """500 online nodes lack the newest image: 200 are repaired (the default bound), in commands of 50 ids."""
    calls = calls_per_sweep(invocations=0, missing=500)

    assert calls.counts["ssm:SendCommand"] == 4
    assert calls.counts["ssm:DescribeInstanceInformation"] == pages(500, 50)
    # The repair rows of the 200 nodes sent to, and each send's at-most-once records: bounded by the limit.
    assert calls.counts["dynamodb:UpdateItem"] == 200 + 4 * 2
    # The nodes' start times (no SSM registration date here): EC2 launch times, 200 instances a DescribeInstances.
    assert calls.counts["ec2:DescribeInstances"] == pages(500, 200)
    assert calls.total() == 1 + pages(500, 50) + 1 + pages(500, 200) + 4


# The status function per counted invocation: its node's row, the claim and the GetCommandInvocation, no EC2 call.
# Before issue 26 every one also made a DescribeInstances (the launch time, for LaunchToCachedSeconds) and, for a node
# that had reported before, a GetItem: 2 calls to SSM and EC2 and 6 to DynamoDB per node and push.
PER_COUNTED_INVOCATION = Counter(
    {
        "ssm:GetCommandInvocation": 1,
        "dynamodb:GetItem": 1,  # the claim
        "dynamodb:UpdateItem": 3,  # the node's row for the image, the node's report noted, the claim counted
        "dynamodb:PutItem": 1,  # the claim
    }
)


@pytest.mark.parametrize("reported_before", [True, False])
def test_a_fleet_commands_invocation_is_counted_with_one_ssm_call_and_no_ec2_call(reported_before: bool) -> None:
    calls = calls_per_status_event(command="push", reported_before=reported_before)

    assert calls.counts == PER_COUNTED_INVOCATION


def test_a_new_node_commands_invocation_takes_its_launch_time_from_the_comment_not_ec2() -> None:
    fresh = calls_per_status_event(command="new-node", reported_before=False)
    again = calls_per_status_event(command="new-node", reported_before=True)

    # The launch's first report is measured with one conditional write; a later one reads the row to tell.
    assert fresh.counts == PER_COUNTED_INVOCATION
    assert again.counts == PER_COUNTED_INVOCATION + Counter({"dynamodb:GetItem": 1})


def test_a_new_node_command_sent_before_the_comment_carried_its_launch_asks_ec2() -> None:
    calls = calls_per_status_event(command="new-node-legacy", reported_before=False)

    assert calls.counts == PER_COUNTED_INVOCATION + Counter({"ec2:DescribeInstances": 1})
