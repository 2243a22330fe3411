"""Shared fixtures: real MariaDB, PostgreSQL, Redis and SQLite, and the recorded FreeSWITCH events.

Every test that writes gets a table (or Redis key) of its own, dropped afterwards, so tests can run
against the machine's shared servers without seeing each other's rows.
"""

from __future__ import annotations

import copy
import glob
import os
import uuid as uuidlib
from typing import Any, Callable, Iterator

import pytest

from fs_cdr.channel import decode_event
from fs_cdr.config import CdrConfig, Paths, parse_config
from fs_cdr.engine import Engine

HERE = os.path.dirname(os.path.abspath(__file__))
EVENTS_DIR = os.path.join(HERE, "events")
MARIADB = {"host": os.environ.get("FS_CDR_TEST_MYSQL_HOST", "127.0.0.1"), "port": 3306, "database": "test"}
POSTGRES = {"host": os.environ.get("FS_CDR_TEST_PG_HOST", "127.0.0.1"), "port": 5432, "database": "test"}
REDIS = {"host": "127.0.0.1", "port": 6379}

SEED_FIELDS = [
    "rtp_last_audio_codec_string",
    "number:billsec",
    "number:duration",
    "record_filename",
    "jsipid:sip_h_X-jssipid",
]


def scenario_events(name: str) -> list[dict[str, Any]]:
    with open(os.path.join(EVENTS_DIR, f"{name}.jsonl"), "rb") as handle:
        return [decode_event(line) for line in handle if line.strip()]


def cjson_string(raw: bytes) -> bytes:
    """FreeSWITCH's cJSON ``print_string_ptr``: escapes ``"``, ``\\`` and bytes below 0x20, copies
    every other byte (so bytes that are not UTF-8 reach the JSON text as they are)."""
    out = bytearray(b'"')
    for byte in raw:
        if byte in b'"\\':
            out += b"\\" + bytes([byte])
        elif byte < 0x20:
            out += {0x08: b"\\b", 0x0C: b"\\f", 0x0A: b"\\n", 0x0D: b"\\r", 0x09: b"\\t"}.get(byte, b"\\u%04x" % byte)
        else:
            out.append(byte)
    return bytes(out + b'"')


def cjson_object(headers: list[tuple[bytes, bytes]]) -> bytes:
    """``Event.serialize('json')``: cJSON_PrintUnformatted of the event's headers."""
    return b"{" + b",".join(cjson_string(name) + b":" + cjson_string(value) for name, value in headers) + b"}"


def hangups(name: str) -> list[dict[str, Any]]:
    return [event for event in scenario_events(name) if event["Event-Name"] == "CHANNEL_HANGUP_COMPLETE"]


#: Rows each recorded scenario must produce (live_* were recorded by tools/record_scenarios.py; the
#: test phone's own leg and the far end of the test carrier carry fs_cdr_skip=true).
EXPECTED_ROWS = {
    "a_single_null": 1,
    "b_bridge_null": 2,
    "b_bridge_to_loopback": 4,
    "c_bridge_noanswer": 3,
    "c_busy_loopback": 2,
    "c_noanswer_null": 1,
    "live_extension_to_extension": 2,
    "live_outbound_gateway": 2,
    "live_ivr_no_transfer": 1,
    "live_queue_acd": 2,
    "live_dialer_answered": 1,
    "live_dialer_unanswered": 1,
    "live_transfer": 2,
    "live_gateway_busy": 2,
    # 3 calls of a 2,000-call burst whose a-leg's CHANNEL_HANGUP came after its CHANNEL_HANGUP_COMPLETE
    "live_late_hangup": 6,
    # tools/record_call_center.py (docs/call-center.md), where FreeSWITCH had the modules they need
    "cc_ring_group": 4,
    "cc_hunt": 3,
    "cc_caller_cancel": 2,
    "cc_blind_transfer": 3,
    "cc_attended_transfer": 3,
    "cc_queue_answered": 2,
    "cc_queue_abandoned": 1,
    "cc_voicemail": 2,
    "cc_declined": 2,
    "cc_unknown_number": 2,
}
SCENARIOS = sorted(os.path.basename(path)[: -len(".jsonl")] for path in glob.glob(os.path.join(EVENTS_DIR, "*.jsonl")))
TOTAL_ROWS = sum(count for name, count in EXPECTED_ROWS.items() if name in SCENARIOS)


@pytest.fixture
def table_name() -> str:
    return "cdr_t_" + uuidlib.uuid4().hex[:12]


def database_entry(kind: str, table: str, tmp_path: Any) -> dict[str, Any]:
    if kind == "sqlite":
        return {"dbtype": "sqlite", "connectionstring": str(tmp_path / "cdr.sqlite"), "table": table}
    if kind == "mysql":
        return {
            "dbtype": "mysql",
            "connectionstring": f"{MARIADB['host']},{MARIADB['port']}@{MARIADB['database']}",
            "username": "root",
            "password": "",
            "table": table,
        }
    if kind == "postgresql":
        return {
            "dbtype": "pgsql",
            "connectionstring": f"postgresql://postgres@{POSTGRES['host']}:{POSTGRES['port']}/{POSTGRES['database']}",
            "table": table,
        }
    raise ValueError(kind)


def connect(kind: str, tmp_path: Any) -> Any:
    """A plain DB-API connection to read back what fs_cdr wrote."""
    if kind == "sqlite":
        import sqlite3

        return sqlite3.connect(str(tmp_path / "cdr.sqlite"))
    if kind == "mysql":
        import MySQLdb

        return MySQLdb.connect(host=MARIADB["host"], port=MARIADB["port"], user="root", db="test", charset="utf8mb4")
    import psycopg

    return psycopg.connect(host=POSTGRES["host"], port=POSTGRES["port"], dbname="test", user="postgres", autocommit=True)


def run_sql(kind: str, tmp_path: Any, statement: str) -> None:
    """One statement on a connection of its own, committed."""
    connection = connect(kind, tmp_path)
    try:
        cursor = connection.cursor()
        cursor.execute(statement)
        connection.commit()
    finally:
        connection.close()


def drop_table(kind: str, tmp_path: Any, table: str) -> None:
    if kind != "sqlite":
        run_sql(kind, tmp_path, f"DROP TABLE IF EXISTS {table}")


def create_strict_mysql_table(tmp_path: Any, table: str, extra_columns: str) -> None:
    """The standard columns plus ``extra_columns`` in a MariaDB table (the server's strict sql_mode
    refuses a value too long for its column instead of cutting it)."""
    from fs_cdr.schema import STANDARD_COLUMNS
    from fs_cdr.sinks.mysql import MySQL

    dialect = MySQL()
    connection = connect("mysql", tmp_path)
    cursor = connection.cursor()
    columns = ", ".join(f"`{column.name}` {dialect.types[column.kind]}" for column in STANDARD_COLUMNS)
    cursor.execute(f"CREATE TABLE {table} ({columns}, {extra_columns}, PRIMARY KEY (`uuid`))")
    cursor.execute("SELECT @@sql_mode")
    assert "STRICT_TRANS_TABLES" in cursor.fetchone()[0]
    connection.close()


def assert_a_missing_column_is_named(entry: dict[str, Any], tmp_path: Any) -> None:
    """Create ``entry``'s table, then configure a field it has no column for: the check of the
    configuration refuses it, naming the column and the ALTER ... ADD to run."""
    from fs_cdr.engine import probe_config
    from fs_cdr.errors import ConfigError

    probe_config(make_config({"cdr": {"database": entry}}, tmp_path))  # creates the table
    with pytest.raises(ConfigError) as caught:
        probe_config(make_config({"cdr": {"database": entry, "fields": ["queue_name"]}}, tmp_path))
    assert "queue_name" in str(caught.value) and "ADD" in str(caught.value)


def make_config(document: dict[str, Any], tmp_path: Any) -> CdrConfig:
    document = copy.deepcopy(document)
    document["cdr"].setdefault("spool_dir", str(tmp_path / "spool"))
    return parse_config(document, Paths(conf_dir=str(tmp_path), db_dir=str(tmp_path), storage_dir=str(tmp_path)))


@pytest.fixture
def engines() -> Iterator[Callable[[CdrConfig], Engine]]:
    """Start engines; every one is stopped at the end of the test."""
    started: list[Engine] = []

    def start(config: CdrConfig) -> Engine:
        engine = Engine(config).start()
        started.append(engine)
        return engine

    yield start
    for engine in started:
        engine.stop(timeout_s=2.0)


@pytest.fixture(params=["sqlite", "mysql", "postgresql"])
def sql_kind(request: Any, table_name: str, tmp_path: Any) -> Iterator[str]:
    yield request.param
    drop_table(request.param, tmp_path, table_name)


def rows(kind: str, tmp_path: Any, table: str, columns: str = "*") -> list[dict[str, Any]]:
    """The table's rows; with ``*``, without MySQL's ``id`` key, which numbers rows in the order they
    were inserted: two tables holding the same records compare equal."""
    connection = connect(kind, tmp_path)
    try:
        cursor = connection.cursor()
        cursor.execute(f"SELECT {columns} FROM {table}")
        names = [description[0] for description in cursor.description]
        found = [dict(zip(names, row)) for row in cursor.fetchall()]
        if columns == "*":
            for row in found:
                row.pop("id", None)
        return found
    finally:
        connection.close()
