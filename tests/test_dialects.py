"""SQL Server, Oracle and ODBC dialects without a server: every statement as text and parameters,
connection strings, error classification, and the Oracle partial-batch protocol with the real writer.

No SQL Server or Oracle server exists here. What runs for real: python-oracledb's thin driver (its
Easy Connect parser, and a connection refused on a closed port), pyodbc's exception classes, the
shared writer and SqlSink. The database side of the Oracle batch tests is a stand-in that behaves as
``executemany(batcherrors=True)`` is documented to: good rows applied, refused rows reported by offset.
"""

from __future__ import annotations

import json
import re
import socket
import time
from typing import Any

import pytest

from fs_cdr.cli import main
from fs_cdr.config import BatchSettings, DatabaseConfig, parse_config
from fs_cdr.errors import ConfigError, RejectedError, RetriableError, TransientError
from fs_cdr.schema import DETAILS, INDEXES, STANDARD_COLUMNS, Column, table_columns
from fs_cdr.sinks import odbc, oracle, sqlserver
from fs_cdr.sinks.mysql import MySQL
from fs_cdr.sinks.postgres import PostgreSQL
from fs_cdr.sinks.sql import SqlSink, dialect_for
from fs_cdr.sinks.sqlite import SQLite
from fs_cdr.writer import SinkLane

FIELDS = ["queue_name", "number:score", "level", "number"]  # level and number: reserved in Oracle


def database(entry: dict[str, Any], **cdr: Any) -> tuple[DatabaseConfig, tuple[Column, ...]]:
    config = parse_config({"cdr": dict({"database": entry}, **cdr)})
    return config.databases[0], table_columns(config)


def all_columns() -> tuple[Column, ...]:
    return table_columns(parse_config({"cdr": {"log": True, "details": True, "fields": FIELDS}}))


def markers(sql: str) -> list[str]:
    return re.findall(r"\?|:\d+|%s", sql)


# -- SQL Server ---------------------------------------------------------------------------------

def test_sqlserver_create_table_uses_nvarchar_and_brackets_every_name() -> None:
    statement = sqlserver.SqlServer().create_table("cdr", all_columns())
    lines = statement.splitlines()
    assert lines[0] == "CREATE TABLE [cdr] ("
    assert lines[1] == "  [id] BIGINT IDENTITY(1,1) NOT NULL,"
    assert lines[2] == "  [uuid] NVARCHAR(128) NOT NULL,"
    assert "  [leg] NVARCHAR(128)," in lines
    assert "  [caller_id_name] NVARCHAR(510)," in lines
    assert "  [start_epoch] BIGINT," in lines
    assert "  [details] NVARCHAR(MAX)," in lines
    assert "  [queue_name] NVARCHAR(MAX)," in lines
    assert "  [score] FLOAT," in lines
    assert "  [level] NVARCHAR(MAX)," in lines and "  [number] NVARCHAR(MAX)," in lines
    assert "  [start_stamp] DATETIME2(3)," in lines and "  [billmsec] BIGINT," in lines
    assert lines[-3:] == ["  PRIMARY KEY CLUSTERED ([id]),", "  UNIQUE NONCLUSTERED ([uuid])", ")"]
    added = sqlserver.SqlServer().add_column("cdr", Column("user", "long"))
    assert added == "ALTER TABLE [cdr] ADD [user] NVARCHAR(MAX)"


def test_sqlserver_table_gets_the_indexes_for_the_operators_queries() -> None:
    statements = sqlserver.SqlServer().schema_statements("cdr", all_columns())
    assert statements[1:] == [
        "CREATE INDEX [cdr_account_start] ON [cdr] ([account], [start_stamp])",
        "CREATE INDEX [cdr_call_uuid] ON [cdr] ([call_uuid])",
        "CREATE INDEX [cdr_destination] ON [cdr] ([destination_number], [start_stamp], [billsec])",
        "CREATE INDEX [cdr_start] ON [cdr] ([start_stamp], [hangup_cause])",
    ]
    online = sqlserver.SqlServer().create_index_online("cdr", INDEXES[0])
    assert online == "CREATE INDEX [cdr_account_start] ON [cdr] ([account], [start_stamp]) WITH (ONLINE = ON)"


def test_sqlserver_binds_stamps_as_iso_text_the_server_converts() -> None:
    kinds = odbc.parameter_kinds(["uuid", "start_stamp", "billmsec"], [("u", "2026-12-03 09:51:15.123", 2500)])
    assert kinds == ["key", "stamp", "int"]
    import pyodbc

    assert sqlserver.input_sizes(kinds)[1] == (pyodbc.SQL_WVARCHAR, 32, 0)


def test_sqlserver_merge_is_a_locked_upsert_of_every_column() -> None:
    dialect = sqlserver.SqlServer()
    statement = dialect.upsert("cdr", ["uuid", "leg", "key"])
    assert statement == (
        "MERGE INTO [cdr] WITH (HOLDLOCK) AS t "
        "USING (VALUES (?, ?, ?)) AS s ([uuid], [leg], [key]) "
        "ON t.[uuid] = s.[uuid] "
        "WHEN MATCHED THEN UPDATE SET [leg] = s.[leg], [key] = s.[key] "
        "WHEN NOT MATCHED THEN INSERT ([uuid], [leg], [key]) VALUES (s.[uuid], s.[leg], s.[key]);"
    )
    assert dialect.statements[statement] == ("uuid", "leg", "key")
    assert dialect.upsert("cdr", ["uuid"]) == (
        "MERGE INTO [cdr] WITH (HOLDLOCK) AS t USING (VALUES (?)) AS s ([uuid]) ON t.[uuid] = s.[uuid] "
        "WHEN NOT MATCHED THEN INSERT ([uuid]) VALUES (s.[uuid]);"
    )


def test_sqlserver_one_row_per_statement_stays_under_2100_parameters() -> None:
    dialect = sqlserver.SqlServer()
    names = [column.name for column in all_columns()]
    assert len(markers(dialect.upsert("cdr", names))) == len(names)
    # SQL Server's widest table, 1,024 columns, is one statement of 1,024 parameters.
    widest = ["uuid"] + [f"f{index}" for index in range(1023)]
    assert len(markers(dialect.upsert("cdr", widest))) == 1024 < sqlserver.MAX_PARAMETERS
    with pytest.raises(ConfigError, match="2099 parameters"):
        dialect.upsert("cdr", ["uuid"] + [f"f{index}" for index in range(2099)])


def test_sqlserver_columns_query_binds_the_table_name() -> None:
    sql, parameters = sqlserver.SqlServer().columns_query("cdr")
    assert sql == ("SELECT COLUMN_NAME FROM INFORMATION_SCHEMA.COLUMNS "
                   "WHERE TABLE_SCHEMA = SCHEMA_NAME() AND TABLE_NAME = ?")
    assert parameters == ("cdr",)


def test_sqlserver_seed_connection_string_for_microsofts_driver() -> None:
    config, _ = database({"dbtype": "sqlserver", "connectionstring": "tcp:127.0.0.1,1433@cdrdb",
                          "username": "sa", "password": "p;w}d"})
    assert (config.host, config.port, config.database) == ("127.0.0.1", 1433, "cdrdb")
    assert sqlserver.connection_string(config, 5) == (
        "Driver={ODBC Driver 18 for SQL Server};Server=tcp:127.0.0.1,1433;Database=cdrdb;APP=fs_cdr;"
        "UID=sa;PWD={p;w}}d}"
    )


def test_sqlserver_freetds_is_chosen_by_the_driver_key() -> None:
    config, _ = database({"dbtype": "mssql", "connectionstring": "db.example,1444@calls", "driver": "FreeTDS",
                          "username": "cdr", "password": "pw"})
    assert sqlserver.connection_string(config, 5) == (
        "Driver={FreeTDS};Server=db.example;Port=1444;Database=calls;TDS_Version=7.4;ClientCharset=UTF-8;"
        "UID=cdr;PWD=pw"
    )
    assert sqlserver.is_freetds("/usr/lib/x86_64-linux-gnu/odbc/libtdsodbc.so")


def test_sqlserver_url_query_options_reach_the_driver() -> None:
    config, _ = database({"dbtype": "sqlserver",
                          "connectionstring": "mssql://sa:s%3Bcret@db:1433/cdr?TrustServerCertificate=yes&app=pbx1"})
    assert sqlserver.connection_string(config, 5) == (
        "Driver={ODBC Driver 18 for SQL Server};Server=tcp:db,1433;Database=cdr;app=pbx1;UID=sa;PWD={s;cret};"
        "TrustServerCertificate=yes"
    )


def test_sqlserver_odbc_connection_string_and_dsn_are_used_as_written() -> None:
    config, _ = database({"dbtype": "sqlserver", "connectionstring":
                          "Driver={ODBC Driver 17 for SQL Server};Server=tcp:db,1433;Database=cdr;Encrypt=no",
                          "username": "sa", "password": "pw"})
    assert config.odbc and not config.host
    assert sqlserver.connection_string(config, 5) == (
        "Driver={ODBC Driver 17 for SQL Server};Server=tcp:db,1433;Database=cdr;Encrypt=no;UID=sa;PWD=pw")
    config, _ = database({"dbtype": "sqlserver", "connectionstring": "DSN=cdr;UID=reader", "password": "pw"})
    assert sqlserver.connection_string(config, 5) == "DSN=cdr;UID=reader;PWD=pw"
    config, _ = database({"dbtype": "sqlserver", "connectionstring": "Server=db;Database=cdr", "driver": "FreeTDS"})
    assert sqlserver.connection_string(config, 5) == "Driver={FreeTDS};Server=db;Database=cdr"


def test_sqlserver_parameter_types_are_declared_per_column_kind() -> None:
    import pyodbc

    names = ("uuid", "leg", "caller_id_name", "billsec", "details", "queue_name", "score", "empty")
    rows = [("u1", None, "😀" * 255, 3, "{}", "support", None, None),
            ("u2", "a", None, None, None, None, 2.5, None)]
    kinds = odbc.parameter_kinds(names, rows)
    assert kinds == ["key", "short", "text", "int", "json", "long", "number", "long"]
    assert sqlserver.input_sizes(kinds) == [
        (pyodbc.SQL_WVARCHAR, 128, 0), (pyodbc.SQL_WVARCHAR, 128, 0), (pyodbc.SQL_WVARCHAR, 510, 0),
        (pyodbc.SQL_BIGINT, 19, 0), (pyodbc.SQL_WVARCHAR, 0, 0), (pyodbc.SQL_WVARCHAR, 0, 0),
        (pyodbc.SQL_DOUBLE, 15, 0), (pyodbc.SQL_WVARCHAR, 0, 0),
    ]
    # 255 characters outside the BMP are 510 UTF-16 code units: the declared size holds them.
    assert len(("😀" * 255).encode("utf-16-le")) // 2 == 510


class RecordingCursor:
    def __init__(self) -> None:
        self.fast_executemany = False
        self.sizes: Any = None
        self.calls: list[tuple[str, list]] = []

    def setinputsizes(self, sizes: Any) -> None:
        self.sizes = sizes

    def executemany(self, sql: str, rows: list) -> None:
        self.calls.append((sql, rows))

    def close(self) -> None:
        pass


def test_sqlserver_upserts_go_out_as_parameter_arrays_with_declared_types() -> None:
    dialect = sqlserver.SqlServer()
    statement = dialect.upsert("cdr", ["uuid", "billsec"])
    raw = RecordingCursor()
    cursor = sqlserver.ArrayCursor(raw, dialect.statements)
    cursor.executemany(statement, [("u1", 1), ("u2", None)])
    assert raw.fast_executemany is True
    assert raw.sizes == sqlserver.input_sizes(["key", "int"])
    assert raw.calls == [(statement, [("u1", 1), ("u2", None)])]
    other = RecordingCursor()
    sqlserver.ArrayCursor(other, dialect.statements).executemany("DELETE FROM x WHERE a = ?", [(1,)])
    assert other.fast_executemany is False and other.sizes is None
    assert sqlserver.supports_parameter_arrays("libmsodbcsql-18.3.so.2.1")
    assert sqlserver.supports_parameter_arrays("msodbcsql17.dll")
    assert not sqlserver.supports_parameter_arrays("libtdsodbc.so")


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda p: p.DataError("22001", "[22001] [Microsoft][ODBC Driver 18 for SQL Server][SQL Server]String or "
                                        "binary data would be truncated (2628) (SQLExecute)"), RejectedError),
        (lambda p: p.IntegrityError("23000", "[23000] Cannot insert the value NULL (515) (SQLExecute)"), RejectedError),
        (lambda p: p.DataError("22018", "[22018] Conversion failed (245) (SQLExecute)"), RejectedError),
        (lambda p: p.ProgrammingError("String data, right truncation: length 14 buffer 10", "HY000"), RejectedError),
        (lambda p: p.OperationalError("08S01", "[08S01] Communication link failure (10054) (SQLExecute)"),
         RetriableError),
        (lambda p: p.Error("40001", "[40001] Transaction was deadlocked (1205) (SQLExecute)"), TransientError),
        (lambda p: p.OperationalError("HYT00", "[HYT00] Query timeout expired (0) (SQLExecute)"), RetriableError),
        (lambda p: p.ProgrammingError("42S02", "[42S02] Invalid object name 'cdr'. (208) (SQLExecute)"),
         RetriableError),
        (lambda p: p.InterfaceError("IM002", "[IM002] Data source name not found (0) (SQLDriverConnect)"),
         RetriableError),
    ],
)
def test_sqlserver_errors_are_classified_by_sqlstate(make, expected) -> None:
    import pyodbc

    assert type(sqlserver.SqlServer().classify(make(pyodbc))) is expected


# -- Oracle ---------------------------------------------------------------------------------------

def test_oracle_create_table_quotes_upper_case_names_and_uses_clob() -> None:
    statement = oracle.Oracle().create_table("cdr", all_columns())
    lines = statement.splitlines()
    assert lines[0] == 'CREATE TABLE "CDR" ('
    assert lines[1] == '  "UUID" VARCHAR2(64 CHAR) NOT NULL,'
    assert '  "CALLER_ID_NAME" VARCHAR2(255 CHAR),' in lines
    assert '  "BILLSEC" NUMBER(19),' in lines
    assert '  "DETAILS" CLOB,' in lines
    assert '  "QUEUE_NAME" CLOB,' in lines and '  "SCORE" BINARY_DOUBLE,' in lines
    assert '  "LEVEL" CLOB,' in lines and '  "NUMBER" CLOB,' in lines
    assert '  "START_STAMP" TIMESTAMP(3),' in lines and '  "END_STAMP" TIMESTAMP(3),' in lines
    assert lines[-2:] == ['  PRIMARY KEY ("UUID")', ")"]  # a heap table: new rows go to its end whatever the key
    assert oracle.Oracle().add_column("cdr", Column("size", "number")) == 'ALTER TABLE "CDR" ADD "SIZE" BINARY_DOUBLE'


def test_oracle_table_gets_the_indexes_and_stamps_are_converted_with_a_fixed_format() -> None:
    dialect = oracle.Oracle()
    statements = dialect.schema_statements("cdr", all_columns())
    assert statements[1] == 'CREATE INDEX "CDR_ACCOUNT_START" ON "CDR" ("ACCOUNT", "START_STAMP")'
    assert statements[3] == 'CREATE INDEX "CDR_DESTINATION" ON "CDR" ("DESTINATION_NUMBER", "START_STAMP", "BILLSEC")'
    assert len(statements) == 5
    statement = dialect.upsert("cdr", ["uuid", "start_stamp"])
    # the session's NLS_TIMESTAMP_FORMAT does not decide how the text is read
    assert statement.startswith('MERGE INTO "CDR" t USING (SELECT :1 AS "UUID", '
                                f'TO_TIMESTAMP(:2, {oracle.STAMP_FORMAT}) AS "START_STAMP" FROM DUAL) s ')
    assert oracle.STAMP_FORMAT.replace("' || CHR(58) || '", ":") == "'YYYY-MM-DD HH24:MI:SS.FF3'"
    sql, parameters = dialect.indexes_query("cdr")
    assert "user_ind_columns" in sql and parameters == ("CDR",)


def test_oracle_merge_binds_each_value_once_by_position() -> None:
    dialect = oracle.Oracle()
    statement = dialect.upsert("cdr", ["uuid", "leg", "level"])
    assert statement == (
        'MERGE INTO "CDR" t USING (SELECT :1 AS "UUID", :2 AS "LEG", :3 AS "LEVEL" FROM DUAL) s '
        'ON (t."UUID" = s."UUID") '
        'WHEN MATCHED THEN UPDATE SET t."LEG" = s."LEG", t."LEVEL" = s."LEVEL" '
        'WHEN NOT MATCHED THEN INSERT ("UUID", "LEG", "LEVEL") VALUES (s."UUID", s."LEG", s."LEVEL")'
    )
    assert not statement.endswith(";")
    assert dialect.statements[statement] == ("uuid", "leg", "level")
    names = [column.name for column in all_columns()]
    assert markers(dialect.upsert("cdr", names)) == [f":{index}" for index in range(1, len(names) + 1)]


def test_oracle_names_are_spelled_alike_in_create_merge_and_the_column_check() -> None:
    dialect = oracle.Oracle()
    names = [column.name for column in all_columns()]
    created = set(re.findall(r'"([^"]+)"', dialect.create_table("Cdr_Table", all_columns())))
    merged = set(re.findall(r'"([^"]+)"', dialect.upsert("Cdr_Table", names)))
    sql, parameters = dialect.columns_query("Cdr_Table")
    assert sql == "SELECT column_name FROM user_tab_columns WHERE table_name = :1"
    assert parameters == ("CDR_TABLE",)
    assert created == merged == {name.upper() for name in names} | {"CDR_TABLE"}
    assert all(name == name.upper() for name in created)


def test_oracle_seed_and_easy_connect_forms_parse_to_the_same_target() -> None:
    import oracledb

    forms = {
        "db.example,1521@ORCLPDB1": ("db.example", 1521, "ORCLPDB1", "tcp"),
        "tcp:db.example,1521@ORCLPDB1": ("db.example", 1521, "ORCLPDB1", "tcp"),
        "db.example@ORCLPDB1": ("db.example", 1521, "ORCLPDB1", "tcp"),
        "tcp://db.example:1522/ORCLPDB1": ("db.example", 1522, "ORCLPDB1", "tcp"),
        "oracle://cdr:pw@db.example/ORCLPDB1?expire_time=2": ("db.example", 1521, "ORCLPDB1", "tcp"),
        "oracle://db.example:2484/ORCLPDB1?protocol=tcps&ssl_server_dn_match=true":
            ("db.example", 2484, "ORCLPDB1", "tcps"),
    }
    for text, expected in forms.items():
        config, _ = database({"dbtype": "oracle", "connectionstring": text})
        dsn = oracle.easy_connect(config)
        params = oracledb.ConnectParams()
        params.parse_connect_string(dsn)  # python-oracledb's own Easy Connect parser
        assert (params.host, params.port, params.service_name, params.protocol) == expected, (text, dsn)
    config, _ = database({"dbtype": "oracle", "connectionstring": "oracle://cdr:pw@db.example/ORCLPDB1?expire_time=2"})
    assert (config.username, config.password, oracle.easy_connect(config)) == (
        "cdr", "pw", "db.example:1521/ORCLPDB1?expire_time=2")


def test_oracle_driver_key_chooses_thin_or_thick_mode() -> None:
    assert oracle.client_mode("") == (False, None) and oracle.client_mode("thin") == (False, None)
    assert oracle.client_mode("thick") == (True, None)
    assert oracle.client_mode("thick:/opt/oracle/instantclient_23_5") == (True, "/opt/oracle/instantclient_23_5")
    config, _ = database({"dbtype": "oracle", "connectionstring": "db@svc", "driver": "oci"})
    with pytest.raises(ConfigError) as caught:
        dialect_for(config.dbtype, config)
    assert caught.value.path == "cdr.database (oracle).driver" and "thick" in caught.value.message


def test_oracle_bind_types_are_declared_and_long_text_goes_as_clob() -> None:
    import oracledb

    names = ("uuid", "billsec", "caller_id_name", "details", "queue_name", "score")
    short = [("u1", None, None, None, None, None), ("u2", 3, "x", "{}", "é" * 1000, 1.5)]
    assert oracle.input_types(odbc.parameter_kinds(names, short), short) == [
        oracledb.DB_TYPE_VARCHAR, oracledb.DB_TYPE_NUMBER, oracledb.DB_TYPE_VARCHAR,
        oracledb.DB_TYPE_VARCHAR, oracledb.DB_TYPE_VARCHAR, oracledb.DB_TYPE_NUMBER]
    # 2,001 two-byte characters are 4,002 bytes: over VARCHAR2's 4,000, so that column is a CLOB.
    long = short + [("u3", None, None, "{}", "é" * 2001, None)]
    assert oracle.input_types(odbc.parameter_kinds(names, long), long)[3:5] == [
        oracledb.DB_TYPE_VARCHAR, oracledb.DB_TYPE_CLOB]


def ora(code: int, message: str, offset: int = 0) -> Any:
    from oracledb.errors import _Error

    return _Error(message=f"ORA-{code:05d}: {message}", code=code, offset=offset)


def raised(error: Any) -> BaseException:
    return error.exc_type(error)  # the exception python-oracledb raises for it


@pytest.mark.parametrize(
    "error, expected",
    [
        (raised(ora(12899, 'value too large for column "CDR"."CALLER_ID_NAME"')), RejectedError),
        (raised(ora(1, "unique constraint (CDR.SYS_C008) violated")), RejectedError),
        (raised(ora(1400, 'cannot insert NULL into ("CDR"."UUID")')), RejectedError),
        (raised(ora(1722, "invalid number")), RejectedError),
        (raised(ora(60, "deadlock detected while waiting for resource")), TransientError),
        (raised(ora(3113, "end-of-file on communication channel")), RetriableError),
        (raised(ora(942, "table or view does not exist")), RetriableError),
        (oracle.PartialBatch([(3, "ORA-12899: value too large")], 10), RejectedError),
        (ConnectionRefusedError(111, "Connection refused"), RetriableError),
    ],
)
def test_oracle_errors_are_classified_by_ora_code(error, expected) -> None:
    assert type(oracle.Oracle().classify(error)) is expected


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_oracle_thin_driver_on_a_closed_port_is_retriable() -> None:
    config, columns = database({"dbtype": "oracle", "connectionstring": f"127.0.0.1,{closed_port()}@FREEPDB1",
                                "username": "cdr", "password": "pw", "timeout_s": 2})
    sink = SqlSink(dialect_for(config.dbtype, config), config, columns)
    started = time.monotonic()
    with pytest.raises(RetriableError) as caught:
        sink.open()
    assert "DPY-6005" in str(caught.value) and time.monotonic() - started < 5


class OracleStandIn:
    """The database side of python-oracledb's cursor, as documented: with ``batcherrors=True`` the good
    rows are applied and refused rows reported as errors with their offset; without it the first
    refused row raises. Rows become visible to others only on commit."""

    def __init__(self, columns: tuple[Column, ...]) -> None:
        self.columns = [column.name.upper() for column in columns]
        self.committed: dict[str, tuple] = {}
        self.pending: dict[str, tuple] = {}
        self.calls: list[tuple[int, bool]] = []
        self.race_once: set[str] = set()

    def refusal(self, row: tuple, offset: int) -> Any:
        name = row[self.columns.index("CALLER_ID_NAME")]
        if name == "TOO LONG":
            return ora(12899, 'value too large for column "CDR"."CALLER_ID_NAME" (actual: 300, maximum: 255)', offset)
        if name == "DEADLOCK":
            return ora(60, "deadlock detected while waiting for resource", offset)
        if name == "RACE" and row[0] in self.race_once:
            self.race_once.discard(row[0])
            return ora(1, "unique constraint (CDR.SYS_C008) violated", offset)
        return None

    def connection(self) -> "StandInConnection":
        return StandInConnection(self)


class StandInCursor:
    def __init__(self, server: OracleStandIn) -> None:
        self.server, self.result, self.errors, self.sizes = server, [], [], ()

    def setinputsizes(self, *types: Any) -> None:
        self.sizes = types

    def execute(self, sql: str, parameters: Any = ()) -> None:
        assert sql == "SELECT column_name FROM user_tab_columns WHERE table_name = :1"
        self.result = [(name,) for name in self.server.columns]

    def fetchall(self) -> list:
        return self.result

    def executemany(self, sql: str, rows: list, batcherrors: bool = False) -> None:
        assert sql.startswith('MERGE INTO "CDR"') and len(self.sizes) == len(rows[0])
        self.server.calls.append((len(rows), batcherrors))
        self.errors = []
        for offset, row in enumerate(rows):
            error = self.server.refusal(row, offset)
            if error is None:
                self.server.pending[row[0]] = row
            elif batcherrors:
                self.errors.append(error)
            else:
                raise error.exc_type(error)

    def getbatcherrors(self) -> list:
        return self.errors

    def close(self) -> None:
        pass


class StandInConnection:
    def __init__(self, server: OracleStandIn) -> None:
        self.server = server

    def cursor(self) -> StandInCursor:
        return StandInCursor(self.server)

    def commit(self) -> None:
        self.server.committed.update(self.server.pending)
        self.server.pending.clear()

    def rollback(self) -> None:
        self.server.pending.clear()

    def close(self) -> None:
        self.rollback()


class StandInOracle(oracle.Oracle):
    """The real dialect, connected to the stand-in instead of a server."""

    def __init__(self, server: OracleStandIn) -> None:
        super().__init__()
        self.server = server

    def connect(self, config: DatabaseConfig, timeout_s: float) -> Any:
        return oracle.OracleConnection(self.server.connection(), self.statements)


def oracle_sink(server: OracleStandIn) -> tuple[Any, DatabaseConfig, tuple[Column, ...]]:
    config, columns = database({"dbtype": "oracle", "connectionstring": "db@svc"})
    return (lambda: SqlSink(StandInOracle(server), config, columns)), config, columns


def record(uuid: str, caller: str = "Alice") -> dict[str, Any]:
    return {"uuid": uuid, "caller_id_name": caller, "billsec": 3}


def test_oracle_partial_batch_sets_aside_only_the_refused_records(tmp_path) -> None:
    server = OracleStandIn(())
    open_sink, config, columns = oracle_sink(server)
    server.columns = [column.name.upper() for column in columns]
    lane = SinkLane("oracle", "stand-in", open_sink, BatchSettings(batch_size=10, flush_interval_ms=20),
                    str(tmp_path / "spool"))
    lane.start()
    try:
        now = time.monotonic()
        for index in range(10):
            lane.offer(record(f"u{index}", "TOO LONG" if index in (3, 7) else "Alice"), now)
        deadline = time.time() + 10
        while lane.stats.written + lane.stats.rejected < 10 and time.time() < deadline:
            time.sleep(0.01)
    finally:
        lane.stop(2.0)
    assert (lane.stats.written, lane.stats.rejected) == (8, 2)
    assert sorted(server.committed) == sorted(f"u{index}" for index in range(10) if index not in (3, 7))
    # One batch of ten with batch errors, then only the two refused rows again, one at a time.
    assert server.calls == [(10, True), (1, False), (1, False)]
    lines = (tmp_path / "spool" / "oracle" / "rejected.jsonl").read_text().splitlines()
    rejected = [json.loads(line) for line in lines]
    assert sorted(entry["record"]["uuid"] for entry in rejected) == ["u3", "u7"]
    assert all("ORA-12899" in entry["error"] for entry in rejected)


def test_oracle_batch_with_a_retriable_row_error_is_rolled_back_whole() -> None:
    server = OracleStandIn(())
    open_sink, config, columns = oracle_sink(server)
    server.columns = [column.name.upper() for column in columns]
    sink = open_sink()
    sink.open()
    with pytest.raises(RetriableError, match="ORA-00060"):
        sink.write([record("a"), record("b", "DEADLOCK"), record("c", "TOO LONG")])
    assert server.committed == {} and server.pending == {}
    sink.write([record("a"), record("b")])
    assert sorted(server.committed) == ["a", "b"]


def test_oracle_merge_that_loses_an_insert_race_is_retried_once() -> None:
    server = OracleStandIn(())
    open_sink, config, columns = oracle_sink(server)
    server.columns = [column.name.upper() for column in columns]
    sink = open_sink()
    sink.open()
    server.race_once.add("r1")
    sink.write([record("r1", "RACE")])  # ORA-00001, then the same MERGE updates the row
    assert server.calls == [(1, False), (1, False)] and "r1" in server.committed
    with pytest.raises(RejectedError, match="ORA-12899"):
        sink.write([record("r2", "TOO LONG")])


def test_oracle_rows_committed_ahead_are_acknowledged_once() -> None:
    server = OracleStandIn(())
    connection = oracle.OracleConnection(server.connection(), {})
    connection.commit_ahead("MERGE", [("a", 1), ("a", 1)])
    assert connection.settle("MERGE", ("a", 1)) and connection.settle("MERGE", ("a", 1))
    assert not connection.settle("MERGE", ("a", 1))
    connection.commit_ahead("MERGE", [("b", 1)])
    connection.forget()
    assert not connection.settle("MERGE", ("b", 1))


# -- dbtype odbc ----------------------------------------------------------------------------------

@pytest.mark.parametrize("sql_dialect", [MySQL(), PostgreSQL(), SQLite(), oracle.Oracle()], ids=lambda d: d.name)
def test_odbc_dialect_sends_the_dialects_own_sql_with_question_marks(sql_dialect) -> None:
    wrapped = odbc.OdbcDialect(sql_dialect)
    names = [column.name for column in all_columns()]
    native, through_odbc = sql_dialect.upsert("cdr", names), wrapped.upsert("cdr", names)
    assert markers(through_odbc) == ["?"] * len(names)
    assert re.sub(r"%s|:\d+", "?", native) == through_odbc
    sql, parameters = wrapped.columns_query("cdr")
    assert markers(sql) == ["?"] and parameters == sql_dialect.columns_query("cdr")[1]
    assert wrapped.create_table("cdr", all_columns()) == sql_dialect.create_table("cdr", all_columns())
    assert wrapped.quote("level") == sql_dialect.quote("level") and wrapped.placeholder == "?"


def test_odbc_statement_conversion_refuses_text_it_cannot_convert_safely() -> None:
    assert odbc.to_qmark("SELECT a FROM t WHERE b = %s", "%s") == "SELECT a FROM t WHERE b = ?"
    with pytest.raises(ValueError):
        odbc.to_qmark("SELECT a FROM t WHERE b LIKE '%x' AND c = %s", "%s")
    with pytest.raises(ValueError):
        odbc.to_qmark("SELECT :2, :1 FROM DUAL", ":1")


def test_odbc_dialect_is_chosen_by_the_dialect_key() -> None:
    base = {"dbtype": "odbc", "connectionstring": "DSN=cdr"}
    for name, kind in [("mysql", "mysql"), ("postgresql", "postgresql"), ("oracle", "oracle"), ("sqlite", "sqlite")]:
        config, _ = database(dict(base, dialect=name))
        dialect = dialect_for("odbc", config)
        assert isinstance(dialect, odbc.OdbcDialect) and dialect.sql.name == kind
    config, _ = database(dict(base, dialect="sqlserver"))
    assert isinstance(dialect_for("odbc", config), sqlserver.SqlServer)
    with pytest.raises(ConfigError) as caught:
        parse_config({"cdr": {"database": base}})
    assert caught.value.path == "cdr.database.dialect"
    with pytest.raises(ConfigError, match="dialect"):
        dialect_for("odbc")


def test_odbc_built_connection_strings_carry_each_drivers_timeouts() -> None:
    config, _ = database({"dbtype": "odbc", "dialect": "postgresql", "driver": "PostgreSQL Unicode",
                          "connectionstring": "127.0.0.1,5432@test", "username": "postgres", "timeout_s": 2})
    assert dialect_for("odbc", config).connection_string(config, 2) == (
        "Driver={PostgreSQL Unicode};Server=127.0.0.1;Port=5432;Database=test;Protocol=7.4-1;"
        "pqopt={connect_timeout=2 keepalives=1 keepalives_idle=2 keepalives_interval=1 keepalives_count=3 "
        "tcp_user_timeout=2000 application_name=fs_cdr};ConnSettings={SET statement_timeout = 2000};UID=postgres"
    )
    config, _ = database({"dbtype": "odbc", "dialect": "mysql", "driver": "MariaDB Unicode",
                          "connectionstring": "mysql://root:p%3Dw@127.0.0.1/test"})
    assert dialect_for("odbc", config).connection_string(config, 5) == (
        "Driver={MariaDB Unicode};Server=127.0.0.1;Port=3306;Database=test;CHARSET=utf8mb4;CONN_TIMEOUT=5;"
        "READ_TIMEOUT=5;WRITE_TIMEOUT=5;UID=root;PWD={p=w}"
    )
    config, _ = database({"dbtype": "odbc", "dialect": "oracle", "driver": "Oracle 21 ODBC driver",
                          "connectionstring": "db.example,1521@ORCLPDB1", "username": "cdr", "password": "pw"})
    assert dialect_for("odbc", config).connection_string(config, 5) == (
        "Driver={Oracle 21 ODBC driver};DBQ=db.example:1521/ORCLPDB1;UID=cdr;PWD=pw")


def test_odbc_configuration_mistakes_are_named_before_connecting() -> None:
    config, _ = database({"dbtype": "odbc", "dialect": "postgresql", "connectionstring": "127.0.0.1,5432@test"})
    with pytest.raises(ConfigError) as caught:
        dialect_for("odbc", config)
    assert caught.value.path == "cdr.database (odbc).driver" and "odbcinst -q -d" in caught.value.message
    config, _ = database({"dbtype": "odbc", "dialect": "sqlite", "driver": "SQLite3", "connectionstring": "h,1@db"})
    with pytest.raises(ConfigError, match="Database=/path"):
        dialect_for("odbc", config)
    config, _ = database({"dbtype": "odbc", "dialect": "sqlite",
                          "connectionstring": "Driver=SQLite3;Database=/var/cdr.db"})
    assert dialect_for("odbc", config).connection_string(config, 5) == "Driver=SQLite3;Database=/var/cdr.db"


def test_odbc_connection_string_keys_skip_braced_values() -> None:
    assert odbc.connection_keys("Driver={A;B=C};Server=x;PWD={p;w}}d=1};uid=u") == {"driver", "server", "pwd", "uid"}
    assert odbc.with_credentials("DSN=cdr;", "", "u", "p;w") == "DSN=cdr;UID=u;PWD={p;w}"
    assert odbc.with_credentials("DSN=cdr;User=x;Password=y", "Drv", "u", "p") == "DSN=cdr;User=x;Password=y"


@pytest.mark.parametrize(
    "dialect, message, expected",
    [
        ("mysql", "[HY000] [ma-3.1.15]Incorrect string value: '\\xF0\\x9F' for column 'x' (1366) (SQLExecute)",
         RejectedError),
        ("mysql", "[01000] [ma-3.1.15]Data truncated for column 'leg' at row 1 (1265) (SQLExecute)", RejectedError),
        ("mysql", "[HY000] [ma-3.1.15]Lost connection to server during query (2013) (SQLExecute)", RetriableError),
        ("oracle", "[HY000] [Oracle][ODBC][Ora]ORA-12899: value too large for column (12899) (SQLExecute)",
         RejectedError),
        ("oracle", "[HY000] [Oracle][ODBC][Ora]ORA-03113: end-of-file on communication channel (3113) (SQLExecute)",
         RetriableError),
        ("postgresql", "[57014] ERROR: canceling statement due to statement timeout (1) (SQLExecDirectW)",
         RetriableError),
    ],
)
def test_odbc_native_codes_decide_where_the_sqlstate_is_vague(dialect, message, expected) -> None:
    import pyodbc

    config, _ = database({"dbtype": "odbc", "dialect": dialect, "connectionstring": "DSN=x"})
    error = pyodbc.Error(message[1:6], message)
    assert type(dialect_for("odbc", config).classify(error)) is expected


# -- fs-cdr schema --------------------------------------------------------------------------------

def schema_output(tmp_path, capsys, argv: list[str], entry: dict[str, Any]) -> tuple[int, str]:
    path = tmp_path / "cdr.json"
    path.write_text(json.dumps({"cdr": {"details": True, "fields": ["queue_name", "number:score"], "database": entry}}))
    code = main(["schema", "-c", str(path), *argv])
    return code, capsys.readouterr().out


def test_schema_command_prints_sqlserver_and_oracle_tables(tmp_path, capsys) -> None:
    entry = {"dbtype": "sqlite", "connectionstring": "cdr.sqlite", "table": "calls"}
    code, out = schema_output(tmp_path, capsys, ["--dbtype", "sqlserver"], entry)
    fields = ["queue_name", "number:score"]
    columns = table_columns(parse_config({"cdr": {"log": True, "details": True, "fields": fields}}))
    assert code == 0
    statements = sqlserver.SqlServer().schema_statements('calls', columns)
    assert out == "-- sqlserver\n" + "".join(f"{statement};\n" for statement in statements)
    assert "[details] NVARCHAR(MAX)" in out and "[score] FLOAT" in out
    code, out = schema_output(tmp_path, capsys, ["--dbtype", "oracle"], entry)
    statements = oracle.Oracle().schema_statements('calls', columns)
    assert code == 0 and out == "-- oracle\n" + "".join(f"{statement};\n" for statement in statements)
    assert 'CREATE TABLE "CALLS"' in out and '"DETAILS" CLOB' in out


def test_schema_command_uses_the_configured_odbc_dialect(tmp_path, capsys) -> None:
    entry = {"dbtype": "odbc", "dialect": "oracle", "connectionstring": "DSN=cdr"}
    code, out = schema_output(tmp_path, capsys, [], entry)
    assert code == 0 and out.startswith('-- odbc\nCREATE TABLE "CDR" (\n  "UUID" VARCHAR2(64 CHAR) NOT NULL,')
    entry = {"dbtype": "sqlite", "connectionstring": "cdr.sqlite"}
    code, _ = schema_output(tmp_path, capsys, ["--dbtype", "odbc"], entry)
    assert code == 2  # which dialect? the configuration does not say


def test_every_standard_column_has_a_type_in_each_new_dialect() -> None:
    kinds = {column.kind for column in STANDARD_COLUMNS + (DETAILS,)} | {"long", "number"}
    for dialect in (sqlserver.SqlServer(), oracle.Oracle()):
        assert kinds <= set(dialect.types), dialect.name


def test_deadlocks_are_transient_in_every_dialect() -> None:
    """A batch a database rolled back to break a deadlock is retried at once (writer.TRANSIENT_RETRIES)."""
    import MySQLdb
    import psycopg

    from fs_cdr.sinks import mysql, oracle, postgres

    assert type(mysql.MySQL().classify(MySQLdb.OperationalError(1213, "Deadlock found"))) is TransientError
    assert type(mysql.MySQL().classify(MySQLdb.OperationalError(2013, "Lost connection"))) is RetriableError
    deadlock = psycopg.errors.DeadlockDetected("deadlock detected")
    assert type(postgres.PostgreSQL().classify(deadlock)) is TransientError
    assert type(postgres.PostgreSQL().classify(psycopg.OperationalError("server closed"))) is RetriableError

    class OracleError(Exception):
        pass

    detail = type("Detail", (), {"code": 60})()
    assert type(oracle.Oracle().classify(OracleError(detail))) is TransientError
