"""Partitions by day, week or month and retention (``"partition": "month"``, ``"retention_days": N``):
the DDL, the rule that never drops a partition still written to, and real MariaDB and PostgreSQL tables."""

from __future__ import annotations

import datetime
import logging
from typing import Any

import pytest
from conftest import connect, database_entry, drop_table, hangups, make_config, rows

from fs_cdr.engine import Engine
from fs_cdr.errors import ConfigError
from fs_cdr.schema import table_columns
from fs_cdr.sinks.mysql import MySQL
from fs_cdr.sinks.partitions import AHEAD, Partitions, partition_name, period_start
from fs_cdr.sinks.postgres import PostgreSQL
from fs_cdr.sinks.sql import SqlSink, dialect_for

DECEMBER = datetime.datetime(2026, 12, 3, 9, 0)


def at(moment: datetime.datetime):
    return lambda: moment


def test_mysql_partitions_by_month_of_start_with_the_uuid_key_holding_the_start(tmp_path) -> None:
    dialect = MySQL()
    partitions = Partitions(dialect, "cdr", clock=at(DECEMBER))
    columns = table_columns(make_config({"cdr": {"log": True}}, tmp_path))
    statement = dialect.create_table("cdr", columns, partitions)
    assert "  `start_stamp` DATETIME(3) NOT NULL," in statement
    assert "  PRIMARY KEY (`id`, `start_stamp`),\n  UNIQUE (`uuid`, `start_stamp`)\n)" in statement
    assert statement.endswith(
        " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin PARTITION BY RANGE COLUMNS(`start_stamp`) (\n"
        "  PARTITION `p202612` VALUES LESS THAN ('2027-01-01'),\n"
        "  PARTITION `p202701` VALUES LESS THAN ('2027-02-01'),\n"
        "  PARTITION `p202702` VALUES LESS THAN ('2027-03-01'),\n"
        "  PARTITION `p202703` VALUES LESS THAN ('2027-04-01'),\n"
        "  PARTITION `pmax` VALUES LESS THAN (MAXVALUE)\n)")


def test_postgresql_partitions_are_tables_with_a_default_and_the_upsert_names_the_key(tmp_path) -> None:
    dialect = PostgreSQL()
    partitions = Partitions(dialect, "cdr", clock=at(DECEMBER))
    columns = table_columns(make_config({"cdr": {"log": True}}, tmp_path))
    statements = dialect.schema_statements("cdr", columns, partitions)
    assert statements[0].endswith('  PRIMARY KEY ("uuid", "start_stamp")\n) PARTITION BY RANGE ("start_stamp")')
    assert statements[1] == ('CREATE TABLE "cdr_p202612" PARTITION OF "cdr" FOR VALUES FROM (MINVALUE) '
                             "TO ('2027-01-01')")
    assert statements[2] == ('CREATE TABLE "cdr_p202701" PARTITION OF "cdr" FOR VALUES FROM (\'2027-01-01\') '
                             "TO ('2027-02-01')")
    assert statements[5] == 'CREATE TABLE "cdr_pdefault" PARTITION OF "cdr" DEFAULT'
    config = make_config({"cdr": {"database": dict(database_entry("postgresql", "cdr", tmp_path), partition="month")}},
                         tmp_path)
    sink = SqlSink(dialect, config.databases[0], columns)
    assert 'ON CONFLICT ("uuid", "start_stamp") DO UPDATE' in sink.statement


def test_retention_never_drops_this_month_or_last_month_whatever_it_says() -> None:
    partitions = Partitions(MySQL(), "cdr", retention_days=1, clock=at(DECEMBER))
    existing: dict[str, Any] = {f"p2026{month:02d}": datetime.datetime(2026, month + 1, 1) for month in range(1, 12)}
    existing.update({"p202612": datetime.datetime(2027, 1, 1), "pmax": None})
    dropped = partitions._expired(existing)
    # October's rows all ended on November 1st: November (last month) and December stay
    assert dropped[-1] == "ALTER TABLE `cdr` DROP PARTITION `p202610`"
    assert len(dropped) == 10
    keep_a_year = Partitions(MySQL(), "cdr", retention_days=365, clock=at(DECEMBER))
    assert keep_a_year._expired(existing) == []
    assert Partitions(MySQL(), "cdr", clock=at(DECEMBER))._expired(existing) == []  # no retention: keep all


def test_weeks_start_on_monday_and_days_at_midnight_utc_across_month_and_year_ends() -> None:
    sunday = datetime.datetime(2027, 1, 3, 23, 59, 59)
    assert period_start(sunday, "week") == datetime.datetime(2026, 12, 28)
    assert period_start(sunday, "week", 1) == datetime.datetime(2027, 1, 4)
    assert period_start(sunday, "day", 1) == datetime.datetime(2027, 1, 4)
    assert period_start(datetime.datetime(2028, 2, 28, 12), "day", 2) == datetime.datetime(2028, 3, 1)  # leap
    assert period_start(DECEMBER, "month", 1) == datetime.datetime(2027, 1, 1)
    weekly = Partitions(MySQL(), "cdr", clock=at(DECEMBER), period="week")
    statement = weekly.table_suffix()
    assert "PARTITION `p20261130` VALUES LESS THAN ('2026-12-07')" in statement  # this week, Monday to Monday
    assert "PARTITION `p20261228` VALUES LESS THAN ('2027-01-04')" in statement  # four weeks ahead
    assert statement.count("VALUES LESS THAN ('") == 5
    daily = Partitions(PostgreSQL(), "cdr", clock=at(DECEMBER), period="day")
    statements = daily.create_statements()
    assert statements[0] == ('CREATE TABLE "cdr_p20261203" PARTITION OF "cdr" FOR VALUES FROM (MINVALUE) '
                             "TO ('2026-12-04')")
    assert len(statements) == 16  # today, fourteen days ahead, the default


def test_days_the_sink_did_not_run_get_their_partitions_and_retention_keeps_yesterday() -> None:
    daily = Partitions(MySQL(), "cdr", retention_days=1, clock=at(DECEMBER), period="day")
    existing: dict[str, Any] = {f"p202611{day:02d}": datetime.datetime(2026, 11, day + 1) for day in range(1, 30)}
    existing["pmax"] = None
    (reorganize,) = daily._ahead(existing)
    year_later = Partitions(MySQL(), "cdr", clock=at(DECEMBER + datetime.timedelta(days=365)), period="day")
    statements = year_later._ahead(existing)  # a year without fs_cdr: a month of days per statement
    assert len(statements) == 13 and sum(statement.count("LESS THAN ('") for statement in statements) == 383
    # from the last partition (ending November 30th) to fourteen days after today, one a day
    assert "PARTITION `p20261130` VALUES LESS THAN ('2026-12-01')" in reorganize
    assert "PARTITION `p20261217` VALUES LESS THAN ('2026-12-18')" in reorganize
    assert reorganize.count("VALUES LESS THAN ('") == 18
    existing.update({"p20261130": datetime.datetime(2026, 12, 1), "p20261201": datetime.datetime(2026, 12, 2),
                     "p20261202": datetime.datetime(2026, 12, 3), "p20261203": datetime.datetime(2026, 12, 4)})
    dropped = daily._expired(existing)
    # a day of retention: every day until the day before yesterday goes; yesterday and today stay
    assert dropped[-1] == "ALTER TABLE `cdr` DROP PARTITION `p20261201`"
    assert len(dropped) == 31


@pytest.mark.parametrize("entry, message", [
    ({"dbtype": "sqlite", "partition": "month"}, "MySQL/MariaDB and PostgreSQL only"),
    ({"dbtype": "mysql", "partition": "year"}, 'partition is "day", "week", "month" or absent, got \'year\''),
    ({"dbtype": "mysql", "retention_days": 90}, 'needs "partition": "day", "week" or "month"'),
])
def test_partition_settings_are_checked(entry, message, tmp_path) -> None:
    entry = dict({"connectionstring": "127.0.0.1,3306@test"}, **entry)
    with pytest.raises(ConfigError) as caught:
        make_config({"cdr": {"database": entry}}, tmp_path)
    assert message in str(caught.value)


def partition_names(kind: str, tmp_path: Any, table: str) -> list[str]:
    connection = connect(kind, tmp_path)
    try:
        cursor = connection.cursor()
        if kind == "mysql":
            cursor.execute("SELECT partition_name FROM information_schema.partitions WHERE table_schema = DATABASE() "
                           "AND table_name = %s ORDER BY partition_ordinal_position", (table,))
        else:
            cursor.execute("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                           "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = %s ORDER BY c.relname", (table,))
        return [str(row[0]) for row in cursor.fetchall()]
    finally:
        connection.close()


@pytest.mark.parametrize("kind, period", [("mysql", "month"), ("postgresql", "month"), ("mysql", "day"),
                                          ("postgresql", "week")])
def test_a_partitioned_table_is_upserted_by_uuid_and_retention_drops_old_partitions(kind, period, tmp_path,
                                                                                   table_name, caplog) -> None:
    entry = dict(database_entry(kind, table_name, tmp_path), partition=period, retention_days=60)
    config = make_config({"cdr": {"database": entry}}, tmp_path)
    try:
        for _ in range(2):  # the same calls twice: one row a leg
            engine = Engine(config).start()
            try:
                for event in hangups("b_bridge_null"):
                    engine.handle(event)
                assert engine.flush(60)
            finally:
                engine.stop()
        assert len(rows(kind, tmp_path, table_name, "uuid")) == 2
        names = partition_names(kind, tmp_path, table_name)
        assert len(names) == AHEAD[period] + 2  # this period, those ahead, the catch-all

        # a year later: the partitions ahead are made, and the months past retention are dropped,
        # the one that holds these rows with them, but never last month's or this one's
        later = datetime.datetime.now() + datetime.timedelta(days=400)
        database = config.databases[0]
        dialect = dialect_for(database.dbtype, database)
        assert dialect is not None
        sink = SqlSink(dialect, database, table_columns(config))
        sink.open()
        try:
            sink.partitions = Partitions(sink.dialect, table_name, 60, clock=at(later), period=period)
            with caplog.at_level(logging.WARNING, logger="fs_cdr.sinks.partitions"):
                statements = sink.partitions.maintain(sink.connection)
        finally:
            sink.close()
        assert any("DROP" in statement for statement in statements)
        assert rows(kind, tmp_path, table_name, "uuid") == []
        assert any("retention of 60 days: dropping" in record.getMessage() for record in caplog.records)
        left = partition_names(kind, tmp_path, table_name)
        for count in (-1, 0, 1):
            upper = period_start(later, period, count + 1)
            assert partition_name(table_name if kind == "postgresql" else "", upper, period) in left, (count, left)
    finally:
        drop_table(kind, tmp_path, table_name)


def test_schema_prints_the_partitioned_table_when_it_is_configured(tmp_path, capsys) -> None:
    import json

    from fs_cdr.cli import main

    path = tmp_path / "cdr.json"
    entry = dict(database_entry("mysql", "calls", tmp_path), partition="month", retention_days=400)
    path.write_text(json.dumps({"cdr": {"database": entry}}))
    assert main(["schema", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert "PARTITION BY RANGE COLUMNS(`start_stamp`)" in out and "UNIQUE (`uuid`, `start_stamp`)" in out
