"""FreeSWITCH's side of the benchmark: what a CDR writer costs the switch per call.

The same private FreeSWITCH as the live tests (tests/live_switch.py), debug logging off, drives N
two-leg calls (a null/ leg bridged to an auto-answering null/ leg, one second each) as fast as the
event socket takes ``bgapi originate``, four times: with no CDR module, with FreeSWITCH's own
mod_cdr_sqlite, and with fs_cdr writing to SQLite (its sink in a worker process, the default, and in
FreeSWITCH's own process) and to MariaDB (details on). FreeSWITCH's CPU and its workers' CPU are
reported apart: the workers run beside FreeSWITCH, not in its threads.
"""

from __future__ import annotations

import json
import sqlite3
import statistics
import time
import uuid as uuidlib
from pathlib import Path
from typing import Any, Callable

from live_switch import LiveSwitch, missing_reason
from processes import processes

from fs_cdr.spool import Journal, Spool


def _worker_cpu(live: LiveSwitch) -> float:
    """CPU seconds of FreeSWITCH's child processes (fs_cdr's sink workers)."""
    assert live.process is not None
    return sum(entry.cpu_s for entry in processes() if entry.parent == live.process.pid)


def _drive(live: LiveSwitch, calls: int, settled: Callable[[], bool] | None = None,
           settle_s: float = 60.0, rate: float = 0.0) -> tuple[float, float, float]:
    """Calls/s, FreeSWITCH CPU seconds and its workers' CPU seconds, from the first originate until
    every channel is gone and fs_cdr has written what it holds (``settled``, when given, says so;
    by default no sink has anything queued). ``rate``: originates a second (0: as fast as FreeSWITCH's
    event socket takes them)."""
    live.api("fsctl loglevel err")
    live.api("fsctl sps 5000")
    time.sleep(1)
    cpu_before, workers_before = live.cpu_seconds(), _worker_cpu(live)
    elapsed, _ = live.place_calls("originate {null_auto_answer_delay=0}null/bench 4299 XML default", calls, rate)
    elapsed -= 1.0  # the last calls talk for a second
    if settled is not None:
        live.wait_until(settled, settle_s)
    elif live.fs_cdr:
        live.wait_until(lambda: '"queued":0' in live.api("python fs_cdr status json").replace(" ", ""), settle_s)
    cpu = live.cpu_seconds() - cpu_before
    workers = _worker_cpu(live) - workers_before
    return calls / elapsed, cpu, workers


def _spooled(directory: Path) -> int:
    """Records fs_cdr left in its spools (a journal left by a crash counted in, as the next start
    does), by fs_cdr's own Spool and Journal."""
    count = 0
    for lane in (path for path in directory.iterdir() if path.is_dir()) if directory.is_dir() else ():
        spool = Spool(str(lane))
        journal = Journal(str(lane / "journal"), spool)
        count += spool.pending
        journal.close()
        spool.close()
    return count


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


def _one_run(directory: Path, cdr: dict[str, Any], with_fs_cdr: bool, native: tuple[str, ...],
             calls: int) -> tuple[float, float, float, int, int, int]:
    """One private FreeSWITCH, ``calls`` calls: calls/s, CPU-s and worker CPU-s per 1,000 calls, rows,
    the records fs_cdr had built before shutdown (-1 without fs_cdr) and those left in its spool."""
    root = directory / f"fs-{uuidlib.uuid4().hex[:8]}"
    root.mkdir()
    table = f"bench_fs_{uuidlib.uuid4().hex[:6]}"
    cdr = dict(cdr, spool_dir=str(root / "spool"))
    if "database" in cdr and cdr["database"]["dbtype"] == "mysql":
        cdr["database"] = dict(cdr["database"], table=table)
    live = LiveSwitch(root, cdr, fs_cdr=with_fs_cdr, native_cdr=native)
    live.prepare()
    live.start()
    built = -1
    try:
        rate, cpu, workers = _drive(live, calls)
        if with_fs_cdr:
            live.api("python fs_cdr flush")
            # what fs_cdr made of the hangups it got: a row short of that is a record lost, a
            # hangup short of the calls' legs is a call FreeSWITCH did not complete
            status = json.loads(live.api("python fs_cdr status json"))
            built = status["records"]
    finally:
        live.shutdown()
    spooled = _spooled(root / "spool") if with_fs_cdr else 0  # written at the next start
    if "mod_cdr_sqlite" in native:
        rows = _count_sqlite(root / "db" / "cdr.db", "cdr")
    elif "database" in cdr and cdr["database"]["dbtype"] == "sqlite":
        rows = _count_sqlite(root / "fs.sqlite", "cdr")
    elif "database" in cdr:
        rows = _count_mysql(table, drop=True)
    else:
        rows = 0
    return rate, cpu * 1000 / calls, workers * 1000 / calls, rows, built, spooled


def freeswitch_rows(directory: Path, calls: int, rounds: int = 3,
                    only: str = "") -> list[tuple[str, str, str, str]]:
    """Each variant ``rounds`` times, interleaved (the machine's load drifts); the medians. ``only``:
    the variants whose name contains one of these comma-separated words (the baseline always runs)."""
    reason = missing_reason()
    if reason:
        return [("freeswitch", "skipped", "", reason)]
    sqlite = {"dbtype": "sqlite", "connectionstring": "fs.sqlite"}
    variants: list[tuple[str, dict[str, Any], bool, tuple[str, ...], int]] = [
        ("no CDR module", {"log": True}, False, (), 0),
        ("mod_cdr_sqlite (a-legs, no details)", {"log": True}, False, ("mod_cdr_sqlite",), calls),
        ("fs_cdr -> SQLite, a-legs, no details", {"process_cdr": "a_only", "database": sqlite}, True, (), calls),
        ("fs_cdr -> SQLite, both legs, details", {"details": True, "database": sqlite}, True, (), 2 * calls),
        ("fs_cdr -> SQLite, both legs, details, extended columns and call table",
         {"details": True, "columns": "extended", "calls": {"table": "cdr_call"}, "database": sqlite}, True, (),
         2 * calls),
        ("fs_cdr -> SQLite, details, no worker process",
         {"details": True, "database": dict(sqlite, worker_process=False)}, True, (), 2 * calls),
        ("fs_cdr -> MariaDB, both legs, details", {"details": True, "database": {
            "dbtype": "mysql", "connectionstring": "127.0.0.1,3306@test", "username": "root"}}, True, (), 2 * calls),
    ]
    if only:
        words = [word.strip() for word in only.split(",") if word.strip()]
        variants = variants[:1] + [variant for variant in variants[1:] if any(word in variant[0] for word in words)]
    measured: dict[str, list[tuple[float, float, float, int, int, int]]] = {name: [] for name, *_ in variants}
    for _ in range(rounds):
        for name, cdr, with_fs_cdr, native, _expected in variants:
            measured[name].append(_one_run(directory, cdr, with_fs_cdr, native, calls))
    baseline = statistics.median(run[1] for run in measured[variants[0][0]])
    results = []
    for name, _cdr, _with, _native, expected in variants:
        runs = measured[name]
        rate = statistics.median(run[0] for run in runs)
        cpu = statistics.median(run[1] for run in runs)
        worker = statistics.median(run[2] for run in runs)
        rows = [run[3] for run in runs]
        spread = " / ".join(f"{run[1]:.2f}" for run in runs)
        worker_text = f" + worker {worker:.2f}" if worker else ""
        rows_text = f"rows {min(rows)}/{expected}"
        for run in runs:
            if run[3] != expected:
                # rows and spooled records fewer than fs_cdr built: lost; fewer built than the calls'
                # legs: hangups FreeSWITCH did not give it before shutdown
                found, built, spooled = run[3], run[4], run[5]
                rows_text += f"; a run wrote {found}" + (
                    f", spooled {spooled} at shutdown, had built {built}"
                    + (": MISSING" if found + spooled < built else "") if built >= 0 else "")
        results.append((f"FreeSWITCH, {calls} calls x {rounds}, {name}", f"{rate:,.0f} calls/s", "",
                        f"{cpu:.2f} CPU-s/1000 calls ({cpu - baseline:+.2f}){worker_text}; runs {spread}; {rows_text}"))
    return results
