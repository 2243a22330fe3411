"""Counters that never lie: over random sequences of sink outages, a disk that fills and frees, guard
ticks and restarts, ``received = written + queued + spooled + rejected + lost`` holds in every
``status()`` a second thread takes while the steps run (at every moment, not only once things settle),
and at the end every record offered is in the sink unless it was counted lost.

The disk is a real size-limited tmpfs (needs root for ``mount``; skipped with the reason otherwise).
"""

from __future__ import annotations

import os
import shutil
import threading
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


class Sampler:
    """Reads ``counts`` of the current lane (``lanes[-1]``: a restart appends the new one) over and
    over from its own thread, as an operator's ``status`` or a Prometheus scrape would, and keeps
    every snapshot that does not add up."""

    def __init__(self, lanes: list[Any]) -> None:
        self.lanes = lanes
        self.samples = 0
        self.bad: list[dict[str, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="counts-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            c = counts(self.lanes[-1])
            self.samples += 1
            if c["received"] != c["written"] + c["queued"] + c["spooled"] + c["rejected"] + c["lost"]:
                self.bad.append(c)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5.0)


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
    lanes = [lane]
    sampler = Sampler(lanes)
    sampler.start()
    offered: list[str] = []
    lost = 0
    ballast = ""
    stopped = False
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
                lanes.append(lane)
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
        lane.stop(0.3)
        stopped = True
        sampler.stop()
        assert sampler.samples > 0
        assert not sampler.bad, (f"{len(sampler.bad)} of {sampler.samples} status snapshots do not add up",
                                 sampler.bad[:5], steps)
    finally:
        sampler.stop()
        if not stopped:
            lane.stop(0.3)
        if ballast and os.path.exists(ballast):
            os.unlink(ballast)
        shutil.rmtree(directory, ignore_errors=True)
