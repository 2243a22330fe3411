"""The call-center record (docs/call-center.md): each leg's outcome and hangup_by, and one row per call,
checked against the recorded scenarios of real FreeSWITCH calls (tests/events/), in SQLite, MariaDB and
PostgreSQL; the call row is the same whatever order the legs arrive in and however often one is replayed."""

from __future__ import annotations

import os
import random
import sqlite3
import tempfile
from typing import Any

import pytest
from conftest import EVENTS_DIR, database_entry, drop_table, hangups, make_config, rows
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fs_cdr.calls import CALL_NAMES, calls_of
from fs_cdr.config import parse_config
from fs_cdr.engine import probe_config
from fs_cdr.errors import ConfigError
from fs_cdr.outcome import EXTENDED_NAMES
from fs_cdr.record import RecordBuilder
from fs_cdr.schema import table_columns
from fs_cdr.sinks.database import target
from fs_cdr.sinks.sql import SqlSink, dialect_for

EXTENDED = {"cdr": {"log": True, "columns": "extended", "calls": {"table": "cdr_call"}}}
BUILDERS = {compiled: RecordBuilder(parse_config(EXTENDED), compiled=compiled) for compiled in (True, False)}

CALLER = "sofia/internal/1100@127.0.0.1"
#: scenario -> every recorded leg (channel name: outcome, hangup_by) and its call row (the columns
#: named). A scenario recorded only where its FreeSWITCH module was built is skipped when its file is
#: not there.
SCENARIOS: dict[str, tuple[dict[str, tuple[str | None, str | None]], dict[str, Any]]] = {
    "live_extension_to_extension": (
        {"sofia/internal/1100@127.0.0.1": ("answered", "caller"), "null/1101": ("answered", "caller")},
        {"outcome": "answered", "hangup_by": "caller", "answered_by": "1101", "destination": "1101", "legs": 2,
         "transfers": 0}),
    "live_outbound_gateway": (
        {"sofia/internal/1100@127.0.0.1": ("answered", "callee"), "sofia/internal/5551234": ("answered", "callee")},
        {"outcome": "answered", "hangup_by": "callee", "answered_by": "fs_cdr_carrier", "destination": "95551234",
         "legs": 2}),
    "live_ivr_no_transfer": (
        {"sofia/internal/1100@127.0.0.1": ("answered", "system")},
        {"outcome": "answered", "hangup_by": "system", "answered_by": None, "legs": 1}),
    "live_queue_acd": (
        {"sofia/internal/1100@127.0.0.1": ("answered", "caller"), "null/1101": ("answered", "caller")},
        {"outcome": "answered", "hangup_by": "caller", "answered_by": "1101", "legs": 2}),
    "live_dialer_answered": (
        {"sofia/internal/5551777": ("answered", "callee")},
        {"outcome": "answered", "hangup_by": "callee", "answered_by": "fs_cdr_carrier", "legs": 1}),
    "live_dialer_unanswered": (
        {"sofia/internal/5552777": ("no_answer", "system")},
        {"outcome": "missed", "hangup_by": "system", "answered_by": None, "talk_ms": None, "legs": 1}),
    "live_transfer": (
        {"sofia/internal/1100@127.0.0.1": ("answered", "caller"), "null/1101": ("answered", "caller")},
        {"outcome": "answered", "hangup_by": "caller", "answered_by": "1101", "destination": "81101", "legs": 2,
         "transfers": 1}),
    "live_gateway_busy": (
        {"sofia/internal/1100@127.0.0.1": ("busy", "callee"), "sofia/internal/5553234": ("busy", "callee")},
        {"outcome": "busy", "hangup_by": "callee", "answered_by": None, "legs": 2}),
    # tests/call_center_scenarios.py, recorded by tools/record_call_center.py
    "cc_ring_group": (
        {CALLER: ("answered", "caller"), "null/1101": ("answered", "caller"), "null/1102": ("no_answer", "system"),
         "null/1103": ("no_answer", "system")},
        {"outcome": "answered", "hangup_by": "caller", "answered_by": "1101", "destination": "2000", "legs": 4,
         "transfers": 0}),
    "cc_hunt": (
        {CALLER: ("answered", "caller"), "null/1102": ("no_answer", "system"), "null/1101": ("answered", "caller")},
        {"outcome": "answered", "hangup_by": "caller", "answered_by": "1101", "destination": "2100", "legs": 3,
         "transfers": 0}),
    "cc_caller_cancel": (
        {CALLER: ("cancelled", "caller"), "null/1102": ("cancelled", "caller")},
        {"outcome": "missed", "hangup_by": "caller", "answered_by": None, "talk_ms": None, "legs": 2}),
    "cc_blind_transfer": (
        # 1101's leg is hung up by the switch when the transfer takes its party away: nothing on it says so
        {CALLER: ("answered", "caller"), "null/1101": ("answered", None), "null/1103": ("answered", "caller")},
        {"outcome": "answered", "hangup_by": "caller", "answered_by": "1101", "destination": "1101", "legs": 3,
         "transfers": 1}),
    "cc_attended_transfer": (
        {CALLER: ("answered", "caller"), "null/1101": ("answered", None), "null/1103": ("answered", "caller")},
        {"outcome": "answered", "hangup_by": "caller", "answered_by": "1101", "destination": "1101", "legs": 3,
         "transfers": 1}),
    "cc_queue_answered": (
        {CALLER: ("answered", "caller"), "null/1101": ("answered", "caller")},
        {"outcome": "answered", "hangup_by": "caller", "answered_by": "1101@default",
         "queue": "fs_cdr_support@default", "call_source": "acd", "source_name": "fs_cdr_support", "legs": 2}),
    "cc_queue_abandoned": (
        {CALLER: ("cancelled", "caller")},
        {"outcome": "abandoned", "hangup_by": "caller", "answered_by": None, "queue": "fs_cdr_overflow@default",
         "source_name": "fs_cdr_overflow", "legs": 1}),
    "cc_voicemail": (
        # recorded where FreeSWITCH has no sound files: mod_voicemail ends the call itself (send_bye)
        {CALLER: ("voicemail", "system"), "null/1102": ("no_answer", "system")},
        {"outcome": "voicemail", "hangup_by": "system", "answered_by": None, "destination": "2200", "legs": 2}),
    "cc_declined": (
        # the far end (through the carrier gateway) rings and answers 603 Decline
        {CALLER: ("rejected", "callee"), "sofia/internal/5554777": ("rejected", "callee")},
        {"outcome": "missed", "hangup_by": "callee", "answered_by": None, "destination": "95554777", "legs": 2}),
    "cc_unknown_number": (
        # the far end answers 404: the gateway leg was refused by the far end, the caller by the switch
        {CALLER: ("failed", "system"), "sofia/internal/5555777": ("failed", "callee")},
        {"outcome": "failed", "hangup_by": "system", "answered_by": None, "destination": "95555777", "legs": 2}),
    "c_noanswer_null": (
        {"null/4203": ("no_answer", "system")},
        {"outcome": "missed", "hangup_by": "system", "legs": 1}),
    "c_bridge_noanswer": (
        {"null/4203b": ("no_answer", "system"), "loopback/4203-b": ("no_answer", "system"),
         "loopback/4203-a": (None, None)},
        {}),
}
RECORDED = [name for name in SCENARIOS if os.path.exists(os.path.join(EVENTS_DIR, f"{name}.jsonl"))]


def legs_of(scenario: str, compiled: bool = True) -> list[dict[str, Any]]:
    builder = BUILDERS[compiled]
    return [record for record in (builder.build(dict(event)) for event in hangups(scenario)) if record is not None]


def call_of(scenario: str) -> dict[str, Any] | None:
    legs = legs_of(scenario)
    found = calls_of(legs)
    roots = [leg["uuid"] for leg in legs if leg["call_key"] == leg["uuid"]]  # originating legs
    return found.get(roots[0]) if roots else None


@pytest.mark.parametrize("scenario", RECORDED)
def test_each_leg_gets_the_outcome_and_hangup_by_the_scenario_says(scenario: str) -> None:
    expected, _ = SCENARIOS[scenario]
    for compiled in (True, False):  # the compiled fast path's headers decide as the Python path's do
        found = {leg["channel_name"]: (leg["outcome"], leg["hangup_by"]) for leg in legs_of(scenario, compiled)}
        assert found == expected


@pytest.mark.parametrize("scenario", [name for name in RECORDED if SCENARIOS[name][1]])
def test_the_call_row_says_what_happened_to_the_call(scenario: str) -> None:
    _, expected = SCENARIOS[scenario]
    row = call_of(scenario)
    assert row is not None
    assert {name: row[name] for name in expected} == expected


def test_timing_quality_and_sip_columns_come_from_the_leg() -> None:
    legs = {leg["channel_name"]: leg for leg in legs_of("live_extension_to_extension")}
    caller, callee = legs["sofia/internal/1100@127.0.0.1"], legs["null/1101"]
    assert (caller["q850_cause"], caller["sip_status"], caller["sip_disposition"]) == (16, 200, "recv_bye")
    assert (caller["mos"], caller["codec"], caller["remote_media_ip"]) == (4.5, "G722", "127.0.0.1")
    assert caller["sip_call_id"] == "adccc65f-64c3-1240-a38f-beefc7a009d7"
    # 1101 answers 0.3 s after it is called; its talk is billmsec
    assert (callee["answer_ms"], callee["talk_ms"], callee["hold_ms"]) == (300, 1740, 0)
    assert callee["call_key"] == caller["uuid"] and caller["call_key"] == caller["uuid"]
    row = call_of("live_extension_to_extension")
    assert row is not None and row["wait_ms"] == callee["started_at_ms"] + 300 - caller["started_at_ms"]
    busy = {leg["channel_name"]: leg for leg in legs_of("live_gateway_busy")}
    assert busy["sofia/internal/5553234"]["sip_status"] == 486 and busy["sofia/internal/5553234"]["answer_ms"] is None
    # the RTP quality numbers are FreeSWITCH's own (a clean loopback: no jitter, no loss), not missing
    assert (caller["jitter_max_variance"], caller["loss_rate"]) == (0.0, 0.0)
    # the far end rings at once (180 in the same millisecond), then declines: a post-dial delay of 0,
    # not NULL; a leg that never rang has none
    declined = {leg["channel_name"]: leg for leg in legs_of("cc_declined")}
    assert (declined["sofia/internal/5554777"]["pdd_ms"], declined["sofia/internal/5554777"]["sip_status"]) == (0, 603)
    assert legs["null/1101"]["pdd_ms"] is None


def test_the_standard_columns_are_the_same_with_the_extended_ones() -> None:
    plain = RecordBuilder(parse_config({"cdr": {"log": True}}))
    for scenario in RECORDED:
        for event, extended in zip(hangups(scenario), [BUILDERS[True].build(dict(event)) for event in hangups(scenario)]):
            standard = plain.build(dict(event))
            if standard is None:
                continue
            assert extended is not None and {name: extended[name] for name in standard} == standard
            assert set(extended) - set(standard) == EXTENDED_NAMES


def test_a_standard_configuration_makes_neither_the_columns_nor_the_call_table(tmp_path) -> None:
    config = make_config({"cdr": {"database": database_entry("sqlite", "cdr", tmp_path)}}, tmp_path)
    assert not EXTENDED_NAMES & {column.name for column in table_columns(config)}
    probe_config(config)
    connection = sqlite3.connect(str(tmp_path / "cdr.sqlite"))
    tables = {name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    connection.close()
    assert tables == {"cdr"}


def test_a_table_made_by_the_standard_columns_is_asked_for_the_extended_ones_by_name(tmp_path) -> None:
    entry = database_entry("sqlite", "cdr", tmp_path)
    probe_config(make_config({"cdr": {"database": entry}}, tmp_path))
    with pytest.raises(ConfigError) as caught:
        probe_config(make_config({"cdr": {"database": entry, "columns": "extended"}}, tmp_path))
    assert "outcome" in str(caught.value) and "ALTER TABLE" in str(caught.value)


def test_the_call_table_needs_the_extended_columns_and_one_writer(tmp_path) -> None:
    with pytest.raises(ConfigError) as caught:
        make_config({"cdr": {"log": True, "calls": {"table": "cdr_call"}}}, tmp_path)
    assert "extended" in str(caught.value)
    with pytest.raises(ConfigError):
        make_config({"cdr": {"log": True, "columns": "wide"}}, tmp_path)
    entry = dict(database_entry("sqlite", "cdr", tmp_path), dbtype="mysql", connectionstring="127.0.0.1,3306@test",
                 workers=4)
    config = make_config({"cdr": {"database": entry, "columns": "extended", "calls": {"table": "cdr_call"}}}, tmp_path)
    assert target(config.databases[0], config).batch.workers == 1
    config = make_config({"cdr": {"database": entry, "columns": "extended"}}, tmp_path)
    assert target(config.databases[0], config).batch.workers == 4


# -- the call row whatever the order --------------------------------------------------------------
#: Real scenarios' legs, together in one table: several calls, some of two legs.
MANY = [dict(leg, call_state="completed", event_seq=1) for scenario in RECORDED for leg in legs_of(scenario)]
EXPECTED_CALLS = calls_of(MANY)


def sink_for(kind: str, tmp_path: Any, table: str, entry: dict[str, Any] | None = None) -> SqlSink:
    config = make_config({"cdr": {"database": entry or database_entry(kind, table, tmp_path), "columns": "extended",
                                  "calls": {"table": table + "_call"}}}, tmp_path)
    database = config.databases[0]
    sink = SqlSink(dialect_for(database.dbtype, database), database, table_columns(config),
                   calls_table=config.calls_table)
    sink.open()
    return sink


def call_rows(kind: str, tmp_path: Any, table: str) -> dict[str, dict[str, Any]]:
    found = rows(kind, tmp_path, table + "_call")
    return {row["uuid"]: {name: _plain(row[name]) for name in CALL_NAMES} for row in found}


def _plain(value: Any) -> Any:
    return int(value) if hasattr(value, "is_integer") and not isinstance(value, float) else value


def write_in_order(sink: SqlSink, order: list[int], cuts: list[int]) -> None:
    """MANY[i] for i in ``order`` (repeats are replays), in batches cut at ``cuts``."""
    sequence = [MANY[index] for index in order]
    bounds = sorted({0, len(sequence), *(cut % (len(sequence) + 1) for cut in cuts)})
    for start, end in zip(bounds, bounds[1:]):
        sink.write(sequence[start:end])


@st.composite
def arrivals(draw: st.DrawFn) -> tuple[list[int], list[int]]:
    """Every leg at least once, in any order, some replayed, in batches of any size."""
    order = draw(st.permutations(range(len(MANY))))
    replays = draw(st.lists(st.integers(0, len(MANY) - 1), max_size=8))
    for index in replays:
        order.insert(draw(st.integers(0, len(order))), index)
    cuts = draw(st.lists(st.integers(0, len(order)), max_size=6))
    return order, cuts


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(arrivals())
def test_the_call_rows_are_the_same_in_any_order_and_with_replays(arrival: tuple[list[int], list[int]]) -> None:
    order, cuts = arrival
    with tempfile.TemporaryDirectory() as directory:
        path = _Path(directory)
        sink = sink_for("sqlite", path, "cdr")
        try:
            write_in_order(sink, order, cuts)
        finally:
            sink.close()
        assert call_rows("sqlite", path, "cdr") == EXPECTED_CALLS


def test_a_call_row_appears_only_with_its_originating_leg(tmp_path) -> None:
    a_legs = [leg for leg in MANY if leg["call_key"] == leg["uuid"]]  # originating legs
    b_legs = [leg for leg in MANY if leg["call_key"] != leg["uuid"]]
    sink = sink_for("sqlite", tmp_path, "cdr")
    try:
        sink.write(b_legs)
        assert call_rows("sqlite", tmp_path, "cdr") == {}
        sink.write(a_legs)
    finally:
        sink.close()
    assert call_rows("sqlite", tmp_path, "cdr") == EXPECTED_CALLS


#: dbtype odbc through the Debian packages' drivers, to the same servers
ODBC_DRIVERS = {"mysql": "MariaDB Unicode", "postgresql": "PostgreSQL Unicode"}


def odbc_entry(kind: str, table: str) -> dict[str, Any]:
    pyodbc = pytest.importorskip("pyodbc", reason="pyodbc is not installed (pip install fs_cdr[odbc])")
    if ODBC_DRIVERS[kind] not in pyodbc.drivers():
        pytest.skip(f"ODBC driver {ODBC_DRIVERS[kind]!r} is not registered")
    server = {"mysql": "127.0.0.1,3306@test", "postgresql": "127.0.0.1,5432@test"}[kind]
    return {"dbtype": "odbc", "dialect": kind, "driver": ODBC_DRIVERS[kind], "connectionstring": server,
            "username": "root" if kind == "mysql" else "postgres", "password": "", "table": table}


@pytest.mark.parametrize("kind, via", [("mysql", ""), ("postgresql", ""), ("mysql", "odbc"), ("postgresql", "odbc")])
def test_the_call_rows_on_a_database_server(kind: str, via: str, table_name: str, tmp_path) -> None:
    """Reversed, one leg a batch, every leg replayed, then a shuffled bulk batch: the same rows."""
    sink = sink_for(kind, tmp_path, table_name, odbc_entry(kind, table_name) if via else None)
    try:
        order = list(reversed(range(len(MANY))))
        write_in_order(sink, order, list(range(len(order))))
        assert call_rows(kind, tmp_path, table_name) == EXPECTED_CALLS
        shuffled = list(range(len(MANY)))
        random.Random(24).shuffle(shuffled)
        write_in_order(sink, shuffled, [])
        assert call_rows(kind, tmp_path, table_name) == EXPECTED_CALLS
    finally:
        sink.close()
        drop_table(kind, tmp_path, table_name + "_call")
        drop_table(kind, tmp_path, table_name)


class _Path(str):
    """A directory as conftest's helpers take it (``tmp_path / name``)."""

    def __truediv__(self, name: str) -> str:
        return os.path.join(self, name)


def test_sql_server_and_oracle_get_the_call_table_in_their_own_sql() -> None:
    """No server here for these two: the statements are each dialect's own (MERGE, its quoting, its
    placeholders), as for the leg table."""
    from fs_cdr.calls import CALL_COLUMNS, CallTable
    from fs_cdr.sinks import oracle, sqlserver

    for dialect, mark, quoted in ((sqlserver.SqlServer(), "?", "[call_key]"), (oracle.Oracle(), ":1", '"CALL_KEY"')):
        calls = CallTable(dialect, "cdr_call", "cdr")
        assert calls.upsert.startswith("MERGE INTO") and "cdr_call" in calls.upsert.lower()
        assert quoted in calls.index_statement() and dialect.quote("cdr") in calls.index_statement()
        assert f"IN ({mark}, {mark})" == f"IN ({calls._in(2)})"
        assert "PRIMARY KEY" in dialect.create_table("cdr_call", CALL_COLUMNS)


def test_the_extended_text_columns_are_made_storable_like_the_standard_ones() -> None:
    (event,) = [event for event in hangups("live_extension_to_extension")
                if event["Channel-Name"] == "sofia/internal/1100@127.0.0.1"]
    hostile = dict(event, variable_sip_call_id="x\x00" * 600, variable_cc_queue="q" * 300,
                   variable_rtp_audio_in_mos="NaN", variable_hangup_cause_q850="")
    for compiled in (True, False):
        record = BUILDERS[compiled].build(dict(hostile))
        assert record is not None
        assert len(record["sip_call_id"]) == 255 and "\x00" not in record["sip_call_id"]
        assert record["queue"] == "q" * 255
        assert (record["mos"], record["q850_cause"]) == (None, None)


def test_a_leg_taken_back_in_real_time_mode_leaves_its_call(tmp_path) -> None:
    """Real-time mode deletes the row of a leg left out only at its end (a skip variable set late): its
    call row is recomputed without it, and a call whose originating leg went has no row."""
    from fs_cdr.realtime import REMOVED

    calls = [call for call in EXPECTED_CALLS.values() if call["legs"] >= 2]
    root = calls[0]["uuid"]
    other = next(leg for leg in MANY if leg["call_key"] == root and leg["uuid"] != root)
    second = calls[1]["uuid"]
    sink = sink_for("sqlite", tmp_path, "cdr")
    try:
        sink.write(MANY)
        sink.write([{"uuid": other["uuid"], "call_state": REMOVED, "event_seq": 9},
                    {"uuid": second, "call_state": REMOVED, "event_seq": 9}])
    finally:
        sink.close()
    left = [leg for leg in MANY if leg["uuid"] not in (other["uuid"], second)]
    found = call_rows("sqlite", tmp_path, "cdr")
    assert found == calls_of(left) and found[root]["legs"] == calls[0]["legs"] - 1 and second not in found


def test_schema_apply_adds_the_extended_columns_and_the_call_table(tmp_path, capsys) -> None:
    """An operator upgrading a table made by the standard columns: ``fs-cdr schema --apply``."""
    import json

    from fs_cdr.cli import main

    entry = database_entry("sqlite", "cdr", tmp_path)
    probe_config(make_config({"cdr": {"database": entry}}, tmp_path))  # the table as an earlier release made it
    path = tmp_path / "cdr.json"
    path.write_text(json.dumps({"cdr": {"database": entry, "columns": "extended", "calls": {"table": "cdr_call"},
                                        "spool_dir": str(tmp_path / "spool")}}))
    assert main(["-c", str(path), "schema", "--apply"]) == 0
    assert "ALTER TABLE" in capsys.readouterr().out
    probe_config(make_config({"cdr": {"database": entry, "columns": "extended", "calls": {"table": "cdr_call"}}},
                             tmp_path))
    connection = sqlite3.connect(str(tmp_path / "cdr.sqlite"))
    names = {name for (name,) in connection.execute("SELECT name FROM sqlite_master")}
    connection.close()
    assert {"cdr", "cdr_call", "cdr_call_key"} <= names


def test_reload_to_the_extended_columns_writes_them_and_the_calls(tmp_path, engines) -> None:
    """A running engine on a standard table: schema --apply, then reload; the sinks take the new columns."""
    import json

    from conftest import scenario_events

    from fs_cdr.cli import main as cli

    entry = database_entry("sqlite", "cdr", tmp_path)
    standard = make_config({"cdr": {"database": dict(entry, worker_process=False)}}, tmp_path)
    probe_config(standard)  # the table as the running release made it
    engine = engines(standard)
    extended = make_config({"cdr": {"database": dict(entry, worker_process=False), "columns": "extended",
                                    "calls": {"table": "cdr_call"}}}, tmp_path)
    (tmp_path / "cdr.json").write_text(json.dumps(
        {"cdr": {"database": entry, "columns": "extended", "calls": {"table": "cdr_call"}}}))
    assert cli(["-c", str(tmp_path / "cdr.json"), "schema", "--apply"]) == 0
    assert engine.reload(extended).startswith("configuration reloaded: ")
    for event in scenario_events("live_extension_to_extension"):
        engine.handle(event)
    assert engine.flush(10), engine.status()
    (row,) = rows("sqlite", tmp_path, "cdr_call")
    assert (row["outcome"], row["answered_by"]) == ("answered", "1101")
