"""fs_cdr on a growing table: write rate and the operators' queries at 0, 1 and 5 million rows.

    .venv/bin/python bench/growth.py [--servers mysql,postgresql] [--sizes 0,1000000,5000000]
                                     [--records 20000] [--recommended] [--index-costs]

Not part of the test suite or of ``make bench``: it writes tens of gigabytes. For each server in turn
(one after the other, each table dropped before the next server's is filled):

1. the table ``cdr_growth_<server>`` is created as fs_cdr creates it (keys and indexes included);
2. at each size, fs_cdr's end-to-end rate (recorded hangup events as JSON text -> the real engine ->
   committed rows, 2 writers, sinks in worker processes: the defaults) is measured, as a ratio to its
   rate into the empty table in the same run; then the five operator queries are timed (each three
   times: the first from a cold start after the fill, the median printed) and the disk the table
   takes per million rows is printed;
3. between sizes the table is filled in SQL (a server generates the rows itself, much faster than any
   client could send them) with rows shaped like fs_cdr's: two legs a call sharing ``call_uuid``,
   500 accounts (some far busier than others), national and international destinations, 80 %
   answered, talk times spread as real ones are, a year of calls at an even rate, ``details`` of
   3.5 KB of JSON taken from a recorded FreeSWITCH channel with the per-call values in it. While it
   fills, the secondary indexes are dropped and built again after (as a sorted build: much faster
   than keeping them up row by row, and the index is what a year of inserts would have made, only
   denser);
4. with ``--recommended`` the largest size is measured again with the server settings the README
   recommends, set at runtime and restored after; ``--index-costs`` then drops the secondary
   indexes one at a time, measuring the rate after each drop: what each one costs.

Free disk space is checked before each fill; the benchmark refuses, saying how much it needs, rather
than fill the disk. The table is dropped at the end, also when a step fails.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid as uuidlib
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from run import config_for, memory_kept, release_gil

from fs_cdr.channel import decode_event, dumps
from fs_cdr.engine import Engine
from fs_cdr.schema import ADDED_COLUMNS, INDEXES, table_columns
from fs_cdr.sinks.mysql import MySQL
from fs_cdr.sinks.partitions import PERIODS, Partitions
from fs_cdr.sinks.postgres import PostgreSQL
from fs_cdr.sinks.sql import Dialect, SqlSink, dialect_for

TEMPLATE_FILE = ROOT / "tests/events/b_bridge_null.jsonl"
#: One year of calls at an even rate, ending now: the time of a row follows its number.
YEAR_S = 365 * 86400
#: When the timeline starts: a year before the benchmark.
T0 = time.time() - YEAR_S
#: Rows the timeline is laid out for: at this size the table holds one year.
TIMELINE_ROWS = 5_000_000
#: Bytes a row takes on disk, at most, as measured here (docs/performance.md), for the disk check.
ROW_BYTES = {"mysql": 6500, "postgresql": 4500}
#: Space left free on the disk, whatever the benchmark needs.
KEEP_FREE_BYTES = 15 * 2**30
DETAILS_BYTES = 3500
FILL_CHUNK = int(os.environ.get("FS_CDR_GROWTH_CHUNK", "100000"))
DATADIRS = {"mysql": "SELECT @@datadir", "postgresql": "SHOW data_directory"}
#: The settings the README recommends for a CDR server (docs/performance.md), those that can be set
#: at runtime: (setting, value), restored to what the server had after.
RECOMMENDED = {
    "mysql": [("innodb_buffer_pool_size", str(4 * 2**30)), ("innodb_log_file_size", str(2**30))],
    "postgresql": [("max_wal_size", "'4GB'"), ("checkpoint_timeout", "'15min'")],
}


def templates() -> tuple[dict[str, Any], dict[str, Any]]:
    """The recorded a-leg and b-leg hangups, with variables added up to ``details`` of 3.5 KB."""
    events = [decode_event(line) for line in TEMPLATE_FILE.read_bytes().splitlines()
              if b'"CHANNEL_HANGUP_COMPLETE"' in line]
    b_leg, a_leg = events[0], events[1]
    for event in (a_leg, b_leg):
        index = 0
        while len(dumps({key: value for key, value in event.items() if key.startswith("variable_")})) < DETAILS_BYTES:
            event[f"variable_sip_h_X-Growth-{index}"] = uuidlib.UUID(int=index).hex
            index += 1
    return a_leg, b_leg


def growth_stream(count: int) -> list[bytes]:
    """``count`` hangup events as FreeSWITCH serializes them, two legs a call, each call with its own
    uuids (every place the recorded ones appear), account and destination."""
    a_leg, b_leg = templates()
    a_text, b_text = dumps(a_leg), dumps(b_leg)
    old_a, old_b = a_leg["Unique-ID"], b_leg["Unique-ID"]
    events = []
    for number in range(count // 2):
        new_a, new_b = str(uuidlib.uuid4()), str(uuidlib.uuid4())
        account = str(1000 + (number * 7919) % 500)
        destination = f"0049{('30', '40', '89', '69')[number % 4]}{number % 10_000_000:07d}"
        for text in (a_text, b_text):
            event = json.loads(text.replace(old_a, new_a).replace(old_b, new_b))
            event["variable_account"] = account
            event["Caller-Destination-Number"] = event["variable_destination_number"] = destination
            events.append(dumps(event).encode())
    return events


# -- rows generated by the server -------------------------------------------------------------------

def fill_statement(kind: str, table: str, names: list[str], first: int, count: int) -> str:
    """INSERT ... SELECT of rows ``first`` to ``first + count - 1`` of the timeline, in ``kind``'s SQL.
    The one parameter is the static part of ``details``."""
    mysql = kind == "mysql"
    if mysql:
        source = f"seq_{first}_to_{first + count - 1}"
        rows = f"SELECT seq AS r FROM {source}"

        def frac(i: int) -> str:
            return f"(CONV(SUBSTR(h, {i}, 6), 16, 10) / 16777216)"

        def stamp(us: str) -> str:
            return f"FROM_UNIXTIME({us} DIV 1000 / 1000)"

        integer, text, param = "SIGNED", "CHAR", "%s"
    else:
        rows = f"SELECT r FROM generate_series({first}::bigint, {first + count - 1}::bigint) AS r"

        def frac(i: int) -> str:
            return f"(('x' || substr(h, {i}, 6))::bit(24)::int / 16777216.0)"

        def stamp(us: str) -> str:
            return f"(to_timestamp(({us}) / 1000 / 1000.0) AT TIME ZONE 'UTC')"

        integer, text, param = "BIGINT", "TEXT", "CAST(%s AS TEXT)"

    def uuid_of(h: str) -> str:
        return (f"CONCAT(SUBSTR({h}, 1, 8), '-', SUBSTR({h}, 9, 4), '-4', SUBSTR({h}, 14, 3), '-a', "
                f"SUBSTR({h}, 18, 3), '-', SUBSTR({h}, 21, 12))")

    t0_us = int(T0 * 1e6)
    call_us = int(2 * YEAR_S * 1e6 / TIMELINE_ROWS)
    causes = ("NO_ANSWER", "NO_ANSWER", "USER_BUSY", "ORIGINATOR_CANCEL", "ORIGINATOR_CANCEL", "CALL_REJECTED",
              "NO_ROUTE_DESTINATION", "UNALLOCATED_NUMBER", "RECOVERY_ON_TIMER_EXPIRE", "NORMAL_TEMPORARY_FAILURE")
    cause = "CASE FLOOR(x5 * 10) " + " ".join(f"WHEN {i} THEN '{name}'" for i, name in enumerate(causes)) + " END"
    areas = ("30", "40", "89", "69", "221", "211", "711", "351", "341", "511", "911", "621")
    countries = ("0044", "0033", "0039", "0034", "0043", "0041", "0031", "0048", "001", "0090")
    area = "CASE FLOOR(x7 * 12) " + " ".join(f"WHEN {i} THEN '{code}'" for i, code in enumerate(areas)) + " END"
    country = "CASE FLOOR(x7 * 10) " + " ".join(f"WHEN {i} THEN '{code}'" for i, code in enumerate(countries)) + " END"
    # level 1: the row, its call, its leg and the call's hash (both legs share it)
    level1 = (f"SELECT r, r DIV 2 AS c, MOD(r, 2) AS b, MD5(CONCAT('growth-', r DIV 2)) AS h, "
              f"MD5(CONCAT('leg-', r)) AS hl FROM ({rows}) AS n")
    # level 2: the call's random draws and times
    level2 = (f"SELECT r, c, b, h, hl, {frac(1)} AS x1, {frac(7)} AS x2, {frac(13)} AS x3, {frac(19)} AS x4, "
              f"{frac(25)} AS x5, {frac(2)} AS x6, {frac(8)} AS x7, {frac(14)} AS x8, "
              f"{t0_us} + c * {call_us} + b * 20000 AS start_us FROM ({level1}) AS l1")
    answered = "x1 < 0.8"
    ring_us = "CAST((2 + x2 * 18) * 1000000 AS " + integer + ")"
    talk_us = "CAST(LEAST(-LN(1 - x3 * 0.999) * 180, 7200) * 1000000 AS " + integer + ")"
    level3 = (f"SELECT l2.*, {uuid_of('h')} AS a_uuid, {uuid_of('hl')} AS leg_uuid, "
              f"CASE WHEN {answered} THEN start_us + {ring_us} ELSE 0 END AS answer_us, "
              f"CASE WHEN {answered} THEN start_us + {ring_us} + {talk_us} ELSE start_us + {ring_us} END AS end_us, "
              f"CAST(1000 + FLOOR(POWER(x4, 3) * 500) AS {integer}) AS extension, "
              f"CASE WHEN x6 < 0.45 THEN CONCAT('0', {area}, LPAD(CAST(FLOOR(x8 * 10000000) AS {text}), 7, '0')) "
              f"WHEN x6 < 0.6 THEN CONCAT({country}, LPAD(CAST(FLOOR(x8 * 1000000000) AS {text}), 9, '0')) "
              f"ELSE CAST(1000 + FLOOR(x8 * 500) AS {text}) END AS destination, "
              f"CASE WHEN {answered} THEN 'NORMAL_CLEARING' ELSE {cause} END AS cause FROM ({level2}) AS l2")
    if not mysql:
        level3 = level3.replace(" DIV ", " / ")
    uuid = "CASE WHEN b = 0 THEN a_uuid ELSE leg_uuid END"
    values = {
        "uuid": uuid,
        "leg": "CASE WHEN b = 0 THEN 'a' ELSE 'b' END",
        "call_uuid": "a_uuid",
        "direction": "CASE WHEN b = 0 THEN 'inbound' ELSE 'outbound' END",
        "account": "CASE WHEN b = 1 AND x6 < 0.6 THEN CONCAT('gw', FLOOR(x7 * 4)) "
                   "WHEN b = 1 THEN destination ELSE CAST(extension AS CHAR(8)) END",
        "caller_id_name": "CONCAT('Extension ', extension)",
        "caller_id_number": "CAST(extension AS CHAR(8))",
        "callee_id_number": "destination",
        "destination_number": "destination",
        "context": "'default'",
        "channel_name": "CONCAT('sofia/internal/', extension, '@pbx.example.com')",
        "originator": "CASE WHEN b = 1 THEN a_uuid END",
        "bridge_uuid": f"CASE WHEN {answered} THEN CASE WHEN b = 0 THEN leg_uuid ELSE a_uuid END END",
        "call_source": "'dialplan'",
        "source_name": "CAST(extension AS CHAR(8))",
        "source_number": "CAST(extension AS CHAR(8))",
        "dial_number": "destination",
        "cti_line_group_name": "CASE WHEN x6 < 0.6 THEN 'trunk' END",
        "start_epoch": "start_us DIV 1000000",
        "answer_epoch": "CASE WHEN answer_us > 0 THEN answer_us DIV 1000000 END",
        "end_epoch": "end_us DIV 1000000",
        "duration": "end_us DIV 1000000 - start_us DIV 1000000",
        "billsec": "CASE WHEN answer_us > 0 THEN end_us DIV 1000000 - answer_us DIV 1000000 ELSE 0 END",
        "billmsec": "CASE WHEN answer_us > 0 THEN (end_us - answer_us) DIV 1000 ELSE 0 END",
        "start_stamp": stamp("start_us"),
        "answer_stamp": f"CASE WHEN answer_us > 0 THEN {stamp('answer_us')} END",
        "end_stamp": stamp("end_us"),
        "hangup_cause": "cause",
        "switchname": "'pbx1'",
        "core_uuid": "'f07f70a3-ffc9-4781-b008-6a5672375dcb'",
        "call_state": "'completed'",
        "event_seq": "r",
        "rtp_last_audio_codec_string": f"CASE WHEN {answered} THEN 'PCMA' END",
        "record_filename": f"CASE WHEN {answered} AND x2 < 0.1 THEN CONCAT('/var/lib/freeswitch/recordings/', "
                           f"{uuid}, '.wav') END",
        "jsipid": "SUBSTR(hl, 1, 16)",
        "queue_name": "CASE WHEN x5 < 0.2 THEN 'support' END",
        # the recorded channel's variables, with the values that differ from call to call
        "details": ("CONCAT('{\"uuid\":\"', " + uuid + ", '\",\"call_uuid\":\"', a_uuid, '\",\"sip_call_id\":\"', h, "
                    "'@pbx\",\"sip_from_tag\":\"', SUBSTR(hl, 1, 12), '\",\"sip_to_tag\":\"', SUBSTR(hl, 13, 12), "
                    "'\",\"destination_number\":\"', destination, '\",\"start_uepoch\":\"', start_us, "
                    "'\",\"answer_uepoch\":\"', answer_us, '\",\"end_uepoch\":\"', end_us, "
                    "'\",\"hangup_cause\":\"', cause, '\",\"rtp_local_sdp_str\":\"', MD5(hl), MD5(h), MD5(r), "
                    "'\",', " + param + ")"),
    }
    if not mysql:
        values = {name: value.replace(" DIV ", " / ").replace("AS CHAR(8)", "AS TEXT")
                  for name, value in values.items()}
        values["details"] = "CAST(" + values["details"].replace("MD5(r)", "MD5(r::text)") + " AS JSON)"
    quote = (MySQL() if mysql else PostgreSQL()).quote
    return (f"INSERT INTO {quote(table)} ({', '.join(quote(name) for name in names)}) "
            f"SELECT {', '.join(f'{values[name]} AS {quote(name)}' for name in names)} FROM ({level3}) AS l3")


def static_details() -> str:
    """The rest of a row's ``details`` (after its per-call values): the recorded a-leg's variables."""
    a_leg, _ = templates()
    variables = {key[len("variable_"):]: value for key, value in a_leg.items() if key.startswith("variable_")}
    for name in ("uuid", "call_uuid", "sip_call_id", "sip_from_tag", "sip_to_tag", "destination_number",
                 "start_uepoch", "answer_uepoch", "end_uepoch", "hangup_cause", "rtp_local_sdp_str"):
        variables.pop(name, None)
    index = 0
    while len(dumps(variables)) < DETAILS_BYTES - 480:  # the per-call values take about 480 bytes
        variables[f"sip_h_X-Growth-Static-{index}"] = uuidlib.UUID(int=index).hex
        index += 1
    return dumps(variables)[1:]


# -- the server's side --------------------------------------------------------------------------------

class Server:
    """One database server and the benchmark's table on it."""

    def __init__(self, kind: str, directory: Path, table: str, partition: str = "") -> None:
        """``partition``: "day", "week", "month" or "" (not partitioned)."""
        self.kind, self.table, self.partitioned, self.period = kind, table, bool(partition), partition
        extra: dict[str, Any] = {"partition": partition} if partition else {}
        self.config = config_for(kind, table, directory, True, **extra)
        self.database = self.config.databases[0]
        dialect = dialect_for(self.database.dbtype, self.database)
        assert dialect is not None
        self.dialect: Dialect = dialect
        self.columns = table_columns(self.config)
        self.connection = self.dialect.connect(self.database, 3600.0)
        #: rows in the table, and of them those the benchmark generated (which set the timeline)
        self.rows = self.filled = 0
        self.seeded = False
        if kind == "mysql":
            self.run("SET SESSION time_zone = '+00:00'")
            self.run("SET SESSION net_read_timeout = 3600, net_write_timeout = 3600")
        else:
            self.run("SET statement_timeout = 0")
            self.run("SET maintenance_work_mem = '1GB'")

    def run(self, sql: str, parameters: Any = None) -> list[tuple[Any, ...]]:
        cursor = self.connection.cursor()
        try:
            cursor.execute(sql, parameters) if parameters is not None else cursor.execute(sql)
            found = list(cursor.fetchall()) if cursor.description else []
        except Exception:
            self.connection.rollback()
            raise
        finally:
            cursor.close()
        self.connection.commit()
        return found

    def create(self) -> None:
        """The table as fs_cdr creates it; partitioned, with a partition for each period of the
        timeline (as a table partitioned from its first day would have by now)."""
        self.drop()
        partitions = None
        if self.partitioned:
            start = datetime.datetime(1970, 1, 1) + datetime.timedelta(seconds=T0)
            partitions = Partitions(self.dialect, self.table, clock=lambda: start, period=self.period)
        for statement in self.dialect.schema_statements(self.table, self.columns, partitions):
            self.run(statement)
        if partitions is not None:
            Partitions(self.dialect, self.table, period=self.period).maintain(self.connection)

    def drop(self) -> None:
        self.run(f"DROP TABLE IF EXISTS {self.dialect.quote(self.table)}")
        self.run(f"DROP TABLE IF EXISTS {self.dialect.quote(self.table + '_seed')}")

    def secondary(self) -> tuple[list[str], list[str]]:
        """The statements that drop the uuid key and the indexes, and those that build them again."""
        quote, table = self.dialect.quote, self.dialect.quote(self.table)
        indexes = self.dialect.indexes_for(self.columns)
        key = quote("uuid") + (f", {quote('start_stamp')}" if self.partitioned else "")
        if self.kind == "mysql":
            drops = [f"ALTER TABLE {table} DROP INDEX {quote('uuid')}, "
                     + ", ".join(f"DROP INDEX {quote(index.name(self.table))}" for index in indexes)]
            builds = [f"ALTER TABLE {table} ADD UNIQUE {quote('uuid')} ({key}), "
                      + ", ".join(f"ADD INDEX {quote(index.name(self.table))} "
                                  f"({', '.join(quote(name) for name in index.columns)})" for index in indexes)]
        else:
            drops = [f"ALTER TABLE {table} DROP CONSTRAINT {quote(self.table + '_pkey')}"]
            drops += [f"DROP INDEX {quote(index.name(self.table))}" for index in indexes]
            builds = [f"ALTER TABLE {table} ADD PRIMARY KEY ({key})"]
            builds += [self.dialect.create_index(self.table, index) for index in indexes]
        return drops, builds

    def free_bytes(self) -> int:
        directory = str(self.run(DATADIRS[self.kind])[0][0])
        return shutil.disk_usage(directory).free

    def fill(self, target: int, indexes: bool = True) -> float:
        """Rows up to ``target``; the seconds it took."""
        add = target - self.rows
        need = add * ROW_BYTES[self.kind]
        free = self.free_bytes()
        if free - need < KEEP_FREE_BYTES:
            raise SystemExit(
                f"refusing to fill {self.kind}'s table to {target:,} rows: that needs about {need / 2**30:.0f} GB "
                f"and {KEEP_FREE_BYTES / 2**30:.0f} GB must stay free, but the disk has {free / 2**30:.0f} GB free")
        started = time.perf_counter()
        drops, builds = self.secondary() if indexes else ([], [])
        for statement in drops:
            self.run(statement)
        quote, table = self.dialect.quote, self.dialect.quote(self.table)
        names = [column.name for column in self.columns]
        seed = quote(self.table + "_seed")
        if not self.seeded:
            self.run(f"DROP TABLE IF EXISTS {seed}")
            statement = fill_statement(self.kind, self.table, names, 0, FILL_CHUNK)
            self.run(f"CREATE TABLE {seed} AS " + statement[statement.index("SELECT"):], (static_details(),))
            self.seeded = True
        while self.rows < target:
            self.run(self.copy_statement(seed, names, self.filled // FILL_CHUNK))
            self.filled += FILL_CHUNK
            self.rows += FILL_CHUNK
            print(f"\r  {self.kind}: {self.rows:,} rows ({time.perf_counter() - started:.0f} s)", end="",
                  file=sys.stderr, flush=True)
        print(file=sys.stderr)
        built = time.perf_counter()
        for statement in builds:
            self.run(statement)
        print(f"  ({self.kind}: keys and indexes built in {time.perf_counter() - built:.0f} s, "
              f"{(time.perf_counter() - built) / (self.rows / 1e6):.0f} s per million rows)", flush=True)
        if self.kind == "mysql":
            self.run(f"ANALYZE TABLE {table}")
        else:
            self.connection.autocommit = True
            self.run(f"VACUUM ANALYZE {table}")
            self.connection.autocommit = False
        return time.perf_counter() - started

    def copy_statement(self, seed: str, names: list[str], chunk: int) -> str:
        """The seed's rows as the timeline's chunk ``chunk``: new uuids (the same for both legs of a
        call), times moved on by the chunk's span."""
        quote = self.dialect.quote
        span_s = FILL_CHUNK * YEAR_S / TIMELINE_ROWS
        mysql = self.kind == "mysql"

        def moved(name: str) -> str:
            if name.endswith("_stamp"):
                return (f"{quote(name)} + INTERVAL {span_s * chunk:.3f} SECOND" if mysql
                        else f"{quote(name)} + {span_s * chunk:.3f} * INTERVAL '1 second'")
            return f"{quote(name)} + {int(span_s * chunk)}"

        def renamed(name: str) -> str:
            return f"CONCAT(SUBSTR(MD5(CONCAT({quote(name)}, '-{chunk}')), 1, 8), SUBSTR({quote(name)}, 9))"

        values = []
        for name in names:
            if name in ("uuid", "call_uuid", "originator", "bridge_uuid"):
                values.append(renamed(name))
            elif name in ("start_epoch", "answer_epoch", "end_epoch", "start_stamp", "answer_stamp", "end_stamp"):
                values.append(moved(name))
            elif name == "event_seq":
                values.append(f"{quote(name)} + {chunk * FILL_CHUNK}")
            else:
                values.append(quote(name))
        return (f"INSERT INTO {quote(self.table)} ({', '.join(quote(name) for name in names)}) "
                f"SELECT {', '.join(values)} FROM {seed}")

    def page_reads(self) -> int:
        """Pages the server has read from disk so far (MariaDB: Innodb_buffer_pool_reads, the reads
        the buffer pool missed; PostgreSQL: blks_read of this database, which the kernel's page
        cache may still have served)."""
        if self.kind == "mysql":
            return int(self.run("SHOW GLOBAL STATUS LIKE 'Innodb_buffer_pool_reads'")[0][1])
        self.run("SELECT pg_stat_clear_snapshot()")
        return int(self.run("SELECT blks_read FROM pg_stat_database WHERE datname = current_database()")[0][0])

    def count(self) -> int:
        return int(self.run(f"SELECT count(*) FROM {self.dialect.quote(self.table)}")[0][0])

    def disk_bytes(self) -> int:
        if self.kind == "mysql":  # a partitioned table's partitions are tablespaces named table#P#p202612
            found = self.run("SELECT sum(allocated_size) FROM information_schema.innodb_sys_tablespaces "
                             "WHERE name = %s OR name LIKE %s", (f"{self.database.database}/{self.table}",
                                                                 f"{self.database.database}/{self.table}#P#%"))
            return int(found[0][0] or 0)
        return int(self.run("SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c WHERE c.relname = %s OR "
                            "c.oid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = %s::regclass)",
                            (self.table, self.table))[0][0] or 0)

    def window(self) -> tuple[str, str, str]:
        """The start of the last 30 days and of the last 7 days of the filled rows (of a month of the
        timeline when the table is empty), and their end."""
        end = T0 + max(self.filled, TIMELINE_ROWS // 12) * YEAR_S / TIMELINE_ROWS

        def text(epoch: float) -> str:
            return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch))

        return text(end - 30 * 86400), text(end - 7 * 86400), text(end)

    def queries(self) -> dict[str, tuple[str, tuple[Any, ...]]]:
        """The operators' queries (a)-(e), as an operator would write them."""
        table = self.dialect.quote(self.table)
        since, week, until = self.window()
        # a day before the newest filled call (asking the table for its newest would warm what e reads)
        yesterday = (datetime.datetime.strptime(until, "%Y-%m-%d %H:%M:%S")
                     - datetime.timedelta(days=1)).strftime("%Y-%m-%d %H:%M:%S")
        day = "DATE(start_stamp)" if self.kind == "mysql" else "start_stamp::date"
        some = self.run(f"SELECT uuid, call_uuid FROM {table} WHERE start_stamp >= %s ORDER BY start_stamp LIMIT 1",
                        (week,))
        uuid, call = some[0] if some else ("none", "none")
        found = {
            "a: one account's calls in a week": (
                (f"SELECT uuid, start_stamp, caller_id_number, destination_number, billsec FROM {table} "
                 "WHERE account = %s AND start_stamp >= %s AND start_stamp < %s ORDER BY start_stamp"),
                ("1010", week, until)),
            "b: a call by uuid": (f"SELECT * FROM {table} WHERE uuid = %s", (uuid,)),
            "b: all legs of a call": (f"SELECT * FROM {table} WHERE call_uuid = %s", (call,)),
            "c: calls to a prefix in a month": (
                (f"SELECT count(*), sum(billsec) FROM {table} WHERE destination_number LIKE %s "
                 "AND start_stamp >= %s AND start_stamp < %s"), ("0044%", since, until)),
            "d: per day and cause in a month": (
                (f"SELECT {day} AS day, hangup_cause, count(*) FROM {table} "
                 f"WHERE start_stamp >= %s AND start_stamp < %s GROUP BY {day}, hangup_cause"), (since, until)),
            # the latest calls of the last day first: on a partitioned table it reads one or two partitions
            # (pruned by start_stamp), where the unbounded query reads the newest end of every one
            "e: the latest 100 calls of the last day": (
                (f"SELECT uuid, start_stamp, caller_id_number, destination_number, billsec, hangup_cause FROM {table} "
                 "WHERE start_stamp >= %s ORDER BY start_stamp DESC LIMIT 100"), (yesterday,)),
            "e: the latest 100 calls": (
                (f"SELECT uuid, start_stamp, caller_id_number, destination_number, billsec, hangup_cause FROM {table} "
                 "ORDER BY start_stamp DESC LIMIT 100"), ()),
        }
        if self.kind == "mysql":  # MariaDB may scan a month's partitions whole for d: the index, forced
            start = self.dialect.quote(next(index.name(self.table) for index in INDEXES if index.suffix == "start"))
            found["d, FORCE INDEX (the start index)"] = (
                (f"SELECT {day} AS day, hangup_cause, count(*) FROM {table} FORCE INDEX ({start}) "
                 f"WHERE start_stamp >= %s AND start_stamp < %s GROUP BY {day}, hangup_cause"), (since, until))
        return found

    def time_queries(self) -> dict[str, tuple[float, float, int]]:
        """Per query: the first run's ms, the median of three, and the rows it returned."""
        timed = {}
        for name, (sql, parameters) in self.queries().items():
            times, found = [], 0
            for _ in range(3):
                started = time.perf_counter()
                found = len(self.run(sql, parameters if parameters else None))
                times.append((time.perf_counter() - started) * 1000)
            timed[name] = (times[0], statistics.median(times), found)
        return timed

    def warm(self) -> None:
        """Read every secondary index once, as a server that has been running a while has them in its
        memory (MariaDB's buffer pool, PostgreSQL's shared buffers and the page cache)."""
        quote, table = self.dialect.quote, self.dialect.quote(self.table)
        firsts = [("uuid", "uuid")] + [(index.name(self.table), index.columns[0])
                                       for index in self.dialect.indexes_for(self.columns)]
        for name, first in firsts:
            column = quote(first)
            if self.kind == "mysql":
                self.run(f"SELECT count({column}) FROM {table} FORCE INDEX ({quote(name)})")
            else:
                self.run("SET enable_seqscan = off")
                self.run(f"SELECT count(*) FROM {table} WHERE {column} IS NOT NULL")
                self.run("SET enable_seqscan = on")

    def settings(self, wanted: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """Set these at runtime; returns what they were."""
        before = []
        for name, value in wanted:
            if self.kind == "mysql":
                before.append((name, str(self.run(f"SELECT @@GLOBAL.{name}")[0][0])))
                self.run(f"SET GLOBAL {name} = {value}")
            else:
                before.append((name, str(self.run(f"SHOW {name}")[0][0])))
                self.connection.autocommit = True
                self.run(f"ALTER SYSTEM SET {name} = {value}")
                self.run("SELECT pg_reload_conf()")
                self.connection.autocommit = False
        if self.kind == "mysql":
            time.sleep(5)  # the buffer pool resizes in the background
        return before

    def restore(self, before: list[tuple[str, str]]) -> None:
        for name, _value in before:
            if self.kind == "mysql":
                self.run(f"SET GLOBAL {name} = {_value}")
            else:
                self.connection.autocommit = True
                self.run(f"ALTER SYSTEM RESET {name}")
                self.run("SELECT pg_reload_conf()")
                self.connection.autocommit = False

    def close(self) -> None:
        self.connection.close()


def write_rate(server: Server, stream: list[bytes], backlog: int = 2000) -> float:
    """fs_cdr's records/s from JSON text to committed rows, sustained (bench/run.py's loop), into the
    table as it is: the rows stay."""
    engine = Engine(server.config).start()
    lanes = engine.lanes
    time.sleep(0.2)
    started = time.perf_counter()
    for index, text in enumerate(stream):
        if index % 100 == 0:
            while sum(lane.queued() for lane in lanes) > backlog:
                time.sleep(0.001)
        release_gil()
        engine.handle_serialized(text)
    assert engine.flush(1800), engine.status()
    elapsed = time.perf_counter() - started
    status = engine.status()["sinks"][0]
    engine.stop()
    assert status["written"] == len(stream), status
    server.rows += len(stream)
    return len(stream) / elapsed


def measure(server: Server, empty: Server, records: int, label: str, report: Callable[..., None],
            rounds: int = 3, queries: bool = True) -> float:
    """fs_cdr's rate at this size as a ratio to its rate into an empty table, measured in turns
    (empty, this table, empty, this table...: this machine is shared and its speed moves from one
    minute to the next), each side's fastest round counting; then the queries and the disk."""
    rates, empties, reads, empty_reads = [], [], [], []
    for _ in range(rounds):
        empty.create()
        before = empty.page_reads()
        empties.append(write_rate(empty, growth_stream(records)))
        empty_reads.append(empty.page_reads() - before)
        before = server.page_reads()
        rates.append(write_rate(server, growth_stream(records)))
        reads.append(server.page_reads() - before)
    empty.drop()
    rate, empty_rate = max(rates), max(empties)
    label = f"{label} ({' / '.join(f'{each:,.0f}' for each in rates)}; empty {' / '.join(f'{each:,.0f}' for each in empties)})"
    # what the server read from disk while fs_cdr wrote: pages a record, this table / the empty one
    print(f"    (pages read from disk a record while writing: {' / '.join(f'{each / records:.2f}' for each in reads)}; "
          f"empty {' / '.join(f'{each / records:.2f}' for each in empty_reads)})", flush=True)
    rows = server.count()
    disk = server.disk_bytes()
    per_million = f"{disk / 2**30 / (rows / 1e6):.2f} GB" if rows >= 100_000 else "-"
    report(server.kind, label, rows, rate, rate / empty_rate, per_million, server.time_queries() if queries else {})
    return rate


def apply_times(kind: str, directory: Path, rows: int) -> None:
    """``fs-cdr schema --apply`` on a table of the first release of ``rows`` rows: how long what it
    runs takes (columns, indexes online), and how long the rebuild it prints takes, per million rows."""
    server = Server(kind, directory, f"cdr_growth_{kind}_old")
    try:
        server.drop()
        old = [column for column in server.columns if column.name not in ADDED_COLUMNS]
        quote = server.dialect.quote
        lines = [f"  {quote(column.name)} {server.dialect.types[column.kind]}" for column in old]
        server.run(f"CREATE TABLE {quote(server.table)} (\n" + ",\n".join(lines)
                   + f",\n  PRIMARY KEY ({quote('uuid')})\n)" + server.dialect.table_options())
        server.columns = tuple(old)
        server.fill(rows, indexes=False)
        server.columns = table_columns(server.config)
        sink = SqlSink(server.dialect, server.database, server.columns)
        started = time.perf_counter()
        statements, left = sink.apply_schema()
        applied = time.perf_counter() - started
        sink.close()
        print(f"  ({kind}: schema --apply on {server.rows:,} rows of the first release: {len(statements)} statements "
              f"in {applied:.0f} s, {applied / (server.rows / 1e6):.0f} s per million rows)", flush=True)
        for statement in left:
            started = time.perf_counter()
            server.run(statement)
            took = time.perf_counter() - started
            print(f"  ({kind}: the rebuild it prints took {took:.0f} s, {took / (server.rows / 1e6):.0f} s per million "
                  f"rows: {statement})", flush=True)
    finally:
        server.drop()
        server.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", default="mysql,postgresql")
    parser.add_argument("--sizes", default="0,1000000,5000000", help="rows in the table before each measurement")
    parser.add_argument("--records", type=int, default=20000, help="hangups fs_cdr writes at each size")
    parser.add_argument("--recommended", action="store_true", help="the largest size again, recommended settings")
    parser.add_argument("--index-costs", action="store_true", help="then drop each index, measuring the rate")
    parser.add_argument("--partition", nargs="?", const="month", default="", choices=PERIODS,
                        help='the table with "partition": PERIOD (day, week or month; alone: month)')
    parser.add_argument("--apply-rows", type=int, default=0,
                        help="also time schema --apply on a first-release table of this many rows")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    directory = Path(tempfile.mkdtemp(prefix="fs_cdr_growth-"))
    print(f"fs_cdr growth benchmark {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC on {platform.node()}: "
          f"{os.cpu_count()} cores; {args.records} hangups of {DETAILS_BYTES / 1000:.1f} KB details at each size; "
          f"command: {' '.join(sys.argv)}")
    header = (f"{'server':<11}{'settings (rounds; empty table rounds)':<60}{'rows':>11}{'rec/s':>9}{'ratio':>7}"
              f"{'disk/M rows':>12}")

    def report(kind: str, label: str, rows: int, rate: float, ratio: float, per_million: str,
               queries: dict[str, tuple[float, float, int]]) -> None:
        load = os.getloadavg()[0]  # the machine is shared: how busy it was while this was measured
        print(f"{kind:<11}{label:<60}{rows:>11,}{rate:>9,.0f}{ratio:>7.2f}{per_million:>12}   load {load:.1f}",
              flush=True)
        for name, (first, median, found) in queries.items():
            print(f"    {name:<36} first {first:8.1f} ms, median of 3 {median:8.1f} ms ({found} rows)", flush=True)

    with memory_kept():
        for kind in args.servers.split(","):
            print(header)
            server = Server(kind, directory, f"cdr_growth_{kind}", args.partition)
            empty = Server(kind, directory, f"cdr_growth_{kind}_empty", args.partition)
            print(f"{kind}: table {server.table}" + (f', "partition": "{args.partition}"' if args.partition else ""))
            try:
                server.create()
                for size in sizes:
                    if size > server.rows:
                        seconds = server.fill(size)
                        print(f"  ({kind}: filled to {size:,} rows in {seconds:.0f} s)", flush=True)
                    measure(server, empty, args.records, "defaults", report)
                if args.recommended:
                    before = server.settings(RECOMMENDED[kind])
                    try:
                        server.warm()
                        print(f"  ({kind}: {', '.join(f'{name} {value}' for name, value in RECOMMENDED[kind])}; "
                              f"was {', '.join(f'{name} {value}' for name, value in before)})")
                        measure(server, empty, args.records, "recommended", report)
                    finally:
                        server.restore(before)
                if args.index_costs:
                    quote = server.dialect.quote
                    for index in INDEXES:
                        if server.kind == "mysql":
                            server.run(f"ALTER TABLE {quote(server.table)} DROP INDEX {quote(index.name(server.table))}")
                        else:
                            server.run(f"DROP INDEX {quote(index.name(server.table))}")
                        # the queries without their index are full scans: not timed here
                        measure(server, empty, args.records, f"without {index.suffix}", report, rounds=2,
                                queries=False)
            finally:
                server.drop()
                server.close()
                empty.drop()
                empty.close()
            if args.apply_rows:
                apply_times(kind, directory, args.apply_rows)
    shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
