"""Real-time rows left open by a FreeSWITCH that was killed mid-call become ``lost`` at the next start:
only this switch's rows of an earlier run, never a completed row, another switch's or this run's."""

from __future__ import annotations

from typing import Any

from conftest import database_entry, make_config, rows
from fs_cdr.realtime import LOST, LOST_SEQ, close_lost_rows
from fs_cdr.schema import table_columns
from fs_cdr.sinks.sql import SqlSink, dialect_for


def leg(uuid: str, state: str, switch: str = "pbx1", core: str = "old-core", seq: int = 10, **more: Any) -> dict:
    record = {"uuid": uuid, "leg": "a", "call_state": state, "switchname": switch, "core_uuid": core,
              "event_seq": seq, "start_epoch": 1_700_000_000, "answer_epoch": None, "end_epoch": None}
    record.update(more)
    return record


def sink_for(kind: str, tmp_path: Any, table: str) -> tuple[Any, SqlSink]:
    entry = dict(database_entry(kind, table, tmp_path), real=True)
    config = make_config({"cdr": {"database": entry}}, tmp_path)
    database = config.databases[0]
    sink = SqlSink(dialect_for(database.dbtype, database), database, table_columns(config))  # type: ignore[arg-type]
    sink.open()
    return config, sink


def test_only_this_switchs_open_rows_of_an_earlier_run_become_lost(sql_kind, tmp_path, table_name) -> None:
    config, sink = sink_for(sql_kind, tmp_path, table_name)
    try:
        sink.write([
            leg("ringing-old", "ringing"),
            leg("answered-old", "bridged", answer_epoch=1_700_000_005, duration=42),
            leg("answered-no-duration", "answered", answer_epoch=1_700_000_005),
            leg("hungup-old", "hangup", answer_epoch=1_700_000_005, end_epoch=1_700_000_065),
            leg("completed-old", "completed", answer_epoch=1_700_000_005, end_epoch=1_700_000_065),
            leg("this-run", "answered", core="new-core"),
            leg("other-switch", "answered", switch="pbx2"),
        ])
    finally:
        sink.close()

    assert close_lost_rows(config, "pbx1", "new-core") == 4
    found = {row["uuid"]: row for row in rows(sql_kind, tmp_path, table_name)}
    assert {uuid for uuid, row in found.items() if row["call_state"] == LOST} == {
        "ringing-old", "answered-old", "answered-no-duration", "hungup-old"}
    assert found["ringing-old"]["end_epoch"] == 1_700_000_000  # no duration: its start
    assert found["answered-old"]["end_epoch"] == 1_700_000_042  # its last update, 42 s after the start
    assert found["answered-no-duration"]["end_epoch"] == 1_700_000_005  # the last time the row knows
    assert found["hungup-old"]["end_epoch"] == 1_700_000_065
    assert found["completed-old"]["call_state"] == "completed"
    assert found["this-run"]["call_state"] == "answered" and found["other-switch"]["call_state"] == "answered"
    assert close_lost_rows(config, "pbx1", "new-core") == 0  # a second start changes nothing

    # the crashed run's spool replayed later: a late update does not reopen the row, its final record
    # replaces it
    config, sink = sink_for(sql_kind, tmp_path, table_name)
    try:
        sink.write([leg("answered-old", "bridged", seq=LOST_SEQ - 1)])
        sink.write([leg("ringing-old", "completed", seq=12, end_epoch=1_700_000_030)])
    finally:
        sink.close()
    found = {row["uuid"]: row for row in rows(sql_kind, tmp_path, table_name)}
    assert found["answered-old"]["call_state"] == LOST
    assert found["ringing-old"]["call_state"] == "completed" and found["ringing-old"]["end_epoch"] == 1_700_000_030


def test_freeswitchs_process_never_imports_the_driver_to_close_lost_rows(tmp_path, table_name) -> None:
    """The sink runs in a worker process (the default), so the start's clean-up does too: the driver's
    import (a tenth of a CPU second for psycopg) and its work never hold FreeSWITCH's interpreter lock."""
    import json
    import subprocess
    import sys

    config, sink = sink_for("postgresql", tmp_path, table_name)
    try:
        sink.write([leg("ringing-old", "ringing")])
    finally:
        sink.close()
    document = {"cdr": {"database": dict(database_entry("postgresql", table_name, tmp_path), real=True),
                        "spool_dir": str(tmp_path / "spool")}}
    script = (
        "import json, sys\n"
        "from fs_cdr.config import Paths, parse_config\n"
        "from fs_cdr.realtime import close_lost_rows\n"
        f"config = parse_config(json.loads({json.dumps(json.dumps(document))}), Paths({str(tmp_path)!r}, "
        f"{str(tmp_path)!r}, {str(tmp_path)!r}))\n"
        "closed = close_lost_rows(config, 'pbx1', 'new-core')\n"
        "print(closed, sorted(name for name in sys.modules if name.split('.')[0] in ('psycopg', 'psycopg2')))\n")
    found = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert found.returncode == 0, found.stderr
    assert found.stdout.split(None, 1) == ["1", "[]\n"]
    assert {row["uuid"]: row["call_state"] for row in rows("postgresql", tmp_path, table_name)} == {"ringing-old": LOST}
