"""The queueing model of the batcher under a latency target (scripts/shed_model.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "shed_model.py"


@pytest.fixture(scope="module")
def model():
    spec = importlib.util.spec_from_file_location("shed_model", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


@pytest.fixture
def minilm(model):
    """minilm_embed on short texts as the latency section measured it: 6.6 ms a batch and 4.86 ms a call,
    a budget of 40.4 ms."""
    return model.Server(fixed_ms=6.6, per_row_ms=4.86, budget_ms=40.4)


def test_a_busy_server_refuses_on_arrival_the_call_its_queue_would_make_late(model):
    server = model.Server(fixed_ms=10, per_row_ms=10, budget_ms=60)
    outcome = model.run(server, [0.0, 1.0, 2.0, 3.0, 4.0], anchors=1)
    assert outcome == model.Outcome(refused_on_arrival=1, refused_at_take=0, served=4)


@pytest.mark.parametrize(("anchors", "outcome"), [(1, (0, 3, 3)), (4, (0, 1, 5))])
def test_a_call_with_little_time_left_cuts_the_younger_ones_batch_short_only_with_one_anchor(model, anchors, outcome):
    server = model.Server(fixed_ms=40, per_row_ms=10, budget_ms=110)
    assert model.run(server, [0.0, 1.0, 40.0, 41.0, 42.0, 43.0], anchors) == model.Outcome(*outcome)


def test_far_below_capacity_nothing_is_refused(model, minilm):
    refused, served = model.simulate(minilm, rate=5, seconds=60, anchors=1)
    assert refused == 0 and served == pytest.approx(5)


@pytest.mark.parametrize("anchors", [1, 4])
def test_every_call_is_served_or_refused_and_no_rule_serves_more_than_the_largest_batch_in_time(model, minilm, anchors):
    rows = max(n for n in range(1, minilm.max_batch + 1) if minilm.cost_ms(n) <= minilm.budget_ms)
    arrivals = np.sort(np.random.default_rng(0).uniform(0.0, 20_000.0, 20_000)).tolist()
    outcome = model.run(minilm, arrivals, anchors)
    assert outcome.refused_on_arrival + outcome.refused_at_take + outcome.served == len(arrivals)
    assert outcome.refused_on_arrival > 0 and outcome.refused_at_take > 0
    assert outcome.served / 20 <= rows / minilm.cost_ms(rows) * 1000


def test_anchoring_past_an_oldest_call_short_of_time_serves_more_under_overload(model, minilm):
    _, oldest_only = model.simulate(minilm, rate=191, seconds=60, anchors=1)
    _, four = model.simulate(minilm, rate=191, seconds=60, anchors=4)
    assert four > 1.1 * oldest_only


def test_with_a_batch_cost_mostly_fixed_four_anchors_collapse_under_overload_and_the_batchers_rule_does_not(model):
    gpu = model.Server(fixed_ms=5, per_row_ms=0.2, budget_ms=50, max_batch=64)
    _, four = model.simulate(gpu, rate=4000, seconds=5, anchors=4)
    _, searched = model.simulate(gpu, rate=4000, seconds=5, anchors=0)
    _, below = model.simulate(gpu, rate=3000, seconds=5, anchors=0)
    assert four < 0.5 * below
    assert searched > below


def test_with_a_batch_cost_mostly_fixed_the_batchers_rule_meets_the_criteria(model):
    gpu = model.Server(fixed_ms=5, per_row_ms=0.2, budget_ms=50, max_batch=64)
    rates = np.arange(2000.0, 5001.0, 250.0)
    shed, _ = model.curve(gpu, rates, seconds=5, anchors=0)
    assert model.criterion_capacities(rates, shed)


def test_a_curve_that_refuses_exactly_the_calls_beyond_capacity_meets_the_criteria_and_a_soft_one_does_not(model):
    rates = np.arange(10.0, 301.0, 10.0)
    sharp = np.maximum(0.0, 1 - 100 / rates)
    assert model.knee(rates, sharp) == 100
    assert 100 in model.criterion_capacities(rates, sharp)
    soft = np.clip((rates - 50) / 1000, 0.0, None)
    assert model.knee(rates, soft) == 60
    assert model.criterion_capacities(rates, soft) == []
