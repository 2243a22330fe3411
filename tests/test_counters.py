"""Counters that never lie: over random sequences of sink outages, a disk that fills and frees, guard
ticks and restarts, ``received = written + queued + spooled + rejected + lost`` holds after every
step, and at the end every record offered is in the sink unless it was counted lost.

The disk is a real size-limited tmpfs (needs root for ``mount``; skipped with the reason otherwise).
"""

from __future__ import annotations

import os
import shutil
import time
from typing import Any, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from test_disk_faults import adds_up, counts, fill, lane_on, new_state, tiny_disk
from processes import wait_for

OPERATIONS = st.one_of(
    st.tuples(st.just("offer"), st.integers(1, 80)),
    st.tuples(st.sampled_from(["down", "up", "fill", "free", "tick", "restart"]), st.just(0)),
)


@pytest.fixture
def small_disk(tmp_path: Any) -> Iterator[str]:
    with tiny_disk(str(tmp_path / "disk"), "512k") as path:
        yield path


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(OPERATIONS, min_size=1, max_size=14))
def test_received_is_always_written_queued_spooled_rejected_or_lost(small_disk, steps) -> None:
    directory = os.path.join(small_disk, f"run-{time.monotonic_ns()}")
    os.makedirs(directory)
    state = new_state(down=False)
    lane = lane_on(directory, state, queue_size=120)
    lane.start()
    offered: list[str] = []
    lost = 0
    ballast = ""
    try:
        for operation, amount in steps:
            if operation == "offer":
                for _ in range(amount):
                    uuid = f"rec-{len(offered):05d}"
                    offered.append(uuid)
                    lane.offer({"uuid": uuid, "details": '{"pad":"' + "p" * 600 + '"}'}, time.monotonic())
            elif operation == "down":
                state["down"] = True
            elif operation == "up":
                state["down"] = False
            elif operation == "fill" and not ballast:
                ballast = fill(small_disk)
            elif operation == "free" and ballast:
                os.unlink(ballast)
                ballast = ""
            elif operation == "tick":
                lane.guard(time.monotonic() + 1.0, 0.1)
            elif operation == "restart":
                lane.stop(0.3)
                assert adds_up(lane), (steps, counts(lane))
                lost += counts(lane)["lost"]
                lane = lane_on(directory, state, queue_size=120)
                lane.start()
            assert wait_for(lambda: adds_up(lane), 5.0), (operation, counts(lane))

        # everything recovers: all that was not counted lost reaches the sink
        state["down"] = False
        if ballast:
            os.unlink(ballast)
            ballast = ""
        assert wait_for(lambda: (lane.guard(time.monotonic() + 1.0, 0.1), lane.settled())[1], 20), counts(lane)
        assert adds_up(lane), counts(lane)
        lost += counts(lane)["lost"]
        missing = set(offered) - set(state["rows"])
        assert len(missing) == lost, (steps, len(missing), lost)
    finally:
        lane.stop(0.3)
        if ballast and os.path.exists(ballast):
            os.unlink(ballast)
        shutil.rmtree(directory, ignore_errors=True)
