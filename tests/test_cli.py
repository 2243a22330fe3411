"""The fs-cdr command: the demo path, schema, check, and exit codes."""

from __future__ import annotations

import glob
import json
import os
import sqlite3
import time
from types import SimpleNamespace

import pytest

import fs_cdr.cli as cli
from conftest import EVENTS_DIR, TOTAL_ROWS, database_entry, drop_table
from fs_cdr.cli import main
from fs_cdr.spool import Spool


def write_config(tmp_path, cdr) -> str:
    path = tmp_path / "cdr.json"
    path.write_text(json.dumps({"cdr": cdr}))
    return str(path)


def test_play_writes_every_leg_to_the_default_sqlite_and_shows_them(tmp_path, capsys) -> None:
    path = write_config(tmp_path, {"details": True, "database": {"dbtype": "sqlite", "connectionstring": ""}})
    assert main(["-c", path, "play", *sorted(glob.glob(os.path.join(EVENTS_DIR, "*.jsonl")))]) == 0
    out = capsys.readouterr().out
    assert f"{TOTAL_ROWS} rows" in out and "NO_ANSWER" in out
    database = tmp_path / "var" / "fs_cdr.sqlite"
    assert sqlite3.connect(str(database)).execute("select count(*) from cdr").fetchone() == (TOTAL_ROWS,)


def test_play_with_a_missing_recording_plays_the_others_and_says_so(tmp_path, capsys) -> None:
    """A missing input is an error line naming it, no traceback; the records of the good recording,
    already handed to the engine, are written; the exit code says an input was missing."""
    path = write_config(tmp_path, {"database": {"dbtype": "sqlite", "connectionstring": ""}})
    missing = str(tmp_path / "nonexistent.jsonl")
    assert main(["-c", path, "play", os.path.join(EVENTS_DIR, "b_bridge_null.jsonl"), missing]) == 1
    captured = capsys.readouterr()
    assert f"cannot read {missing}" in captured.err and "Traceback" not in captured.err
    database = tmp_path / "var" / "fs_cdr.sqlite"
    assert sqlite3.connect(str(database)).execute("select count(*) from cdr").fetchone() == (2,)


def test_schema_prints_create_table_with_configured_fields(tmp_path, capsys) -> None:
    path = write_config(tmp_path, {"fields": ["queue_name", "number:mos"], "log": True})
    assert main(["schema", "-c", path, "--dbtype", "mysql"]) == 0
    out = capsys.readouterr().out
    assert "CREATE TABLE `cdr`" in out and "`queue_name` LONGTEXT" in out and "`mos` DOUBLE" in out
    assert "utf8mb4" in out


def test_check_reports_each_sink_and_fails_on_an_unreachable_one(tmp_path, capsys, table_name) -> None:
    good = database_entry("mysql", table_name, tmp_path)
    bad = {"dbtype": "pgsql", "connectionstring": "127.0.0.1,1@test", "name": "nowhere"}
    try:
        path = write_config(tmp_path, {"database": [good, bad]})
        assert main(["check", "-c", path]) == 1
        out = capsys.readouterr().out
        assert "OK    mysql" in out and "FAIL  nowhere" in out
    finally:
        drop_table("mysql", tmp_path, table_name)


def test_a_bad_configuration_exits_2_naming_the_key(tmp_path, capsys) -> None:
    path = write_config(tmp_path, {"database": {"dbtype": "mysql", "connectionstring": "x@y", "tabel": "t"}})
    assert main(["check", "-c", path]) == 2
    assert "cdr.database.tabel" in capsys.readouterr().err


def test_an_interrupted_replay_stops_its_sinks_and_gives_the_spool_up(tmp_path, monkeypatch) -> None:
    """Ctrl-C while `fs-cdr replay` waits for an unreachable sink: the lanes are stopped all the same
    (their spools closed, the lock given up), and nothing spooled is lost."""
    spool_dir = tmp_path / "spool"
    spool = Spool(str(spool_dir / "nowhere"))
    spool.append([{"uuid": "waiting-1"}, {"uuid": "waiting-2"}])
    spool.close()
    path = write_config(tmp_path, {"spool_dir": str(spool_dir), "database": {
        "dbtype": "pgsql", "connectionstring": "127.0.0.1,1@test", "name": "nowhere", "timeout_s": 1,
        "worker_process": False}})

    def interrupt(seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "time", SimpleNamespace(monotonic=time.monotonic, sleep=interrupt))
    with pytest.raises(KeyboardInterrupt):
        main(["-c", path, "replay", "--timeout", "5"])
    again = Spool(str(spool_dir / "nowhere"))  # SpoolBusy if the interrupted lane still held it
    assert again.pending == 2
    again.close()
