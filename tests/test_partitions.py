"""Monthly partitions and retention (``"partition": "month"``, ``"retention_days": N``): the DDL, the
rule that never drops a partition still written to, and real MariaDB and PostgreSQL tables."""

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
from fs_cdr.sinks.partitions import MonthlyPartitions
from fs_cdr.sinks.postgres import PostgreSQL
from fs_cdr.sinks.sql import SqlSink, dialect_for

DECEMBER = datetime.datetime(2026, 12, 3, 9, 0)


def at(moment: datetime.datetime):
    return lambda: moment


def test_mysql_partitions_by_month_of_start_with_the_uuid_key_holding_the_start(tmp_path) -> None:
    dialect = MySQL()
    partitions = MonthlyPartitions(dialect, "cdr", clock=at(DECEMBER))
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
    partitions = MonthlyPartitions(dialect, "cdr", clock=at(DECEMBER))
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
    partitions = MonthlyPartitions(MySQL(), "cdr", retention_days=1, clock=at(DECEMBER))
    existing: dict[str, Any] = {f"p2026{month:02d}": datetime.datetime(2026, month + 1, 1) for month in range(1, 12)}
    existing.update({"p202612": datetime.datetime(2027, 1, 1), "pmax": None})
    dropped = partitions._expired(existing)
    # October's rows all ended on November 1st: November (last month) and December stay
    assert dropped[-1] == "ALTER TABLE `cdr` DROP PARTITION `p202610`"
    assert len(dropped) == 10
    keep_a_year = MonthlyPartitions(MySQL(), "cdr", retention_days=365, clock=at(DECEMBER))
    assert keep_a_year._expired(existing) == []
    assert MonthlyPartitions(MySQL(), "cdr", clock=at(DECEMBER))._expired(existing) == []  # no retention: keep all


@pytest.mark.parametrize("entry, message", [
    ({"dbtype": "sqlite", "partition": "month"}, "MySQL/MariaDB and PostgreSQL only"),
    ({"dbtype": "mysql", "partition": "day"}, "partition is \"month\""),
    ({"dbtype": "mysql", "retention_days": 90}, "needs \"partition\": \"month\""),
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


@pytest.mark.parametrize("kind", ["mysql", "postgresql"])
def test_a_partitioned_table_is_upserted_by_uuid_and_retention_drops_old_months(kind, tmp_path, table_name,
                                                                               caplog) -> None:
    entry = dict(database_entry(kind, table_name, tmp_path), partition="month", retention_days=60)
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
        assert len(names) == 5  # this month, three ahead, the catch-all

        # a year later: the partitions ahead are made, and the months past retention are dropped,
        # the one that holds these rows with them, but never last month's or this one's
        later = datetime.datetime.now() + datetime.timedelta(days=400)
        database = config.databases[0]
        dialect = dialect_for(database.dbtype, database)
        assert dialect is not None
        sink = SqlSink(dialect, database, table_columns(config))
        sink.open()
        try:
            sink.partitions = MonthlyPartitions(sink.dialect, table_name, 60, clock=at(later))
            with caplog.at_level(logging.WARNING, logger="fs_cdr.sinks.partitions"):
                statements = sink.partitions.maintain(sink.connection)
        finally:
            sink.close()
        assert any("DROP" in statement for statement in statements)
        assert rows(kind, tmp_path, table_name, "uuid") == []
        assert any("retention of 60 days: dropping" in record.getMessage() for record in caplog.records)
        left = partition_names(kind, tmp_path, table_name)
        for months in (-1, 0, 1):
            month = later.year * 12 + later.month - 1 + months
            assert any(name.endswith(f"p{month // 12:04d}{month % 12 + 1:02d}") for name in left), (months, left)
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
