"""One ordering rule for the records of one uuid, wherever they meet (issue: late CHANNEL_HANGUP).

At load FreeSWITCH sometimes delivers a leg's CHANNEL_HANGUP after its CHANNEL_HANGUP_COMPLETE. Whatever
the order, duplicates and batch boundaries of a leg's recorded events, every leg must end as exactly the
record hangup-only mode writes: in every SQL dialect, and on Redis (the list holds each final once, the
channel's last message of a leg is its final)."""

from __future__ import annotations

import json
from typing import Collection

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import database_entry, drop_table, make_config, rows, run_sql, scenario_events
from live_load import late_hangup_legs
from fs_cdr.engine import REALTIME_EVENTS, TABLE_SKIPS, Engine, probe_config
from fs_cdr.realtime import COMPLETED, ChannelOrder, supersedes
from fs_cdr.writer import _unique

#: Recorded scenarios with bridges, a transfer, an unanswered bridge and a busy gateway.
SCENARIOS = ("live_extension_to_extension", "live_transfer", "c_bridge_noanswer", "live_gateway_busy")
CHANNEL_EVENTS = ("CHANNEL_CREATE", "CHANNEL_PROGRESS", "CHANNEL_PROGRESS_MEDIA", "CHANNEL_ANSWER", "CHANNEL_BRIDGE",
                  "CHANNEL_UNBRIDGE", "CHANNEL_HOLD", "CHANNEL_UNHOLD", "CHANNEL_HANGUP", "CHANNEL_HANGUP_COMPLETE")


def channel_events(scenario: str) -> list[dict]:
    return [event for event in scenario_events(scenario) if event["Event-Name"] in CHANNEL_EVENTS]


def late_updates(events: list[dict], names: Collection[str]) -> list[dict]:
    """The stream as FreeSWITCH delivered it at load: each leg's last event of ``names`` right after
    its CHANNEL_HANGUP_COMPLETE."""
    last = {event["Unique-ID"]: event for event in events if event["Event-Name"] in names}
    out = []
    for event in events:
        if last.get(event["Unique-ID"]) is event:
            continue
        out.append(event)
        if event["Event-Name"] == "CHANNEL_HANGUP_COMPLETE" and event["Unique-ID"] in last:
            out.append(last[event["Unique-ID"]])
    return out


def late_hangups(events: list[dict]) -> list[dict]:
    """Each CHANNEL_HANGUP after its leg's CHANNEL_HANGUP_COMPLETE, as the report saw it."""
    return late_updates(events, ("CHANNEL_HANGUP",))


def late_table_updates(events: list[dict]) -> list[dict]:
    """Each leg's last update that a table consumes (a table takes no CHANNEL_HANGUP) after its final."""
    return late_updates(events, frozenset(REALTIME_EVENTS) - TABLE_SKIPS)


def test_a_completed_record_is_never_replaced_by_an_update() -> None:
    final = {"uuid": "a", "call_state": COMPLETED, "event_seq": 96297}
    late = {"uuid": "a", "call_state": "hangup", "event_seq": 96170}
    newer = {"uuid": "a", "call_state": "hangup", "event_seq": 99999}
    assert supersedes(final, late) and not supersedes(late, final) and not supersedes(newer, final)
    assert _unique([final, late]) == [final]  # the batch that lost the final record before
    assert _unique([late, final]) == [final]
    bridged = {"uuid": "a", "call_state": "bridged", "event_seq": 10}
    answered = {"uuid": "a", "call_state": "answered", "event_seq": 5}
    assert _unique([bridged, answered]) == [bridged]  # of two updates the higher event_seq wins
    other = {"uuid": "b", "call_state": COMPLETED, "event_seq": 1}
    assert _unique([late, other, final]) == [final, other]  # never a record dropped but a superseded one


def test_the_engine_keeps_late_and_stale_updates_from_the_sinks() -> None:
    order = ChannelOrder()
    assert order.admit({"uuid": "a", "call_state": "answered", "event_seq": 5})
    assert not order.admit({"uuid": "a", "call_state": "created", "event_seq": 1})  # older than what went
    assert order.admit({"uuid": "a", "call_state": COMPLETED, "event_seq": 9})
    assert not order.admit({"uuid": "a", "call_state": "hangup", "event_seq": 7})  # after the final
    assert not order.admit({"uuid": "a", "call_state": COMPLETED, "event_seq": 9})  # the same final again
    assert order.stale == 3
    small = ChannelOrder(limit=2)
    for key in "abc":
        assert small.admit({"uuid": key, "call_state": COMPLETED, "event_seq": 1})
    assert len(small._seen) == 2  # bounded


def _hangup_only_rows(kind: str, tmp_path, table: str, events: list[dict]) -> dict[str, dict]:
    config = make_config({"cdr": {"details": True, "database": dict(database_entry(kind, table, tmp_path), name="h"),
                                  "spool_dir": str(tmp_path / "spool_h")}}, tmp_path)
    engine = Engine(config).start()
    try:
        for event in events:
            if event["Event-Name"] == "CHANNEL_HANGUP_COMPLETE":
                engine.handle(event)
        assert engine.flush(10)
    finally:
        engine.stop()
    return {row["uuid"]: row for row in rows(kind, tmp_path, table)}


def records_of(builder: Engine, events: list[dict]) -> list[dict]:
    """The records an engine builds from ``events``, in their order, late updates included."""
    out = []
    for event in events:
        name = event["Event-Name"]
        if name == "CHANNEL_HANGUP_COMPLETE":
            record = builder.builder.build(event)
            if record is not None:
                record.update(call_state=COMPLETED, event_seq=int(event["Event-Sequence"]))
        else:
            record = builder.updates.build(event, name)
        if record is not None:
            out.append(record)
    builder.stop()
    return out


def _clear(kind: str, tmp_path, table: str) -> None:
    run_sql(kind, tmp_path, f"DELETE FROM {table}")


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_a_late_hangup_leaves_every_leg_completed_with_its_details(sql_kind, table_name, tmp_path, engines,
                                                                   scenario) -> None:
    """The stream of the report, all in one batch: every leg's last update after its HANGUP_COMPLETE
    (a table takes no CHANNEL_HANGUP: its UNBRIDGE, BRIDGE or ANSWER, whichever came last)."""
    events = late_table_updates(channel_events(scenario))
    expected = _hangup_only_rows(sql_kind, tmp_path, table_name + "_h", events)
    try:
        config = make_config({"cdr": {"details": True, "database": dict(
            database_entry(sql_kind, table_name, tmp_path), real=True)}}, tmp_path)
        engine = engines(config)
        for event in events:
            engine.handle(event)
        assert engine.flush(10)
        found = {row["uuid"]: row for row in rows(sql_kind, tmp_path, table_name)}
        assert found == expected
        assert all(row["call_state"] == COMPLETED for row in found.values())
    finally:
        drop_table(sql_kind, tmp_path, table_name + "_h")


@st.composite
def deliveries(draw, events: list[dict]) -> list[tuple[dict, bool]]:
    """Any order of the events, some of them twice (a replay), each followed or not by a flush (a
    batch boundary)."""
    chosen = list(events) + draw(st.lists(st.sampled_from(events), max_size=len(events)))
    order = draw(st.permutations(chosen))
    cuts = draw(st.lists(st.booleans(), min_size=len(order), max_size=len(order)))
    return list(zip(order, cuts))


@pytest.mark.parametrize("scenario", ["live_extension_to_extension", "live_transfer"])
def test_any_order_duplicates_and_batches_end_as_the_hangup_record(sql_kind, table_name, tmp_path, scenario) -> None:
    events = channel_events(scenario)
    expected = _hangup_only_rows(sql_kind, tmp_path, table_name + "_h", events)
    config = make_config({"cdr": {"details": True, "database": dict(
        database_entry(sql_kind, table_name, tmp_path), real=True, workers=2)}}, tmp_path)
    probe_config(config)
    engine = Engine(config).start()

    @settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(deliveries(events))
    def check(delivered: list[tuple[dict, bool]]) -> None:
        _clear(sql_kind, tmp_path, table_name)
        engine.order = ChannelOrder()  # a fresh engine's memory
        for event, cut in delivered:
            engine.handle(event)
            if cut:
                assert engine.flush(10)
        assert engine.flush(10)
        found = {row["uuid"]: row for row in rows(sql_kind, tmp_path, table_name)}
        assert found == expected

    try:
        check()
    finally:
        engine.stop()
        drop_table(sql_kind, tmp_path, table_name + "_h")


def test_records_of_one_leg_in_any_order_in_a_lane_and_its_spool(sql_kind, table_name, tmp_path) -> None:
    """Below the engine (a spool replayed after a restart has no engine memory): records offered to a
    lane, and records waiting in its spool, in any order, end as the final record."""
    events = late_hangups(channel_events("live_extension_to_extension"))
    expected = _hangup_only_rows(sql_kind, tmp_path, table_name + "_h", events)
    config = make_config({"cdr": {"details": True, "database": dict(
        database_entry(sql_kind, table_name, tmp_path), real=True)}}, tmp_path)
    probe_config(config)
    records = records_of(Engine(config), events)
    assert any(record["call_state"] == "hangup" for record in records)
    try:
        for rotation in range(len(records)):
            _clear(sql_kind, tmp_path, table_name)
            order = records[rotation:] + records[:rotation]
            engine = Engine(config)
            lane = engine.lanes[0]
            lane.spool.append(order[: len(order) // 2])  # waiting on disk from before a restart
            engine.start()
            for record in order[len(order) // 2:] + order[:2]:
                lane.offer(record, 0.0)
            assert engine.flush(10)
            engine.stop()
            found = {row["uuid"]: row for row in rows(sql_kind, tmp_path, table_name)}
            assert found == expected, rotation
    finally:
        drop_table(sql_kind, tmp_path, table_name + "_h")


def _subscribed(key: str):
    """A Redis client and a subscription to channel ``key``, confirmed."""
    import redis

    client = redis.Redis()
    pubsub = client.pubsub()
    pubsub.subscribe(key)
    pubsub.get_message(timeout=2)
    return client, pubsub


def test_redis_lists_each_final_once_and_publishes_it_last(tmp_path, engines, table_name) -> None:
    key = f"fs_cdr_test:{table_name}"
    client, pubsub = _subscribed(key)
    events = channel_events("live_extension_to_extension")
    doubled = late_hangups(events) + late_hangups(events)  # and everything again, as a replay
    try:
        engine = engines(make_config({"cdr": {"redis": {"channel": key, "list": key, "real": True}}}, tmp_path))
        for event in doubled:
            engine.handle(event)
        assert engine.flush(10)
        last: dict[str, dict] = {}
        while True:
            message = pubsub.get_message(timeout=1)
            if message is None:
                break
            if message["type"] == "message":
                document = json.loads(message["data"])
                last[document["uuid"]] = document
        listed = [json.loads(item) for item in client.lrange(key, 0, -1)]
        finals = {event["Unique-ID"] for event in events if event["Event-Name"] == "CHANNEL_HANGUP_COMPLETE"
                  and event.get("variable_fs_cdr_skip") != "true"}
        assert sorted(document["uuid"] for document in listed) == sorted(finals)  # each final once
        assert {uuid: document["call_state"] for uuid, document in last.items() if uuid in finals} == \
            {uuid: COMPLETED for uuid in finals}
    finally:
        pubsub.close()
        client.delete(key)



def test_the_recorded_late_hangup_as_freeswitch_delivered_it(sql_kind, table_name, tmp_path, engines) -> None:
    """live_late_hangup: calls of a real 2,000-call burst whose legs' CHANNEL_HANGUP reached the event
    socket after their CHANNEL_HANGUP_COMPLETE, in FreeSWITCH's own order, all in one batch."""
    events = channel_events("live_late_hangup")
    late = late_hangup_legs(events)
    assert late, "the recording shows no late CHANNEL_HANGUP"
    expected = _hangup_only_rows(sql_kind, tmp_path, table_name + "_h", events)
    try:
        engine = engines(make_config({"cdr": {"details": True, "database": dict(
            database_entry(sql_kind, table_name, tmp_path), real=True)}}, tmp_path))
        for event in events:
            engine.handle(event)
        assert engine.flush(10)
        found = {row["uuid"]: row for row in rows(sql_kind, tmp_path, table_name)}
        assert found == expected and set(late) <= set(found)
        assert all(row["call_state"] == COMPLETED and row["details"] for row in found.values())
        assert "CHANNEL_HANGUP" not in engine.realtime_events  # a table does not even take them
    finally:
        drop_table(sql_kind, tmp_path, table_name + "_h")


def test_the_recorded_late_hangups_are_kept_from_a_redis_channel(tmp_path, engines, table_name) -> None:
    """A Redis channel publishes every state change, CHANNEL_HANGUP included: the late ones of the
    recording are counted stale and never published after their leg's final record."""
    key = f"fs_cdr_test:{table_name}"
    client, pubsub = _subscribed(key)
    events = channel_events("live_late_hangup")
    finals = {event["Unique-ID"] for event in events if event["Event-Name"] == "CHANNEL_HANGUP_COMPLETE"}
    late = late_hangup_legs(events)
    assert late, "the recording shows no late CHANNEL_HANGUP"
    try:
        engine = engines(make_config({"cdr": {"redis": {"channel": key, "real": True}}}, tmp_path))
        assert "CHANNEL_HANGUP" in engine.realtime_events
        for event in events:
            engine.handle(event)
        assert engine.flush(10)
        published: dict[str, list[str]] = {}
        while (message := pubsub.get_message(timeout=1)) is not None:
            if message["type"] == "message":
                document = json.loads(message["data"])
                published.setdefault(document["uuid"], []).append(document["call_state"])
        assert {uuid: states[-1] for uuid, states in published.items() if uuid in finals} == \
            {uuid: COMPLETED for uuid in finals}
        assert engine.status()["stale_updates"] >= len(late)  # each late update kept from the channel
    finally:
        pubsub.close()
