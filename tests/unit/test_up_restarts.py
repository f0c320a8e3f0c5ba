"""`maas up`'s restart policy, without processes."""

from __future__ import annotations

import pytest

from services.cli import up
from services.cli.up import TooManyCrashes, _Child


def test_a_clean_exit_is_restarted_after_a_second_and_never_counts_as_a_crash():
    child = _Child("tokenizer", ["tokenizer"])
    assert [child.backoff(0) for _ in range(20)] == [1.0] * 20


def test_crashes_back_off_from_1_s_doubling_and_the_sixth_in_5_minutes_stops_everything(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(up.time, "monotonic", lambda: now[0])
    child = _Child("vision", ["vision"])
    waits = []
    for _ in range(5):
        waits.append(child.backoff(1))
        now[0] += 10
    assert waits == [1.0, 2.0, 4.0, 8.0, 16.0]
    with pytest.raises(TooManyCrashes, match="vision crashed 6 times within 5 minutes \\(last exit status -9\\)"):
        child.backoff(-9)


def test_crashes_older_than_5_minutes_are_forgotten(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(up.time, "monotonic", lambda: now[0])
    child = _Child("text", ["text"])
    for _ in range(5):
        child.backoff(1)
        now[0] += 100
    assert child.backoff(1) == 8.0
    for _ in range(5):
        now[0] += 1000
        assert child.backoff(1) == 1.0
