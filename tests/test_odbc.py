"""dbtype odbc for real: pyodbc through psqlODBC to PostgreSQL and through MariaDB Connector/ODBC to
MariaDB, driven by the real engine and writer.

Connection handling (the seed's form with ``driver``, a raw connection string, a DSN), batching,
upserts, rejected records, lost connections and unreachable servers, and the driver timeouts that the
built connection strings set. Each test skips, saying why, when its ODBC driver is not registered in
odbcinst.ini. Tables have unique names and are dropped.
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any, Iterator

import pytest

from conftest import (MARIADB, POSTGRES, SCENARIOS, TOTAL_ROWS, assert_a_missing_column_is_named, connect, drop_table, hangups, make_config, rows,
                      scenario_events)
from fs_cdr.engine import Engine, probe_config
from fs_cdr.errors import RejectedError, RetriableError
from fs_cdr.schema import STANDARD_COLUMNS, table_columns
from fs_cdr.sinks import odbc, sqlserver
from fs_cdr.sinks.sql import SqlSink, dialect_for

pyodbc = pytest.importorskip("pyodbc", reason="pyodbc is not installed (pip install fs_cdr[odbc])")

#: kind (conftest's name for the server) -> (dialect, ODBC driver as registered by the Debian packages)
TARGETS = {"postgresql": ("postgresql", "PostgreSQL Unicode"), "mysql": ("mysql", "MariaDB Unicode")}


def require_driver(kind: str) -> str:
    driver = TARGETS[kind][1]
    if driver not in pyodbc.drivers():
        pytest.skip(f"ODBC driver {driver!r} is not registered (odbcinst -q -d lists {pyodbc.drivers()}); "
                    f"install {'odbc-postgresql' if kind == 'postgresql' else 'odbc-mariadb'}")
    return driver


def odbc_entry(kind: str, table: str, form: str = "seed", **extra: Any) -> dict[str, Any]:
    """A dbtype odbc database entry for the machine's PostgreSQL or MariaDB, in one of the forms."""
    dialect, driver = TARGETS[kind]
    server = POSTGRES if kind == "postgresql" else MARIADB
    user = "postgres" if kind == "postgresql" else "root"
    entry: dict[str, Any] = {"dbtype": "odbc", "dialect": dialect, "table": table}
    if form == "seed":
        entry.update(driver=driver, connectionstring=f"{server['host']},{server['port']}@{server['database']}",
                     username=user, password="")
    elif form == "string":
        entry.update(connectionstring=f"Driver={{{driver}}};Server={server['host']};Port={server['port']};"
                                      f"Database={server['database']};UID={user}")
    else:
        entry.update(connectionstring=f"DSN={form}")
    entry.update(extra)
    return entry


@pytest.fixture(params=list(TARGETS))
def odbc_kind(request: Any, table_name: str, tmp_path: Any) -> Iterator[str]:
    require_driver(request.param)
    yield request.param
    drop_table(request.param, tmp_path, table_name)


def feed(engine: Engine, scenarios: list[str]) -> None:
    for scenario in scenarios:
        for event in scenario_events(scenario):
            engine.handle(event)
    assert engine.flush(30), engine.status()


def open_sink(entry: dict[str, Any], tmp_path: Any, **cdr: Any) -> SqlSink:
    config = make_config({"cdr": dict({"database": entry}, **cdr)}, tmp_path)
    database = config.databases[0]
    return SqlSink(dialect_for(database.dbtype, database), database, table_columns(config))


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# -- through the engine ---------------------------------------------------------------------------

def test_every_recorded_scenario_arrives_once_and_again_is_an_upsert(odbc_kind, table_name, tmp_path, engines) -> None:
    config = make_config({"cdr": {"database": odbc_entry(odbc_kind, table_name)}}, tmp_path)
    assert config.databases[0].describe() == (
        f"odbc://127.0.0.1:{5432 if odbc_kind == 'postgresql' else 3306}/test table {table_name}")
    engine = engines(config)
    feed(engine, SCENARIOS)
    assert len(rows(odbc_kind, tmp_path, table_name, "uuid")) == TOTAL_ROWS
    feed(engine, SCENARIOS)  # the same calls again: every write an upsert
    found = rows(odbc_kind, tmp_path, table_name)
    assert len(found) == len({row["uuid"] for row in found}) == TOTAL_ROWS
    by_uuid = {row["uuid"]: row for row in found}
    a, b = by_uuid["0c9f051d-1620-4ce1-9fcf-241ca4a161e8"], by_uuid["30f4df84-36a1-4a07-83b1-8bb47b9b481f"]
    assert (a["leg"], b["leg"], b["originator"], a["billsec"], a["answer_epoch"]) == (
        "a", "b", a["uuid"], 3, 1795746290)
    assert a["originator"] is None
    status = engine.status()["sinks"][0]
    assert status["written"] == 2 * TOTAL_ROWS and status["healthy"] and status["rejected"] == 0


def test_fields_details_and_unicode_round_trip(odbc_kind, table_name, tmp_path, engines) -> None:
    fields = ["rtp_last_audio_codec_string", "number:billsec", "queue_name", "number:q:queue_size",
              "caller:${caller_id_name}|${caller_id_number}", "jsipid:sip_h_X-jssipid"]
    config = make_config({"cdr": {"details": True, "fields": fields,
                                  "database": odbc_entry(odbc_kind, table_name, "string")}}, tmp_path)
    engine = engines(config)
    event = dict(
        hangups("b_bridge_null")[1],
        variable_queue_name="support 😀",
        variable_caller_id_name="Zoë 张 " + "😀" * 300,  # the column: cut to 255 characters by the builder
        variable_caller_id_number="1001",
        variable_queue_size="",
        # Several kilobytes of accented text in details: pieces sent by SQLPutData would be garbled
        # by MariaDB's driver, so this also proves every value is sent whole.
        variable_long_note="é😀ß" * 3000,
        **{"variable_sip_h_X-jssipid": "js-1", "Caller-Caller-ID-Name": "Zoë 张 " + "😀" * 300},
    )
    engine.handle(event)
    assert engine.flush(10), engine.status()
    (row,) = rows(odbc_kind, tmp_path, table_name)
    assert row["caller_id_name"] == ("Zoë 张 " + "😀" * 300)[:255]
    assert row["queue_name"] == "support 😀" and row["jsipid"] == "js-1" and row["q"] is None
    assert row["caller"].startswith("Zoë 张 😀") and row["caller"].endswith("|1001")
    details = row["details"] if isinstance(row["details"], dict) else json.loads(row["details"])
    assert details["long_note"] == "é😀ß" * 3000 and details["caller_id_number"] == "1001"


def test_a_record_the_database_refuses_is_set_aside_and_the_rest_flow(odbc_kind, table_name, tmp_path, engines) -> None:
    entry = odbc_entry(odbc_kind, table_name)
    dialect = dialect_for("odbc", make_config({"cdr": {"database": entry}}, tmp_path).databases[0])
    columns = ", ".join(f"{dialect.quote(column.name)} {dialect.types[column.kind]}" for column in STANDARD_COLUMNS)
    connection = connect(odbc_kind, tmp_path)
    cursor = connection.cursor()
    cursor.execute(f"CREATE TABLE {table_name} ({columns}, {dialect.quote('queue_name')} VARCHAR(10), "
                   f"PRIMARY KEY ({dialect.quote('uuid')}))")
    connection.commit()
    connection.close()
    engine = engines(make_config({"cdr": {"fields": ["queue_name"], "database": entry}}, tmp_path))
    template = hangups("b_bridge_null")[1]
    for index in range(50):
        engine.handle(dict(template, **{"Unique-ID": f"ok-{index:03d}",
                                        "variable_queue_name": "x" * 40 if index == 17 else "short"}))
    assert engine.flush(20), engine.status()
    found = {row["uuid"] for row in rows(odbc_kind, tmp_path, table_name, "uuid")}
    assert len(found) == 49 and "ok-017" not in found
    status = engine.status()["sinks"][0]
    assert status["rejected"] == 1 and status["written"] == 49 and status["healthy"]
    rejected = [json.loads(line) for line in (tmp_path / "spool" / "odbc" / "rejected.jsonl").read_text().splitlines()]
    assert [entry["record"]["uuid"] for entry in rejected] == ["ok-017"]
    assert "22001" in rejected[0]["error"]


# -- the sink ------------------------------------------------------------------------------------

def test_a_rejected_batch_is_rolled_back_whole(odbc_kind, table_name, tmp_path) -> None:
    sink = open_sink(odbc_entry(odbc_kind, table_name), tmp_path)
    sink.open()
    try:
        good = {"uuid": "good-1", "leg": "a"}
        bad = {"uuid": "bad-1", "leg": "x" * 100}  # leg is VARCHAR(64)
        with pytest.raises(RejectedError) as caught:
            sink.write([good, bad])
        assert "22001" in str(caught.value)
        assert rows(odbc_kind, tmp_path, table_name, "uuid") == []
        sink.write([good])
        sink.write([dict(good, leg="b")])
    finally:
        sink.close()
    assert rows(odbc_kind, tmp_path, table_name, "uuid, leg") == [{"uuid": "good-1", "leg": "b"}]


def test_a_lost_connection_is_retriable_and_a_new_one_writes(odbc_kind, table_name, tmp_path) -> None:
    sink = open_sink(odbc_entry(odbc_kind, table_name), tmp_path)
    sink.open()
    try:
        sink.write([{"uuid": "before"}])
        cursor = sink.connection.cursor()
        cursor.execute("SELECT pg_backend_pid()" if odbc_kind == "postgresql" else "SELECT CONNECTION_ID()")
        (session,) = cursor.fetchone()
        cursor.close()
        sink.connection.commit()
        admin = connect(odbc_kind, tmp_path)
        admin.cursor().execute(f"SELECT pg_terminate_backend({int(session)})" if odbc_kind == "postgresql"
                               else f"KILL {int(session)}")
        admin.commit()
        admin.close()
        with pytest.raises(RetriableError):
            sink.write([{"uuid": "during"}])
    finally:
        sink.close()
    sink.open()
    try:
        sink.write([{"uuid": "after"}])
    finally:
        sink.close()
    assert sorted(row["uuid"] for row in rows(odbc_kind, tmp_path, table_name, "uuid")) == ["after", "before"]


@pytest.mark.parametrize("form", ["seed", "string"])
def test_an_unreachable_server_is_retriable(odbc_kind, table_name, tmp_path, form) -> None:
    port = closed_port()
    entry = odbc_entry(odbc_kind, table_name, form, timeout_s=2)
    if form == "seed":
        entry["connectionstring"] = f"127.0.0.1,{port}@test"
    else:
        entry["connectionstring"] = entry["connectionstring"].replace(
            f"Port={5432 if odbc_kind == 'postgresql' else 3306}", f"Port={port}")
    sink = open_sink(entry, tmp_path)
    started = time.monotonic()
    with pytest.raises(RetriableError) as caught:
        sink.open()
    assert time.monotonic() - started < 5
    assert "refused" in str(caught.value).lower() or "can't connect" in str(caught.value).lower()


def test_a_driver_or_dsn_that_is_not_installed_is_reported_by_name(table_name, tmp_path) -> None:
    for entry in ({"dbtype": "odbc", "dialect": "postgresql", "driver": "No Such Driver 9",
                   "connectionstring": "127.0.0.1,5432@test", "table": table_name},
                  {"dbtype": "odbc", "dialect": "postgresql", "connectionstring": "DSN=fs_cdr_no_such_dsn",
                   "table": table_name}):
        sink = open_sink(entry, tmp_path)
        with pytest.raises(RetriableError) as caught:
            sink.open()
        assert "No Such Driver 9" in str(caught.value) or "Data source name not found" in str(caught.value)


def test_a_dsn_from_odbc_ini(table_name, tmp_path, monkeypatch, engines) -> None:
    driver = require_driver("postgresql")
    ini = tmp_path / "odbc.ini"
    ini.write_text(f"[fs_cdr_test]\nDriver = {driver}\nServername = {POSTGRES['host']}\nPort = {POSTGRES['port']}\n"
                   f"Database = {POSTGRES['database']}\n")
    monkeypatch.setenv("ODBCINI", str(ini))  # unixODBC's user DSN file
    try:
        engine = engines(make_config({"cdr": {"database": odbc_entry(
            "postgresql", table_name, "fs_cdr_test", username="postgres")}}, tmp_path))
        feed(engine, ["b_bridge_null"])
        assert len(rows("postgresql", tmp_path, table_name, "uuid")) == 2
    finally:
        drop_table("postgresql", tmp_path, table_name)


def test_a_configured_field_without_a_column_is_an_error_naming_it(odbc_kind, table_name, tmp_path) -> None:
    assert_a_missing_column_is_named(odbc_entry(odbc_kind, table_name), tmp_path)


def test_schema_ddl_creates_a_table_the_engine_accepts(odbc_kind, table_name, tmp_path) -> None:
    config = make_config({"cdr": {"details": True, "fields": ["queue_name", "number:score"],
                                  "database": odbc_entry(odbc_kind, table_name)}}, tmp_path)
    database = config.databases[0]
    dialect = dialect_for(database.dbtype, database)
    connection = dialect.connect(database, 5)
    cursor = connection.cursor()
    cursor.execute(dialect.create_table(table_name, table_columns(config)))
    connection.commit()
    connection.close()
    probe_config(config)


# -- driver timeouts set by the built connection strings ------------------------------------------------

def test_a_statement_that_outlives_the_timeout_is_cut_and_retriable(odbc_kind, table_name, tmp_path) -> None:
    """psqlODBC refuses the ODBC query timeout and MariaDB's driver ignores it for a stalled server;
    ConnSettings (statement_timeout) and READ_TIMEOUT are what end the wait."""
    sink = open_sink(odbc_entry(odbc_kind, table_name, timeout_s=1), tmp_path)
    sink.open()
    try:
        cursor = sink.connection.cursor()
        started = time.monotonic()
        with pytest.raises(pyodbc.Error) as caught:
            cursor.execute("SELECT pg_sleep(5)" if odbc_kind == "postgresql" else "SELECT SLEEP(5)")
            cursor.fetchall()
        assert time.monotonic() - started < 4
        assert isinstance(sink.dialect.classify(caught.value), RetriableError)
    finally:
        sink.close()


# -- SQL Server's parameter arrays, through a driver that is here --------------------------------------------

def test_sqlserver_parameter_arrays_bind_their_declared_types_through_a_real_driver(table_name, tmp_path) -> None:
    """SQL Server's ArrayCursor (fast_executemany with declared types) through psqlODBC, on the standard
    columns. NVARCHAR(MAX) parameters are left out: psqlODBC crashes on data-at-execution arrays, which
    is why sqlserver.py uses arrays with Microsoft's driver only."""
    driver = require_driver("postgresql")
    columns = STANDARD_COLUMNS
    names = tuple(column.name for column in columns)
    pg = dialect_for("postgresql")
    statement = odbc.to_qmark(pg.upsert(table_name, names), pg.placeholder)
    connection = pyodbc.connect(f"Driver={{{driver}}};Server={POSTGRES['host']};Port={POSTGRES['port']};"
                                f"Database={POSTGRES['database']};UID=postgres", autocommit=False)
    try:
        cursor = connection.cursor()
        cursor.execute(pg.create_table(table_name, [column for column in columns]).replace("(64)", "(128)")
                       .replace("(255)", "(510)"))
        connection.commit()
        arrays = sqlserver.ArrayConnection(connection, {statement: names})
        batch = [tuple({"uuid": f"u{index}", "caller_id_name": "😀" * 255 if index == 1 else None,
                        "billsec": index if index % 2 else None, "start_epoch": 1795746290 + index}.get(name)
                       for name in names) for index in range(300)]
        array_cursor = arrays.cursor()
        array_cursor.executemany(statement, batch)
        assert array_cursor.fast_executemany is True
        arrays.commit()
        array_cursor.executemany(statement, batch[:2])  # again: an upsert
        arrays.commit()
    finally:
        connection.close()
    try:
        found = {row["uuid"]: row for row in rows("postgresql", tmp_path, table_name)}
        assert len(found) == 300
        assert found["u1"]["caller_id_name"] == "😀" * 255 and found["u1"]["billsec"] == 1
        assert found["u2"]["billsec"] is None and found["u2"]["start_epoch"] == 1795746292
    finally:
        drop_table("postgresql", tmp_path, table_name)
