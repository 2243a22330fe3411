"""Processes as Linux's /proc shows them: state, parent, name and CPU time, and the one poll that waits
for them (or anything else) to get there. Used by the tests (sink workers, a private FreeSWITCH) and
the benchmark (CPU per record, per call)."""

from __future__ import annotations

import os
import time
from typing import Any, Callable, NamedTuple, Optional

_TICK = os.sysconf("SC_CLK_TCK")


class Process(NamedTuple):
    pid: int
    parent: int
    name: str
    state: str
    #: user + system CPU seconds so far
    cpu_s: float


def process(pid: int) -> Optional[Process]:
    """One process, or None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            text = handle.read()
    except OSError:
        return None
    name = text[text.index("(") + 1:text.rindex(")")]
    fields = text.rsplit(")", 1)[1].split()
    return Process(pid, int(fields[1]), name, fields[0], (int(fields[11]) + int(fields[12])) / _TICK)


def processes() -> list[Process]:
    """Every process there is now."""
    found = (process(int(entry)) for entry in os.listdir("/proc") if entry.isdigit())
    return [entry for entry in found if entry is not None]


def process_gone(pid: int) -> bool:
    """No such process, or only its zombie (exited, not yet reaped)."""
    found = process(pid)
    return found is None or found.state in ("Z", "X")


def children_of(pid: int) -> list[Process]:
    """The live child processes of ``pid``."""
    return [entry for entry in processes() if entry.parent == pid and entry.state not in ("Z", "X")]


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, step: float = 0.02) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` seconds pass."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(step)
    return False
