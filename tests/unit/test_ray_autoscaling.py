"""The ray hosting's autoscaling on requests: the replicas' count of ongoing requests and the policy."""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from services.ray import autoscaling
from services.ray.autoscaling import ONGOING_ITEMS, OngoingItems, OngoingItemsPolicy


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def context(ongoing: dict[str, float] | None, target_num_replicas: int = 1) -> SimpleNamespace:
    """A stand-in for Serve's `AutoscalingContext` with what the policy reads."""
    metrics = {} if ongoing is None else {ONGOING_ITEMS: ongoing}
    return SimpleNamespace(aggregated_metrics=metrics, target_num_replicas=target_num_replicas)


def test_ongoing_items_counts_requests_inside_the_block():
    ongoing = OngoingItems()
    with ongoing.working(16):
        with ongoing.working(1):
            assert ongoing.count == 17
        assert ongoing.count == 16
    assert ongoing.count == 0


def test_ongoing_items_stop_counting_when_the_block_raises():
    ongoing = OngoingItems()
    with pytest.raises(RuntimeError), ongoing.working(3):
        raise RuntimeError("failed batch")
    assert ongoing.count == 0


def test_mean_weights_each_request_by_how_long_it_was_worked_on():
    clock = Clock()
    ongoing = OngoingItems(clock)
    clock.now += 1.0
    with ongoing.working(16):
        clock.now += 0.5
    clock.now += 0.5
    assert ongoing.mean() == pytest.approx(16 * 0.5 / 2.0)


def test_mean_covers_only_the_time_since_the_previous_read():
    clock = Clock()
    ongoing = OngoingItems(clock)
    with ongoing.working(8):
        clock.now += 1.0
        assert ongoing.mean() == pytest.approx(8.0)
        clock.now += 1.0
    clock.now += 3.0
    assert ongoing.mean() == pytest.approx(8.0 / 4.0)
    clock.now += 1.0
    assert ongoing.mean() == 0.0


def test_mean_with_no_time_passed_is_the_current_count():
    clock = Clock()
    ongoing = OngoingItems(clock)
    with ongoing.working(5):
        assert ongoing.mean() == 5.0


@pytest.mark.parametrize(
    ("ongoing", "expected"),
    [
        ({"a": 0.0}, 0),
        ({"a": 0.6}, 1),
        ({"a": 4.0}, 1),
        ({"a": 7.5}, 2),
        ({"a": 7.0, "b": 6.0}, 4),
        ({"a": 2.0, "b": 1.0}, 1),
    ],
)
def test_policy_asks_for_enough_replicas_for_the_requests_being_worked_on(ongoing, expected):
    policy = OngoingItemsPolicy(target_items_per_replica=4)
    assert policy(context(ongoing, target_num_replicas=2)) == (expected, {})


def test_policy_keeps_the_current_target_until_a_replica_reports():
    policy = OngoingItemsPolicy(target_items_per_replica=4)
    assert policy(context(None, target_num_replicas=2)) == (2, {})
    assert policy(context({}, target_num_replicas=3)) == (3, {})


@pytest.mark.parametrize(
    "ctx",
    [
        context({"a": float("nan")}, target_num_replicas=2),
        context({"a": float("inf")}, target_num_replicas=2),
        context({"a": "many"}, target_num_replicas=2),
        SimpleNamespace(aggregated_metrics=[1, 2], target_num_replicas=2),
    ],
)
def test_policy_never_raises_and_keeps_the_target_on_what_it_cannot_read(ctx):
    assert OngoingItemsPolicy(target_items_per_replica=4)(ctx) == (2, {})


def test_policy_refuses_a_target_that_is_not_positive():
    with pytest.raises(ValueError, match="positive"):
        OngoingItemsPolicy(target_items_per_replica=0)


def test_policy_module_imports_only_the_standard_library():
    tree = ast.parse(Path(autoscaling.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    top_level = {name.partition(".")[0] for name in imported}
    assert top_level <= set(sys.stdlib_module_names) | {"__future__"}, top_level
