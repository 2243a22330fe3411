"""The table made for growth (issue 22), against real MariaDB, PostgreSQL and SQLite: the keys and
indexes a new table gets, the millisecond UTC columns, and a table of the first release that keeps
being written and that ``fs-cdr schema --apply`` / ``fs-cdr check`` bring up to date."""

from __future__ import annotations

import datetime
import json
from typing import Any

import pytest
from conftest import (
    connect,
    database_entry,
    drop_table,
    hangups,
    make_config,
    rows,
    run_sql,
)

from fs_cdr.cli import main
from fs_cdr.engine import Engine
from fs_cdr.schema import ADDED_COLUMNS, INDEXES, table_columns
from fs_cdr.sinks.sql import SqlSink, dialect_for


def write_config(tmp_path: Any, cdr: dict[str, Any]) -> str:
    path = tmp_path / "cdr.json"
    path.write_text(json.dumps({"cdr": dict(cdr, spool_dir=str(tmp_path / "spool"))}))
    return str(path)


def play(kind: str, tmp_path: Any, table: str, scenario: str = "b_bridge_null") -> None:
    engine = Engine(make_config({"cdr": {"database": database_entry(kind, table, tmp_path)}}, tmp_path)).start()
    try:
        for event in hangups(scenario):
            engine.handle(event)
        assert engine.flush(60)
    finally:
        engine.stop()


def utc(micro: str) -> datetime.datetime:
    """What a *_uepoch variable is as a UTC datetime, cut to the millisecond."""
    whole = int(micro) // 1000 * 1000
    return datetime.datetime(1970, 1, 1) + datetime.timedelta(microseconds=whole)


def as_datetime(value: Any) -> datetime.datetime:
    return value if isinstance(value, datetime.datetime) else datetime.datetime.fromisoformat(value)


def first_release_table(kind: str, tmp_path: Any, table: str) -> None:
    """The table ``fs-cdr schema`` of the first release created: the uuid as primary key, no
    millisecond columns, no index."""
    dialect = dialect_for(kind)
    assert dialect is not None
    columns = [column for column in table_columns(make_config({"cdr": {"log": True}}, tmp_path)) if column.name not in ADDED_COLUMNS]
    lines = [f"  {dialect.quote(column.name)} {dialect.types[column.kind]}" for column in columns]
    statement = f"CREATE TABLE {table} (\n" + ",\n".join(lines) + f",\n  PRIMARY KEY ({dialect.quote('uuid')})\n)"
    if kind == "mysql":
        statement += " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"
    if kind == "sqlite":
        connection = connect(kind, tmp_path)
        connection.execute(statement)
        connection.commit()
        connection.close()
    else:
        run_sql(kind, tmp_path, statement)


def test_a_new_mariadb_table_is_keyed_by_an_id_with_the_uuid_unique(tmp_path, table_name) -> None:
    try:
        play("mysql", tmp_path, table_name)
        play("mysql", tmp_path, table_name)  # the same calls again: still one row a leg
        connection = connect("mysql", tmp_path)
        cursor = connection.cursor()
        cursor.execute("SELECT index_name, column_name FROM information_schema.statistics WHERE table_schema = "
                       "DATABASE() AND table_name = %s AND seq_in_index = 1 AND non_unique = 0", (table_name,))
        keys = [{"index_name": name, "column_name": column} for name, column in cursor.fetchall()]
        connection.close()
        assert {(key["index_name"], key["column_name"]) for key in keys} == {("PRIMARY", "id"), ("uuid", "uuid")}
        found = rows("mysql", tmp_path, table_name, "id, uuid")
        assert len(found) == 2 and len({row["uuid"] for row in found}) == 2
    finally:
        drop_table("mysql", tmp_path, table_name)


@pytest.mark.parametrize("kind", ["sqlite", "mysql", "postgresql"])
def test_a_new_table_has_every_recommended_index_and_check_says_nothing_lacks(kind, tmp_path, table_name,
                                                                              capsys) -> None:
    try:
        play(kind, tmp_path, table_name)
        config = make_config({"cdr": {"database": database_entry(kind, table_name, tmp_path)}}, tmp_path)
        database = config.databases[0]
        dialect = dialect_for(database.dbtype, database)
        assert dialect is not None
        sink = SqlSink(dialect, database, table_columns(config))
        sink.open()
        try:
            existing = sink.existing_indexes()
            assert existing is not None
            for index in INDEXES:
                assert index.columns in existing, index
            assert sink.lacking_indexes() == []
        finally:
            sink.close()
        path = write_config(tmp_path, {"database": database_entry(kind, table_name, tmp_path)})
        assert main(["-c", path, "check"]) == 0
        assert "NOTE" not in capsys.readouterr().out
    finally:
        drop_table(kind, tmp_path, table_name)


@pytest.mark.parametrize("kind", ["sqlite", "mysql", "postgresql"])
def test_stamps_are_the_uepoch_times_in_utc_to_the_millisecond_and_billmsec_is_kept(kind, tmp_path,
                                                                                    table_name) -> None:
    try:
        play(kind, tmp_path, table_name)
        events = {event["Unique-ID"]: event for event in hangups("b_bridge_null")}
        found = rows(kind, tmp_path, table_name, "uuid, start_stamp, answer_stamp, end_stamp, billmsec, billsec")
        assert len(found) == 2
        for row in found:
            event = events[row["uuid"]]
            assert as_datetime(row["start_stamp"]) == utc(event["variable_start_uepoch"])
            assert as_datetime(row["answer_stamp"]) == utc(event["variable_answer_uepoch"])
            assert as_datetime(row["end_stamp"]) == utc(event["variable_end_uepoch"])
            assert row["billmsec"] == int(event["variable_billmsec"])  # 2500 and 3020: billsec says 3 for both
            assert row["billsec"] == 3
    finally:
        drop_table(kind, tmp_path, table_name)


@pytest.mark.parametrize("kind", ["sqlite", "mysql", "postgresql"])
def test_a_first_release_table_is_written_then_apply_adds_columns_and_indexes(kind, tmp_path, table_name,
                                                                             capsys) -> None:
    try:
        first_release_table(kind, tmp_path, table_name)
        play(kind, tmp_path, table_name)
        assert len(rows(kind, tmp_path, table_name, "uuid")) == 2  # written without the new columns

        path = write_config(tmp_path, {"database": database_entry(kind, table_name, tmp_path)})
        assert main(["-c", path, "check"]) == 0  # advice, not a failure
        notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("NOTE")]
        assert any("no column billmsec, start_stamp, answer_stamp, end_stamp" in note for note in notes)
        for index in INDEXES:
            assert any(f"index on ({', '.join(index.columns)})" in note for note in notes), index
        assert any("clustered key" in note for note in notes) == (kind == "mysql")

        assert main(["-c", path, "schema", "--apply"]) == 0
        out = capsys.readouterr().out
        assert out.count(": applied\n") == len(ADDED_COLUMNS) + len(INDEXES)
        if kind == "mysql":  # printed, not run: it rewrites every row
            assert "not applied" in out and "DROP PRIMARY KEY" in out
        else:
            assert "not applied" not in out
        assert main(["-c", path, "check"]) == 0
        notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("NOTE")]
        assert len(notes) == (1 if kind == "mysql" else 0), notes

        play(kind, tmp_path, table_name, "a_single_null")  # written with the new columns now
        stamped = [row for row in rows(kind, tmp_path, table_name, "uuid, start_stamp") if row["start_stamp"]]
        assert len(stamped) == len(hangups("a_single_null"))
    finally:
        drop_table(kind, tmp_path, table_name)


def test_the_rebuild_apply_prints_keeps_the_upsert_by_uuid(tmp_path, table_name, capsys) -> None:
    try:
        first_release_table("mysql", tmp_path, table_name)
        play("mysql", tmp_path, table_name)
        path = write_config(tmp_path, {"database": database_entry("mysql", table_name, tmp_path)})
        assert main(["-c", path, "schema", "--apply"]) == 0
        out = capsys.readouterr().out
        rebuild = out[out.index("not applied"):].split("\n", 1)[1].strip().rstrip(";")
        run_sql("mysql", tmp_path, rebuild)
        play("mysql", tmp_path, table_name)  # the same calls again
        found = rows("mysql", tmp_path, table_name, "id, uuid, start_stamp")
        assert len(found) == 2 and all(row["id"] and row["start_stamp"] for row in found)
        assert main(["-c", path, "check"]) == 0
        assert "NOTE" not in capsys.readouterr().out
    finally:
        drop_table("mysql", tmp_path, table_name)


def test_the_builder_takes_stamps_from_uepoch_else_the_profile_times_and_none_for_never() -> None:
    from fs_cdr.config import parse_config
    from fs_cdr.record import RecordBuilder

    builder = RecordBuilder(parse_config({"cdr": {"log": True}}))
    event = dict(hangups("b_bridge_null")[0])
    record = builder.build(event)
    assert record is not None
    assert record["start_stamp"] == utc(event["variable_start_uepoch"]).isoformat(" ", "milliseconds")
    assert record["billmsec"] == int(event["variable_billmsec"])
    # an event without the *_uepoch variables (an imported CDR file, an older switch): the caller
    # profile's microsecond times; billmsec from them; never answered: no answer_stamp and 0 ms
    for name in ("variable_start_uepoch", "variable_answer_uepoch", "variable_end_uepoch", "variable_billmsec"):
        event.pop(name, None)
    event["Caller-Channel-Answered-Time"] = "0"
    event["variable_answer_epoch"] = "0"
    record = builder.build(event)
    assert record is not None
    assert record["start_stamp"] == utc(event["Caller-Channel-Created-Time"]).isoformat(" ", "milliseconds")
    assert record["answer_stamp"] is None and record["billmsec"] == 0
    assert record["end_stamp"] is not None
