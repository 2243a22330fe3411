"""Real-time mode on real MariaDB, PostgreSQL and SQLite, driven by recorded FreeSWITCH streams: the row
after each event, the final row (identical to hangup-only mode), stale and missed events, Redis."""

from __future__ import annotations

import json
import threading
import time

import pytest

from conftest import SCENARIOS, database_entry, drop_table, make_config, rows, scenario_events
from processes import wait_for
from fs_cdr.engine import ENDING_HOLD_S, Engine, probe_config
from fs_cdr.realtime import STATES as UPDATE_EVENTS
from fs_cdr.realtime import UpdateBuilder, header_plan, read_headers

STATES = {"CHANNEL_CREATE": "created", "CHANNEL_PROGRESS": "ringing", "CHANNEL_PROGRESS_MEDIA": "early_media",
          "CHANNEL_ANSWER": "answered", "CHANNEL_BRIDGE": "bridged", "CHANNEL_UNBRIDGE": "unbridged",
          "CHANNEL_HANGUP": "hangup", "CHANNEL_HANGUP_COMPLETE": "completed"}


def recorded(scenario: str) -> list[dict]:
    return scenario_events(scenario)


def row_of(kind, tmp_path, table, uuid):
    found = [row for row in rows(kind, tmp_path, table) if row["uuid"] == uuid]
    return found[0] if found else None


@pytest.mark.parametrize("scenario", ["live_extension_to_extension", "live_transfer", "c_bridge_noanswer",
                                      "live_gateway_busy"])
def test_the_row_follows_the_call_and_ends_as_the_hangup_record(sql_kind, table_name, tmp_path, engines, scenario) -> None:
    config = make_config({"cdr": {"fields": ["queue_name"], "database": dict(
        database_entry(sql_kind, table_name, tmp_path), real=True)}}, tmp_path)
    probe_config(config)  # the table exists before the first event
    real = engines(config)
    hangup_only_table = table_name + "_h"
    hangup_only = engines(make_config({"cdr": {"fields": ["queue_name"], "database": dict(
        database_entry(sql_kind, hangup_only_table, tmp_path), name="h"), "spool_dir": str(tmp_path / "spool_h")}},
        tmp_path))
    try:
        seen_states: dict[str, list[str]] = {}
        for event in recorded(scenario):
            name = event["Event-Name"]
            real.handle(event)
            hangup_only.handle(event)
            if name not in STATES:
                continue
            assert real.flush(10)
            row = row_of(sql_kind, tmp_path, table_name, event["Unique-ID"])
            if event.get("variable_fs_cdr_skip") == "true":
                # a leg left out: from the start (the test phone) or from the moment its dialplan set the
                # variable (the far end); its row, if it had one, is taken back at its hangup
                assert row is None or name != "CHANNEL_HANGUP_COMPLETE"
                continue
            if name == "CHANNEL_HANGUP":
                # a table goes from the leg's last live state to its final record
                assert name not in real.realtime_events
                assert row["call_state"] == seen_states[row["uuid"]][-1], (name, row["call_state"])
                continue
            assert row["call_state"] == STATES[name], (name, row["call_state"])
            seen_states.setdefault(row["uuid"], []).append(row["call_state"])
            if name == "CHANNEL_CREATE":
                assert row["end_epoch"] is None and row["hangup_cause"] is None and row["start_epoch"]
            if name == "CHANNEL_ANSWER":
                assert row["answer_epoch"] is not None
            if name == "CHANNEL_BRIDGE":
                assert row["bridge_uuid"]
        assert hangup_only.flush(10)
        final = {row["uuid"]: row for row in rows(sql_kind, tmp_path, table_name)}
        expected = {row["uuid"]: row for row in rows(sql_kind, tmp_path, hangup_only_table)}
        assert final == expected  # the final row is exactly what hangup-only mode writes
        assert all(seen_states[uuid][-1] == "completed" for uuid in final)
        assert any("created" in states for states in seen_states.values())
    finally:
        drop_table(sql_kind, tmp_path, hangup_only_table)


def test_a_late_or_replayed_update_never_rolls_a_row_back(sql_kind, table_name, tmp_path, engines) -> None:
    config = make_config({"cdr": {"database": dict(database_entry(sql_kind, table_name, tmp_path), real=True)}}, tmp_path)
    probe_config(config)
    engine = engines(config)
    events = recorded("live_extension_to_extension")
    leg = next(event["Unique-ID"] for event in events
               if event["Event-Name"] == "CHANNEL_HANGUP_COMPLETE" and event.get("variable_fs_cdr_skip") != "true")
    mine = [event for event in events if event["Unique-ID"] == leg]
    create = next(event for event in mine if event["Event-Name"] == "CHANNEL_CREATE")
    answer = next(event for event in mine if event["Event-Name"] == "CHANNEL_ANSWER")
    final = next(event for event in mine if event["Event-Name"] == "CHANNEL_HANGUP_COMPLETE")
    for event in (answer, create):  # out of order: the older update arrives second
        engine.handle(event)
        assert engine.flush(10)
    assert row_of(sql_kind, tmp_path, table_name, leg)["call_state"] == "answered"
    for event in (final, answer, create, final):  # a replay after the hangup
        engine.handle(event)
        assert engine.flush(10)
    row = row_of(sql_kind, tmp_path, table_name, leg)
    assert row["call_state"] == "completed" and row["hangup_cause"] == "NORMAL_CLEARING" and row["end_epoch"]


def test_a_call_whose_create_was_missed_still_gets_its_final_row(tmp_path, engines) -> None:
    engine = engines(make_config({"cdr": {"database": dict(database_entry("sqlite", "cdr", tmp_path), real=True)}},
                                 tmp_path))
    events = [event for event in recorded("b_bridge_null") if event["Event-Name"] != "CHANNEL_CREATE"]
    for event in events:
        engine.handle(event)
    assert engine.flush(10)
    found = rows("sqlite", tmp_path, "cdr")
    assert len(found) == 2 and {row["call_state"] for row in found} == {"completed"}


def test_redis_publishes_every_state_change_and_lists_only_final_records(tmp_path, engines, table_name) -> None:
    import redis

    key = f"fs_cdr_test:{table_name}"
    client = redis.Redis()
    pubsub = client.pubsub()
    pubsub.subscribe(key)
    pubsub.get_message(timeout=2)
    try:
        engine = engines(make_config({"cdr": {"redis": {"channel": key, "list": key, "real": True}}}, tmp_path))
        events = recorded("b_bridge_null")
        for event in events:
            engine.handle(event)
        assert engine.flush(10)
        published = []
        deadline = time.time() + 5
        while time.time() < deadline:
            message = pubsub.get_message(timeout=0.2)
            if message and message["type"] == "message":
                published.append(json.loads(message["data"]))
            elif published and message is None:
                break
        listed = [json.loads(item) for item in client.lrange(key, 0, -1)]
    finally:
        client.delete(key)
        pubsub.close()
    updates = [document for document in published if document["call_state"] != "completed"]
    assert {document["event"] for document in updates} >= {"CHANNEL_CREATE", "CHANNEL_ANSWER", "CHANNEL_BRIDGE"}
    assert len(listed) == 2 and {document["call_state"] for document in listed} == {"completed"}
    assert "details" not in updates[0] or updates[0]["details"] is None


def test_reload_turns_real_time_on_and_off_for_new_events(tmp_path, engines) -> None:
    entry = database_entry("sqlite", "cdr", tmp_path)
    off = make_config({"cdr": {"database": entry}}, tmp_path)
    on = make_config({"cdr": {"database": dict(entry, real=True)}}, tmp_path)
    engine = engines(off)
    events = recorded("b_bridge_null")
    creates = [event for event in events if event["Event-Name"] == "CHANNEL_CREATE"]
    engine.handle(creates[0])
    assert engine.flush(5) and engine.status()["updates"] == 0
    engine.reload(on)
    engine.handle(creates[1])
    assert engine.flush(5)
    assert [row["call_state"] for row in rows("sqlite", tmp_path, "cdr")] == ["created"]
    for event in events:
        engine.handle(event)
    engine.reload(off)
    assert engine.flush(5)
    assert {row["call_state"] for row in rows("sqlite", tmp_path, "cdr")} == {"completed"}


def test_a_thousand_live_calls_coalesce_their_updates(tmp_path, engines) -> None:
    """1,000 calls of 5 updates each plus a hangup record per leg, offered as fast as possible: the
    source never waits, and updates of one uuid in one batch are written once."""
    engine = engines(make_config({"cdr": {"database": dict(database_entry("sqlite", "cdr", tmp_path), real=True,
                                                           flush_interval_ms=200)}}, tmp_path))
    template = [event for event in recorded("b_bridge_null")
                if event["Unique-ID"] == "30f4df84-36a1-4a07-83b1-8bb47b9b481f" and event["Event-Name"] in STATES]
    slowest = 0.0
    for call in range(1000):
        for event in template:
            started = time.perf_counter()
            engine.handle(dict(event, **{"Unique-ID": f"call-{call:04d}", "variable_uuid": f"call-{call:04d}"}))
            slowest = max(slowest, time.perf_counter() - started)
    assert engine.flush(60)
    status = engine.status()
    written = status["sinks"][0]["written"]
    events = 1000 * len(template)
    assert written == status["sinks"][0]["received"]  # every record accounted for
    written -= status["sinks"][0]["coalesced"]  # the rows actually written
    found = rows("sqlite", tmp_path, "cdr")
    assert len(found) == 1000 and {row["call_state"] for row in found} == {"completed"}
    print(f"\nreal-time: {events} events for 1000 legs, {written} row writes ({written / 1000:.2f} per leg), "
          f"slowest handle {slowest * 1000:.2f} ms")
    assert written < events  # coalesced
    assert slowest < 0.2  # never waits for the database (GIL pauses on a loaded 2-core machine aside)


@pytest.mark.parametrize("columns", ["standard", "extended"])
@pytest.mark.parametrize("name", SCENARIOS)
def test_an_update_read_header_by_header_is_the_update_of_the_whole_event(name, columns, tmp_path) -> None:
    """Inside FreeSWITCH an update reads only the headers realtime.header_plan names, one getHeader
    each, and the time variables only once FreeSWITCH has set them: for every recorded channel event
    (with fields, with and without the extended columns), that update equals the one built from the
    whole event."""
    config = make_config({"cdr": {"log": True, "columns": columns, "fields": [
        "queue_name", "number:billsec", "tenant:sip_h_X-Tenant", "jsipid:sip_h_X-jssipid"]}}, tmp_path)
    plan = header_plan(config)

    def get(event: dict, header_name: str):
        value = event.get(header_name)
        return None if value is None else str(value)

    checked = 0
    for event in scenario_events(name):
        state = event.get("Event-Name")
        if state not in UPDATE_EVENTS:
            continue
        read = read_headers(get, event, plan)
        assert set(read) <= set(plan[0]) | set(plan[1])
        assert UpdateBuilder(config).build(read, state) == UpdateBuilder(config).build(dict(event), state), (
            name, state, event.get("Unique-ID"))
        checked += 1
    assert checked


class OfferedLane:
    """A real-time lane that keeps what the engine offers it."""

    realtime = True

    def __init__(self, coalesce: bool) -> None:
        self.coalesce = coalesce
        self.offered: list[dict] = []

    def offer(self, record, now) -> None:
        self.offered.append(record)

    def settled(self) -> bool:
        return True

    def status(self) -> dict:
        return {}


def _feed(engine, events, reads) -> None:
    """As FreeSWITCH's source does: an update's headers are read only when it is built."""
    for event in events:
        if event["Event-Name"] in UPDATE_EVENTS:
            engine.handle_update(event["Unique-ID"], event["Event-Sequence"], event["Event-Name"],
                                 lambda event=event: reads.append(event["Event-Name"]) or event)
        else:
            engine.handle(event)


def test_an_update_its_leg_supersedes_within_the_hold_is_never_read_nor_sent(tmp_path) -> None:
    """A table keeps only a leg's newest state: an update superseded within the hold (the next state,
    or the final record) costs neither the reading of its headers nor a write; a state that lasts
    goes out once the hold has passed, with no further event needed."""
    config = make_config({"cdr": {"database": dict(database_entry("sqlite", "cdr", tmp_path), real=True)}}, tmp_path)
    lane = OfferedLane(coalesce=True)
    engine = Engine(config, lane_factory=lambda config: [lane])
    events = recorded("b_bridge_null")
    legs = list(dict.fromkeys(event["Unique-ID"] for event in events))
    reads: list[str] = []
    _feed(engine, [event for event in events if event["Unique-ID"] == legs[0]], reads)
    assert [record["call_state"] for record in lane.offered] == ["completed"]
    assert reads == []
    # a table takes no CHANNEL_HANGUP
    updates = sum(1 for event in events if event["Unique-ID"] == legs[0] and event["Event-Name"] in engine.realtime_events)
    assert engine.status()["superseded_updates"] == updates
    create, answer = [event for event in events if event["Unique-ID"] == legs[1]
                      and event["Event-Name"] in ("CHANNEL_CREATE", "CHANNEL_ANSWER")]
    _feed(engine, [create, answer], reads)
    assert len(lane.offered) == 1  # held
    time.sleep(engine.update_hold_s * 2)
    engine.tick()
    assert [record["call_state"] for record in lane.offered] == ["completed", "answered"]
    assert reads == ["CHANNEL_ANSWER"]


def test_a_legs_ending_state_waits_for_its_final_record_longer_and_goes_out_if_none_comes(tmp_path) -> None:
    """A leg's UNBRIDGE (or, where a sink publishes every state change, its HANGUP) is followed by
    its final record, at load up to a few hundred ms later: it waits ENDING_HOLD_S, not the short hold, so the final record replaces it unbuilt; with
    no final record (a leg that goes on after an unbridge) it goes out once that hold has passed, in
    the order the updates came."""
    config = make_config({"cdr": {"database": dict(database_entry("sqlite", "cdr", tmp_path), real=True)}}, tmp_path)
    lane = OfferedLane(coalesce=True)
    engine = Engine(config, lane_factory=lambda config: [lane])
    events = recorded("b_bridge_null")
    a_leg = events[0]["Unique-ID"]
    by_name = {event["Event-Name"]: event for event in events if event["Unique-ID"] == a_leg}
    reads: list[str] = []
    _feed(engine, [by_name["CHANNEL_UNBRIDGE"]], reads)
    time.sleep(engine.update_hold_s * 3)
    engine.tick()
    assert lane.offered == [] and engine.holding  # still waiting for the final record
    _feed(engine, [by_name["CHANNEL_HANGUP"], by_name["CHANNEL_HANGUP_COMPLETE"]], reads)
    assert [record["call_state"] for record in lane.offered] == ["completed"]
    assert reads == [] and not engine.holding

    # another leg: an unbridge with no final record, then a short-held answer of a third leg
    engine = Engine(config, lane_factory=lambda config: [lane])
    lane.offered.clear()
    unbridge = dict(by_name["CHANNEL_UNBRIDGE"], **{"Unique-ID": "leg-going-on"})
    answer = dict(by_name["CHANNEL_ANSWER"], **{"Unique-ID": "leg-answered"})
    _feed(engine, [unbridge, answer], reads)
    time.sleep(engine.update_hold_s * 3)
    engine.tick()
    assert [record["uuid"] for record in lane.offered] == ["leg-answered"]
    assert wait_for(lambda: engine.tick() or len(lane.offered) == 2, ENDING_HOLD_S * 4)
    assert [(record["uuid"], record["call_state"]) for record in lane.offered] == [
        ("leg-answered", "answered"), ("leg-going-on", "unbridged")]
    assert reads == ["CHANNEL_ANSWER", "CHANNEL_UNBRIDGE"]


def test_every_state_change_goes_at_once_where_a_sink_publishes_each(tmp_path) -> None:
    """A Redis channel publishes every state change: nothing is held back for it."""
    config = make_config({"cdr": {"database": dict(database_entry("sqlite", "cdr", tmp_path), real=True)}}, tmp_path)
    lane = OfferedLane(coalesce=False)
    engine = Engine(config, lane_factory=lambda config: [lane])
    events = recorded("b_bridge_null")
    reads: list[str] = []
    _feed(engine, events, reads)
    expected = [STATES[event["Event-Name"]] for event in events if event["Event-Name"] in STATES]
    assert [record["call_state"] for record in lane.offered] == expected
    assert engine.status()["superseded_updates"] == 0
