"""Real-time mode under a burst of calls in a real FreeSWITCH (issue 20): every leg FreeSWITCH created
ends as exactly one row, ``completed``, with its details, equal to what hangup-only mode writes, and
nothing goes through the spool.

The same FreeSWITCH feeds two tables: one in real-time mode, one hangup-only; both get the same
events, so their rows must be equal in every column. bench/realtime_load.py runs the same check with
2,000 calls per run, five times per database.
"""

from __future__ import annotations

import uuid as uuidlib

import pytest
from live_load import (
    ORIGINATE,
    SQL_TARGETS,
    EventCapture,
    drop,
    everything_built,
    incomplete,
    late_hangup_legs,
    read_rows,
    sessions_created,
)
from live_switch import LiveSwitch, missing_reason

pytestmark = [pytest.mark.freeswitch, pytest.mark.skipif(missing_reason() is not None, reason=str(missing_reason()))]

CALLS = 200


@pytest.mark.parametrize("kind", ["mariadb", "postgresql"])
def test_every_leg_of_a_real_time_burst_ends_as_its_hangup_only_row(tmp_path, kind) -> None:
    real, hangup_only = f"cdr_rtl_{uuidlib.uuid4().hex[:8]}", f"cdr_hol_{uuidlib.uuid4().hex[:8]}"
    live = LiveSwitch(tmp_path, {"details": True, "spool_dir": str(tmp_path / "spool"), "database": [
        dict(SQL_TARGETS[kind], table=real, real=True, name="real"),
        dict(SQL_TARGETS[kind], table=hangup_only, name="hangup_only")]})
    live.prepare()
    live.start()
    legs = 2 * CALLS
    try:
        live.api("fsctl loglevel warning")
        capture = EventCapture(live)
        live.place_calls(ORIGINATE, CALLS, timeout_s=180)
        # at load FreeSWITCH may fail to create a b-leg (its originate fails): every leg it did create counts
        sessions = sessions_created(live)
        assert live.wait_until(lambda: everything_built(live, sessions), 60, 0.5), live.fs_cdr_status()
        assert "+OK" in live.api("python fs_cdr flush")
        events = capture.stop()
        status = live.fs_cdr_status()
    finally:
        live.shutdown()
    try:
        rows = {row["uuid"]: row for row in read_rows(kind, real)}
        expected = {row["uuid"]: row for row in read_rows(kind, hangup_only)}
    finally:
        drop(kind, real)
        drop(kind, hangup_only)
    # the legs FreeSWITCH announced: any channel event of theirs reached the listener
    created = {event["Unique-ID"] for event in events if event.get("Unique-ID")}
    # every leg FreeSWITCH announced has exactly its row, in both tables; FreeSWITCH's own session
    # count may hold one more now and then under CI's load: a session it counted and never announced
    # (no event at all: nothing any CDR module could write)
    assert legs - 10 <= sessions <= legs, (sessions, len(created))
    assert set(rows) == set(expected) == created, (len(rows), len(expected), len(created), sessions)
    assert len(created) <= sessions <= len(created) + 2, (sessions, len(created))
    assert not incomplete(list(rows.values())), incomplete(list(rows.values()))[:3]
    for uuid, row in rows.items():
        assert row == expected[uuid], uuid  # every column, details included
    assert status is not None and status["records"] == len(created)
    for sink in status["sinks"]:
        assert (sink["spooled"], sink["replayed"], sink["rejected"], sink["journaled"]) == (0, 0, 0, 0), sink
        assert sink["written"] >= sessions, sink
    assert "Cannot queue any more events" not in live.log_text()
    late = late_hangup_legs(events)
    print(f"\n{kind}: {sessions} legs, {len(late)} with CHANNEL_HANGUP after CHANNEL_HANGUP_COMPLETE at the listener, "
          f"{status['stale_updates']} stale updates kept from the sinks by fs_cdr; "
          f"{sum(sink['conflicts'] for sink in status['sinks'])} deadlocks retried")
