"""Server CPU time read from /proc: a server's processes and all their descendants (Triton's Python
backend stubs, Ray's raylet, workers and replicas), user plus system time."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


def _processes() -> dict[int, tuple[int, int]]:
    """Every process now: pid -> (parent pid, CPU ticks used)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        found[int(entry.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    return found


def tree_ticks(roots: Iterable[int]) -> dict[int, int]:
    """CPU ticks used so far by each process in the trees under `roots`.

    Args:
        roots: the server's top processes.

    Returns:
        pid -> ticks, for the roots and every descendant alive now.
    """
    processes = _processes()
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in processes.items():
        children.setdefault(parent, []).append(pid)
    pending = [pid for pid in roots if pid in processes]
    ticks = {}
    while pending:
        pid = pending.pop()
        ticks[pid] = processes[pid][1]
        pending.extend(children.get(pid, ()))
    return ticks


def seconds_between(before: dict[int, int], after: dict[int, int]) -> float:
    """CPU seconds the trees used between two `tree_ticks` samples (a process started in between
    counts from zero; one that ended in between is not counted)."""
    return sum(ticks - before.get(pid, 0) for pid, ticks in after.items()) / TICKS_PER_SECOND
