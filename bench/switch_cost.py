"""FreeSWITCH's side of the benchmark: what a CDR writer costs the switch per call.

The same private FreeSWITCH as the live tests (tests/live_switch.py), debug logging off, drives N
two-leg calls (a null/ leg bridged to an auto-answering null/ leg, one second each) as fast as the
event socket takes ``bgapi originate``, four times: with no CDR module, with FreeSWITCH's own
mod_cdr_sqlite, and with fs_cdr writing to SQLite and to MariaDB (details on).
"""

from __future__ import annotations

import sqlite3
import time
import uuid as uuidlib
from pathlib import Path
from typing import Any, Optional

from live_switch import LiveSwitch, missing_reason

from fs_cdr.esl import EventSocket


def _drive(live: LiveSwitch, calls: int) -> tuple[float, float]:
    """Calls/s and FreeSWITCH CPU seconds used, from the first originate until every channel is gone."""
    live.api("fsctl loglevel err")
    live.api("fsctl sps 5000")
    time.sleep(1)
    socket = EventSocket()
    cpu_before = live.cpu_seconds()
    started = time.time()
    for _ in range(calls):
        socket.sock.sendall(b"bgapi originate {null_auto_answer_delay=0}null/bench 4299 XML default\n\n")
    time.sleep(2)
    while not live.api("show channels count").strip().startswith("0 total"):
        time.sleep(0.2)
    elapsed = time.time() - started - 1.0  # the last calls talk for a second
    cpu = live.cpu_seconds() - cpu_before
    socket.close()
    return calls / elapsed, cpu


def _count_sqlite(path: Path, table: str) -> int:
    try:
        connection = sqlite3.connect(str(path))
        try:
            return connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        finally:
            connection.close()
    except sqlite3.Error:
        return 0


def _count_mysql(table: str, drop: bool = False) -> int:
    import MySQLdb

    connection = MySQLdb.connect(host="127.0.0.1", user="root", db="test")
    cursor = connection.cursor()
    cursor.execute(f"SELECT count(*) FROM {table}")
    found = cursor.fetchone()[0]
    if drop:
        cursor.execute(f"DROP TABLE {table}")
    connection.close()
    return found


def freeswitch_rows(directory: Path, calls: int) -> list[tuple[str, str, str, str]]:
    reason = missing_reason()
    if reason:
        return [("freeswitch", "skipped", "", reason)]
    table = f"bench_fs_{uuidlib.uuid4().hex[:6]}"
    variants: list[tuple[str, dict[str, Any], bool, tuple[str, ...]]] = [
        ("no CDR module", {"log": True}, False, ()),
        ("mod_cdr_sqlite", {"log": True}, False, ("mod_cdr_sqlite",)),
        ("fs_cdr -> SQLite, a-legs, no details (as mod_cdr_sqlite)",
         {"process_cdr": "a_only", "database": {"dbtype": "sqlite", "connectionstring": "fs.sqlite"}}, True, ()),
        ("fs_cdr -> SQLite", {"details": True, "database": {"dbtype": "sqlite", "connectionstring": "fs.sqlite"}},
         True, ()),
        ("fs_cdr -> MariaDB", {"details": True, "database": {"dbtype": "mysql", "connectionstring": "127.0.0.1,3306@test",
                                                             "username": "root", "table": table}}, True, ()),
    ]
    results = []
    baseline: Optional[float] = None
    for name, cdr, with_fs_cdr, native in variants:
        root = directory / f"fs-{len(results)}"
        root.mkdir()
        cdr = dict(cdr, spool_dir=str(root / "spool"))
        live = LiveSwitch(root, cdr, fs_cdr=with_fs_cdr, native_cdr=native)
        live.prepare()
        live.start()
        try:
            rate, cpu = _drive(live, calls)
            if with_fs_cdr:
                live.wait_until(lambda: '"queued":0' in live.api("python fs_cdr status json").replace(" ", ""), 60)
                live.api("python fs_cdr flush")
        finally:
            live.shutdown()
        if name == "mod_cdr_sqlite":
            rows = _count_sqlite(root / "db" / "cdr.db", "cdr")
        elif name.startswith("fs_cdr -> SQLite"):
            rows = _count_sqlite(root / "fs.sqlite", "cdr")
        elif name == "fs_cdr -> MariaDB":
            rows = _count_mysql(table, drop=True)
        else:
            rows = 0
        per_thousand = cpu * 1000 / calls
        if baseline is None:
            baseline = per_thousand
        results.append((f"FreeSWITCH, {calls} calls, {name}", f"{rate:,.0f} calls/s", "",
                        f"{per_thousand:.2f} CPU-s/1000 calls (+{per_thousand - baseline:.2f}), {rows} rows"))
    return results
