"""AWS API calls per push, per new node and per burst of launches, counted in the real code paths (moto).

The same scenarios `make bench` reports at large sizes (bench/api_calls.py); here at sizes that run in seconds.
"""

from __future__ import annotations

from collections import Counter

import pytest

from tests.apicalls import calls_per_launch_burst, calls_per_push

# What one send costs in the idempotency table: Powertools' in-progress record and its completion, and sending's
# attempt counter (see eks_prefetch.sending).
DYNAMODB_PER_SEND = Counter({"dynamodb:PutItem": 1, "dynamodb:UpdateItem": 2})


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
    assert calls.only(("dynamodb",)) == DYNAMODB_PER_SEND
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
    )
    assert calls.invocations == 4


def test_a_burst_of_launches_resolves_each_repository_once_and_sends_one_command_per_node() -> None:
    calls = calls_per_launch_burst(launches=30, repositories=2)

    assert calls.only(("ecr", "ssm", "ec2")) == Counter(
        {
            "ec2:DescribeInstances": 3,  # one per batch: its instances by the instance-id filter
            "ssm:DescribeInstanceInformation": 30,
            "ecr:DescribeImages": 2,
            "ssm:SendCommand": 30,
        }
    )
    assert calls.only(("dynamodb",)) == Counter({key: 30 * count for key, count in DYNAMODB_PER_SEND.items()})
    assert calls.invocations == 3  # batches of 10
