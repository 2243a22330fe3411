"""A real FreeSWITCH stopping with records in flight, killed with -9, and under a burst of calls."""

from __future__ import annotations

import json
import sqlite3
import time

import pytest
from live_switch import LiveSwitch, missing_reason
from processes import process_gone

pytestmark = [pytest.mark.freeswitch, pytest.mark.skipif(missing_reason() is not None, reason=str(missing_reason()))]


def count(path, where: str = "1=1") -> int:
    try:
        connection = sqlite3.connect(str(path))
        try:
            return connection.execute(f"SELECT count(*) FROM cdr WHERE {where}").fetchone()[0]
        finally:
            connection.close()
    except sqlite3.OperationalError:
        return 0


def test_fsctl_shutdown_with_records_queued_loses_none(tmp_path) -> None:
    database = tmp_path / "cdr.sqlite"
    # A sink that holds records in memory for a minute: whatever is queued at shutdown must be spooled.
    holding = {"database": {"dbtype": "sqlite", "connectionstring": str(database), "batch_size": 100000,
                            "flush_interval_ms": 60000},
               "durable_window_ms": 600000, "spool_dir": str(tmp_path / "spool")}
    live = LiveSwitch(tmp_path, holding)
    live.prepare()
    live.start()
    try:
        for _ in range(20):
            assert live.api("originate {queue_name=shutdown}null/sd 4298 XML default").startswith("+OK")
        assert live.wait_until(lambda: '"records":20' in live.api("python fs_cdr status json").replace(" ", ""), 10)
        assert count(database) == 0  # all 20 are still in memory
        workers = live.started_workers()
    finally:
        live.shutdown()
    assert live.wait_until(lambda: all(process_gone(pid) for pid in workers), 10), "a sink worker outlived FreeSWITCH"
    log = live.log_text()
    # fsctl shutdown fires SHUTDOWN (not SHUTDOWN_REQUESTED) while modules unload
    assert ": spooling what is queued" in log and "spooled 20 records at shutdown" in log
    # FreeSWITCH comes back with a working configuration: the spool is replayed.
    live.write_cdr({"database": {"dbtype": "sqlite", "connectionstring": str(database)},
                    "spool_dir": str(tmp_path / "spool")})
    live.start()
    try:
        assert live.wait_until(lambda: count(database, "queue_name IS NULL") == 20 or count(database) == 20, 20)
        time.sleep(0.5)
        assert count(database) == 20
    finally:
        live.shutdown()


def test_kill_9_loses_at_most_the_durability_window(tmp_path) -> None:
    """Records the engine holds longer than durable_window_ms are on disk; after kill -9 and a restart
    they are written, none twice."""
    database = tmp_path / "cdr.sqlite"
    holding = {"database": {"dbtype": "sqlite", "connectionstring": str(database), "batch_size": 100000,
                            "flush_interval_ms": 60000},
               "durable_window_ms": 200, "spool_dir": str(tmp_path / "spool")}
    live = LiveSwitch(tmp_path, holding)
    live.prepare()
    live.start()
    try:
        for _ in range(15):
            assert live.api("originate null/k9 4298 XML default").startswith("+OK")
        assert live.wait_until(lambda: '"records":15' in live.api("python fs_cdr status json").replace(" ", ""), 10)
        workers = live.started_workers()
        time.sleep(0.5)  # more than the window
    finally:
        live.kill()
    # the worker sees its pipe close and exits: kill -9 leaves nothing behind either
    assert live.wait_until(lambda: all(process_gone(pid) for pid in workers), 10), "a sink worker outlived FreeSWITCH"
    assert count(database) == 0
    live.write_cdr({"database": {"dbtype": "sqlite", "connectionstring": str(database)},
                    "spool_dir": str(tmp_path / "spool")})
    live.start()
    try:
        assert live.wait_until(lambda: count(database) == 15, 20)
    finally:
        live.shutdown()


def test_a_thousand_calls_as_fast_as_the_switch_allows(tmp_path) -> None:
    database = tmp_path / "cdr.sqlite"
    live = LiveSwitch(tmp_path, {"details": True, "database": {"dbtype": "sqlite", "connectionstring": str(database)},
                                 "spool_dir": str(tmp_path / "spool")})
    live.prepare()
    live.start()
    calls = 1000
    try:
        live.api("fsctl loglevel warning")
        socket = live.event_socket()
        started = time.time()
        for _ in range(calls):
            socket.sock.sendall(b"bgapi originate {null_auto_answer_delay=0}null/load 4299 XML default\n\n")
        assert live.wait_until(lambda: count(database) >= 2 * calls, 180, 0.5), live.api("python fs_cdr status")
        elapsed = time.time() - started
        time.sleep(1)
        assert count(database) == 2 * calls
        assert count(database, "leg = 'b'") == calls
        # every hangup FreeSWITCH serialized took the compiled split (fs_cdr._hangup) in the switch's
        # own Python, none needed the Python decoder, and every record's columns were built in C
        fast = json.loads(live.api("python fs_cdr status json"))["fast_path"]
        assert fast == {"compiled": True, "split": 2 * calls, "decoded": 0, "built_in_c": 2 * calls}, fast
        socket.close()
        print(f"\n{calls} two-leg calls ({2 * calls} records) in {elapsed:.1f} s: {calls / elapsed:.0f} calls/s")
    finally:
        live.shutdown()
    assert "Cannot queue any more events" not in live.log_text()


def test_real_time_rows_while_the_call_is_up_and_after(tmp_path) -> None:
    database = tmp_path / "cdr.sqlite"
    live = LiveSwitch(tmp_path, {"database": {"dbtype": "sqlite", "connectionstring": str(database), "real": True},
                                 "spool_dir": str(tmp_path / "spool")})
    live.prepare()
    live.start()

    def states() -> dict:
        try:
            connection = sqlite3.connect(str(database))
            try:
                return dict(connection.execute("SELECT leg, call_state FROM cdr WHERE caller_id_name = 'live_rt'"))
            finally:
                connection.close()
        except sqlite3.OperationalError:
            return {}

    try:
        assert live.phone("1101", talk_ms=4000, name="live_rt").startswith("+OK")
        # while both legs talk, the rows say so (FreeSWITCH fires CHANNEL_BRIDGE on the a-leg only)
        assert live.wait_until(lambda: states() == {"a": "bridged", "b": "answered"}, 5, 0.1), states()
        assert live.wait_until(lambda: states() == {"a": "completed", "b": "completed"}, 15, 0.2), states()
        status = live.api("python fs_cdr status json")
        assert '"real":true' in status.replace(" ", "")
    finally:
        live.shutdown()
    assert "real-time mode: also consuming" in live.log_text()


def test_startup_without_a_path_finds_cdr_json_in_the_conf_directory(tmp_path) -> None:
    """The shipped python.conf.xml names no path: fs_cdr must find conf/cdr.json by itself."""
    database = tmp_path / "cdr.sqlite"
    live = LiveSwitch(tmp_path, {"database": {"dbtype": "sqlite", "connectionstring": str(database)},
                                 "spool_dir": str(tmp_path / "spool")}, config_argument=False)
    live.prepare()
    live.start()
    try:
        # the startup script runs in a thread of its own: FreeSWITCH may answer before it finished
        assert live.wait_until(lambda: "not running" not in live.api("python fs_cdr status"), 10)
        status = live.api("python fs_cdr status")
        assert f"config {live.conf / 'cdr.json'}" in status, status
        assert live.api("originate null/np 4298 XML default").startswith("+OK")
        assert live.wait_until(lambda: count(database) == 1, 10)
    finally:
        live.shutdown()


def test_kill_9_mid_call_leaves_no_ghost_call_in_real_time_rows(tmp_path) -> None:
    """A call up in real-time mode, FreeSWITCH killed with -9: at the next start the row of that call
    says ``lost`` (a wallboard shows no ghost call), and this run's calls are untouched."""
    database = tmp_path / "cdr.sqlite"
    live = LiveSwitch(tmp_path, {"database": {"dbtype": "sqlite", "connectionstring": str(database), "real": True},
                                 "spool_dir": str(tmp_path / "spool")})
    live.prepare()
    live.start()

    def state(uuid: str) -> str:
        try:
            connection = sqlite3.connect(str(database))
            try:
                found = connection.execute("SELECT call_state FROM cdr WHERE uuid = ?", (uuid,)).fetchone()
                return found[0] if found else ""
            finally:
                connection.close()
        except sqlite3.OperationalError:
            return ""

    try:
        answer = live.api("originate {origination_caller_id_name=ghost}null/ghost &park")
        assert answer.startswith("+OK"), answer
        ghost = answer.split()[1]
        assert live.wait_until(lambda: state(ghost) in ("answered", "created", "ringing", "early_media"), 30), state(ghost)
        time.sleep(0.5)
    finally:
        live.kill()
    assert state(ghost) not in ("completed", "lost", "")
    live.start()
    try:
        answer = live.api("originate {origination_caller_id_name=alive}null/alive &park")
        assert answer.startswith("+OK"), answer
        alive = answer.split()[1]
        assert live.wait_until(lambda: state(ghost) == "lost", 20), state(ghost)
        assert live.wait_until(lambda: state(alive) not in ("", "lost"), 30), state(alive)
        time.sleep(0.5)
        assert state(alive) != "lost"
        assert "are now call_state 'lost'" in live.log_text()
        live.api("hupall")
    finally:
        live.shutdown()
