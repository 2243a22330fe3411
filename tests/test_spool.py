"""The spool and the lane machinery around it, with a sink whose failures the test controls."""

from __future__ import annotations

import os
import threading
import time
from types import SimpleNamespace

import fs_cdr.engine as engine_module
from conftest import EVENTS_DIR
from fs_cdr.config import BatchSettings, parse_config
from fs_cdr.engine import Engine
from fs_cdr.errors import RejectedError, RetriableError
from fs_cdr.retry import Backoff
from fs_cdr.spool import Spool
from fs_cdr.writer import Guard, SinkLane
from processes import wait_for


class ControlledSink:
    """Stores rows by uuid like an upsert would; can be made down, slow, or to refuse a uuid."""

    def __init__(self, shared: dict) -> None:
        self.shared = shared

    def open(self) -> None:
        if self.shared["down"]:
            raise RetriableError("connection refused")

    def write(self, records) -> None:
        if self.shared["down"]:
            raise RetriableError("server has gone away")
        time.sleep(self.shared.get("delay", 0))
        for record in records:
            if record["uuid"] in self.shared["refuse"]:
                raise RejectedError(f"value too long for {record['uuid']}")
        with self.shared["lock"]:
            for record in records:
                self.shared["rows"][record["uuid"]] = record
                self.shared["writes"].append(record["uuid"])

    def close(self) -> None:
        pass


def lane_with(tmp_path, **shared):
    state = {"down": False, "refuse": set(), "rows": {}, "writes": [], "lock": threading.Lock()}
    state.update(shared)
    lane = SinkLane("test", "controlled", lambda: ControlledSink(state),
                    BatchSettings(batch_size=50, flush_interval_ms=10, queue_size=1000),
                    str(tmp_path), backoff=Backoff(base_s=0.01, cap_s=0.05))
    return lane, state



def test_spool_is_a_fifo_that_survives_reopening(tmp_path) -> None:
    spool = Spool(str(tmp_path))
    spool.append([{"uuid": f"u{i}"} for i in range(5)])
    spool.close()
    again = Spool(str(tmp_path))
    assert again.pending == 5
    ticket, records = again.take(3)
    assert [record["uuid"] for record in records] == ["u0", "u1", "u2"]
    again.confirm(ticket)
    again.append([{"uuid": "u5"}])
    seen = []
    while again.pending:
        ticket, records = again.take(10)
        seen += [record["uuid"] for record in records]
        again.confirm(ticket)
    assert seen == ["u3", "u4", "u5"]
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".jsonl")]


def test_a_line_torn_by_a_crash_is_skipped_with_a_log_line(tmp_path, caplog) -> None:
    spool = Spool(str(tmp_path))
    spool.append([{"uuid": "whole"}])
    spool.close()
    (segment,) = [name for name in os.listdir(tmp_path) if name.endswith(".jsonl")]
    with open(tmp_path / segment, "ab") as handle:
        handle.write(b'{"uuid": "tor')
    reopened = Spool(str(tmp_path))
    assert reopened.pending == 1
    ticket, records = reopened.take(10)
    assert [record["uuid"] for record in records] == ["whole"]
    assert "torn last line" in caplog.text
    reopened.confirm(ticket)
    assert reopened.take(10) == (None, [])


def test_records_for_a_down_sink_are_spooled_within_the_window_then_replayed_once(tmp_path) -> None:
    lane, state = lane_with(tmp_path, down=True)
    recover = lane.recover

    def slow_recover() -> None:  # a slow machine between the spool's last confirm and the lane's recovery
        time.sleep(0.2)
        recover()

    lane.recover = slow_recover
    guard = Guard(lambda: [lane], 0.1)
    lane.start()
    guard.start()
    try:
        for index in range(200):
            lane.offer({"uuid": f"call-{index}"}, time.monotonic())
        assert wait_for(lambda: lane.spool.pending == 200, 5.0), lane.status()
        assert lane.queued() == 0 and not lane.healthy
        state["down"] = False
        assert wait_for(lambda: len(state["rows"]) == 200)
        assert wait_for(lane.settled)
        # settled (what flush() and fs-cdr replay wait for) means counted and healthy again too
        status = lane.status()
        assert status["healthy"] and status["replayed"] == 200, status
        assert status["batches"] == 200 // 50  # the spool is replayed in batches of batch_size
        assert sorted(state["writes"]) == sorted(f"call-{index}" for index in range(200))
    finally:
        guard.stop()
        lane.stop(1.0)


def test_records_on_their_way_to_the_spool_are_not_taken_for_written(tmp_path) -> None:
    """flush() and `fs-cdr replay` wait for settled(). While the guard copies records to the spool
    (a slow fsync) they are still in memory, and leave it only once the spool has them: settled()
    must say no meanwhile, or a flush returns with every one of those records unwritten."""
    lane, state = lane_with(tmp_path, down=True)
    append, moving, release = lane.spool.append, threading.Event(), threading.Event()

    def slow_append(records):
        moving.set()
        release.wait(5)
        return append(records)

    lane.spool.append = slow_append
    lane.start()
    guard = threading.Thread(target=lambda: lane.guard(time.monotonic() + 1.0, 0.1))
    try:
        for index in range(20):
            lane.offer({"uuid": f"call-{index}"}, time.monotonic())
        assert wait_for(lambda: lane.stats.retries >= 1, 5.0)
        guard.start()
        assert moving.wait(5)
        assert not lane.drained() and lane.queued() == 20  # still in memory ...
        answer = []
        asking = threading.Thread(target=lambda: answer.append(lane.settled()))
        asking.start()
        asking.join(0.2)
        release.set()  # ... until the spool has them
        asking.join(5)
        guard.join(5)
        assert answer == [False]
        assert lane.spool.pending == 20 and lane.drained() and not lane.settled()
    finally:
        release.set()
        lane.stop(1.0)


def test_a_slow_sink_gets_waiting_records_journaled_within_the_window(tmp_path) -> None:
    lane, state = lane_with(tmp_path, delay=0.5)
    guard = Guard(lambda: [lane], 0.1)
    lane.start()
    guard.start()
    try:
        lane.offer({"uuid": "slow-1"}, time.monotonic())
        time.sleep(0.3)
        # on disk (the journal) while the write still hangs, and still written from memory
        assert lane.journal.journaled_total == 1 and lane.journal.held == 1
        assert lane.spool.spooled_total == 0 and lane.healthy
        assert wait_for(lambda: lane.settled() and "slow-1" in state["rows"])
        assert state["writes"].count("slow-1") == 1
        assert wait_for(lambda: lane.journal.held == 0)
        assert not [name for name in os.listdir(tmp_path / "test" / "journal") if name.endswith(".jsonl")]
    finally:
        guard.stop()
        lane.stop(1.0)


def hanging_lane(tmp_path) -> tuple[SinkLane, dict, threading.Event]:
    """A lane whose sink holds every write until the gate opens (batches of 10): the guard's ticks
    are driven by hand with made-up times."""
    gate = threading.Event()
    state = {"down": False, "refuse": set(), "rows": {}, "writes": [], "lock": threading.Lock()}

    class HangingSink(ControlledSink):
        def write(self, records) -> None:
            gate.wait(10)
            super().write(records)

    lane = SinkLane("test", "hanging", lambda: HangingSink(state),
                    BatchSettings(batch_size=10, flush_interval_ms=1, queue_size=10_000), str(tmp_path))
    return lane, state, gate


def test_a_long_queue_behind_a_slow_sink_is_journaled_once_per_record_tick_by_tick(tmp_path) -> None:
    """Records keep arriving while the sink hangs on a batch: each tick journals what aged past half
    the window since the last tick, every record exactly once, in flight or queued."""
    lane, state, gate = hanging_lane(tmp_path)
    lane.start()
    try:
        start = time.monotonic()
        journaled_by_tick = []
        for wave in range(6):  # a wave of 30 records every 60 ms; the guard ticks 10 ms after each
            arrived = start + wave * 0.06
            for index in range(30):
                lane.offer({"uuid": f"w{wave}-{index}"}, arrived)
            if wave == 0:
                assert wait_for(lambda: lane.queued() == 30 and lane.writers[0]._inflight is not None)
            lane.guard(arrived + 0.01, 0.2)
            journaled_by_tick.append(lane.journal.journaled_total)
        lane.guard(start + 5 * 0.06 + 0.2, 0.2)  # the last wave ages past half the window too
        # waves age past 100 ms two ticks after they arrive: 0, 0, 30, 60, 90, 120, then all 180
        assert journaled_by_tick == [0, 0, 30, 60, 90, 120]
        assert lane.journal.journaled_total == 180 and lane.journal.held == 180
        lane.guard(start + 1.0, 0.2)
        assert lane.journal.journaled_total == 180  # nothing twice
        gate.set()
        assert wait_for(lambda: lane.drained() and lane.journal.held == 0)
        assert len(state["rows"]) == 180 and len(state["writes"]) == 180
    finally:
        gate.set()
        lane.stop(1.0)


def test_real_time_updates_get_no_crash_copy_and_finals_do(tmp_path) -> None:
    """Behind a hanging sink, what waits past half the window is journaled except real-time updates:
    after a crash every row left open is closed as lost and the journaled final replaces it, so a
    copy of an update could only bring a finished call back (and they are most of the records)."""
    lane, state, gate = hanging_lane(tmp_path)
    lane.start()
    try:
        start = time.monotonic()
        for leg in range(20):
            for sequence, state_name in enumerate(("created", "answered", "bridged", "hangup")):
                lane.offer({"uuid": f"leg-{leg}", "call_state": state_name, "event_seq": sequence}, start)
            lane.offer({"uuid": f"leg-{leg}", "call_state": "completed", "event_seq": 9}, start)
            lane.offer({"uuid": f"imported-{leg}"}, start)  # a record of no real-time sink at all
        assert wait_for(lambda: lane.writers[0]._inflight is not None)
        lane.guard(start + 0.15, 0.2)
        assert lane.journal.journaled_total == 40  # the 20 finals and the 20 plain records
        for leg in range(20, 30):
            lane.offer({"uuid": f"leg-{leg}", "call_state": "answered", "event_seq": 1}, start + 0.2)
        lane.guard(start + 0.35, 0.2)
        lane.guard(start + 1.0, 0.2)
        assert lane.journal.journaled_total == 40 and lane.journal.held == 40  # no update, nothing twice
        segments = sorted((tmp_path / "test" / "journal").glob("*.jsonl"))
        copied = b"".join(path.read_bytes() for path in segments)
        assert copied.count(b'"completed"') == 20 and b'"answered"' not in copied
        gate.set()
        assert wait_for(lambda: lane.drained() and lane.journal.held == 0)
        assert {state["rows"][f"leg-{leg}"]["call_state"] for leg in range(20)} == {"completed"}
    finally:
        gate.set()
        lane.stop(1.0)


def test_a_refused_record_is_set_aside_and_the_others_flow(tmp_path) -> None:
    lane, state = lane_with(tmp_path, refuse={"bad"})
    lane.start()
    try:
        for uuid in ("ok-1", "bad", "ok-2"):
            lane.offer({"uuid": uuid}, time.monotonic())
        assert wait_for(lambda: len(state["rows"]) == 2 and lane.drained())
        assert set(state["rows"]) == {"ok-1", "ok-2"}
        assert lane.status()["rejected"] == 1
        rejected = (tmp_path / "test" / "rejected.jsonl").read_text()
        assert '"bad"' in rejected and "value too long" in rejected
    finally:
        lane.stop(1.0)


def test_stop_spools_what_could_not_be_written_and_a_new_lane_replays_it(tmp_path) -> None:
    lane, state = lane_with(tmp_path, down=True)
    lane.start()
    for index in range(10):
        lane.offer({"uuid": f"late-{index}"}, time.monotonic())
    assert lane.stop(0.2) == 10
    state["down"] = False
    again = SinkLane("test", "controlled", lambda: ControlledSink(state),
                     BatchSettings(batch_size=50, flush_interval_ms=10), str(tmp_path))
    assert again.spool.pending == 10 and again.degraded
    again.start()
    try:
        assert wait_for(again.settled)
        assert sorted(state["rows"]) == sorted(f"late-{index}" for index in range(10))
    finally:
        again.stop(1.0)


def test_journal_left_by_a_crash_is_replayed_at_the_next_start(tmp_path) -> None:
    lane, state = lane_with(tmp_path, delay=5)
    lane.journal.append([{"uuid": "crashed-1"}, {"uuid": "crashed-2"}])
    os.close(lane.journal._fd)  # the process dies here: no release, no clean stop
    lane.spool.close()
    state["delay"] = 0
    again = SinkLane("test", "controlled", lambda: ControlledSink(state),
                     BatchSettings(batch_size=50, flush_interval_ms=10), str(tmp_path))
    assert again.spool.pending == 2
    again.start()
    try:
        assert wait_for(again.settled)
        assert sorted(state["rows"]) == ["crashed-1", "crashed-2"]
    finally:
        again.stop(1.0)


def test_spooled_details_come_back_as_the_same_text(tmp_path) -> None:
    from fs_cdr.channel import dumps

    details = dumps({"caller_id_name": "\"O'Brien\" \\ 张伟 \u202e😀", "empty": "", "n": "1"})
    spool = Spool(str(tmp_path))
    spool.append([{"uuid": "d1", "billsec": 3, "details": details}, {"uuid": "d2", "details": None}])
    ticket, records = spool.take(10)
    assert records == [{"uuid": "d1", "billsec": 3, "details": details}, {"uuid": "d2", "details": None}]


class DroppingSink(ControlledSink):
    """Like MySQL's error 1153: refusing a statement also drops the connection."""

    def open(self) -> None:
        self.dead = False
        super().open()

    def write(self, records) -> None:
        if self.dead:
            raise RetriableError("server has gone away")
        try:
            super().write(records)
        except RejectedError:
            self.dead = True
            raise


def test_a_refusal_that_also_drops_the_connection_does_not_loop(tmp_path) -> None:
    state = {"down": False, "refuse": {"huge"}, "rows": {}, "writes": [], "lock": threading.Lock()}
    lane = SinkLane("test", "dropping", lambda: DroppingSink(state),
                    BatchSettings(batch_size=50, flush_interval_ms=10), str(tmp_path),
                    backoff=Backoff(base_s=0.01, cap_s=0.05))
    lane.start()
    try:
        for uuid in ("a", "huge", "b", "c"):
            lane.offer({"uuid": uuid}, time.monotonic())
        assert wait_for(lambda: lane.drained() and len(state["rows"]) == 3)
        assert set(state["rows"]) == {"a", "b", "c"} and lane.status()["rejected"] == 1
        assert lane.status()["retries"] < 5
    finally:
        lane.stop(1.0)


def test_while_the_guard_is_behind_the_source_gives_it_time(monkeypatch) -> None:
    """A burst of hangups can make a guard tick long (thousands of records to fsync): the source then
    takes nothing more until the tick ends (at most GUARD_WAIT_S at a time), so the guard gets the
    interpreter lock and the durability window holds from the moment an event is popped. Once the
    guard ticks again, the source runs at full speed."""
    engine = Engine(parse_config({"cdr": {"log": True}}), lane_factory=lambda config: [])
    inside_tick = threading.Event()
    tick_may_end = threading.Event()

    def lanes():
        inside_tick.set()
        tick_may_end.wait(10)  # a tick busy putting a burst on disk
        return []

    engine.guard.lanes = lanes
    slept: list[float] = []
    monkeypatch.setattr(engine_module, "time", SimpleNamespace(monotonic=time.monotonic, time=time.time,
                                                               sleep=slept.append))
    lines = [line for line in open(os.path.join(EVENTS_DIR, "b_bridge_null.jsonl"), "rb")]
    engine.start()
    try:
        assert inside_tick.wait(5)
        time.sleep(3 * engine.guard.interval_s)
        assert engine.guard.behind(time.monotonic())
        started = time.monotonic()
        for line in lines:
            engine.handle_serialized(line)
            time.sleep(0.002)
        assert time.monotonic() - started >= len(lines) * engine_module.GUARD_WAIT_S
        assert slept and all(pause == engine_module.GUARD_PAUSE_S for pause in slept), slept[:10]
        tick_may_end.set()
        engine.guard.lanes = lambda: []
        assert wait_for(lambda: not engine.guard.behind(time.monotonic()), 5)
        slept.clear()
        started = time.monotonic()
        for line in lines:
            engine.handle_serialized(line)
            time.sleep(0.002)
        assert time.monotonic() - started < len(lines) * engine_module.GUARD_WAIT_S / 2
        assert slept and all(pause == 0 for pause in slept), slept
    finally:
        tick_may_end.set()
        engine.guard.stop()


def test_a_guard_stuck_for_five_windows_does_not_slow_the_source() -> None:
    """A disk that hangs keeps the guard in one tick for good: slowing the source would not help it."""
    guard = Guard(lambda: [], 0.2)
    guard._thread.start()
    try:
        now = time.monotonic()
        guard.ticked = now - 0.06
        assert not guard.behind(now)  # within one interval and a half: on time
        guard.ticked = now - 0.2
        assert guard.behind(now)
        guard.ticked = now - 1.5
        assert not guard.behind(now)
    finally:
        guard.stop()
