"""The reliability harness's pieces that need no service: its load generators stay bounded and record
every call, and the report states every figure against its target."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from services.common.errors import Overloaded
from services.common.settings import REPO_ROOT
from services.reliability.harness import closed_loop, open_loop
from services.reliability.report import render
from services.reliability.scenarios import Durations, Figure, Step, largest_texts
from services.tokenizer.model import text_costs
from services.tokenizer.spec import TokenizerSettings


async def test_open_loop_sends_rate_times_seconds_calls_whatever_the_answers():
    answered = []

    async def slow() -> None:
        await asyncio.sleep(0.05)
        answered.append(1)

    async def refused() -> None:
        raise grpc.aio.AioRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, None, None, "queue full")

    calls = await open_loop({"slow": (40.0, slow), "refused": (20.0, refused)}, 0.5)
    assert sorted(c.kind for c in calls) == ["refused"] * 10 + ["slow"] * 20
    assert {c.code for c in calls if c.kind == "refused"} == {"RESOURCE_EXHAUSTED"}
    assert len(answered) == 20 and all(c.seconds >= 0.05 for c in calls if c.kind == "slow")
    sends = sorted(c.sent for c in calls if c.kind == "slow")
    assert sends[-1] - sends[0] < 0.6, "sent on schedule, not after the answers"


async def test_closed_loop_keeps_each_caller_to_one_call_at_a_time():
    running = 0
    most = 0

    async def call() -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.01)
        running -= 1

    calls = await closed_loop(call, 3, 0.2)
    assert most == 3 and len(calls) >= 15 and all(c.code == "OK" for c in calls)


def test_the_report_lists_every_figure_with_its_target_and_says_which_missed():
    steps = [
        Step("SIGTERM to one of two replicas", "setup", [Figure("failed calls", 0, "", "= 0", True)], ["calls: 9"]),
        Step("Overload", "more setup", [Figure("refusals p99", 7.5, "ms", "<= 5 ms", False, performance=True)]),
    ]
    text = render(steps, Durations.full(), "python -m services.reliability", REPO_ROOT, 90.0, ("1.00 / 1.00", "2"))
    assert "| 1 | SIGTERM to one of two replicas | failed calls | 0 | = 0 | yes |" in text
    assert "| 2 | Overload | refusals p99 | 7.50 ms | <= 5 ms | **no** |" in text
    assert "## 1. SIGTERM to one of two replicas\n\nsetup\n\n- calls: 9" in text
    assert "load average (1 / 5 / 15 min): 1.00 / 1.00 at the start" in text


def test_the_short_run_gates_on_lost_calls_and_reports_latencies_without_gating():
    lost = Step("SIGTERM", "setup", [Figure("failed calls", 3, "", "= 0", False)])
    slow = Step("Overload", "setup", [Figure("refusals p99", 7.5, "ms", "<= 5 ms", False, performance=True)])
    short, full = Durations.short(), Durations.full()
    assert not lost.passed(short.gate_performance) and not lost.passed(full.gate_performance)
    assert slow.passed(short.gate_performance) and not slow.passed(full.gate_performance)
    text = render([lost, slow], short, "python -m services.reliability --short", REPO_ROOT, 60.0, ("1", "1"))
    assert "| 1 | SIGTERM | failed calls | 3 | = 0 | **no** |" in text
    assert "| 2 | Overload | refusals p99 | 7.50 ms | <= 5 ms | no (not gated) |" in text


def test_the_preprocessing_load_is_the_largest_request_the_tokenizer_accepts():
    limits = TokenizerSettings(max_texts=8, max_request_bytes=1000, max_text_bytes=200)
    texts = largest_texts(["short", "a longer review, with an é to cut around", "mid-sized review"], limits)
    assert len(texts) == limits.max_texts and all(len(text) <= 125 for text in texts)
    assert limits.max_request_bytes - 8 * 2 < sum(text_costs(limits, ("TEXT", texts), None)) <= 1000
    assert texts[0].decode().startswith("a longer review, with an é to cut around a longer")
    with pytest.raises(Overloaded, match="the limit is 1000 per request"):
        text_costs(limits, ("TEXT", [*texts[:-1], texts[-1] + b"x" * 20]), None)
