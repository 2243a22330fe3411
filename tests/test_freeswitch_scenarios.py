"""Every scenario of the CDR interface, in a real FreeSWITCH, through the repository's own dialplan
examples: rows in SQLite and MariaDB and documents on Redis, checked against the seed's description.

Skipped, with the reason, where no FreeSWITCH with mod_python3 is installed (see live_switch.py).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time
import uuid as uuidlib

import pytest

from conftest import MARIADB, connect
from live_switch import ESL_PASSWORD, SYSTEM_PYTHON, LiveSwitch, missing_reason
from processes import children_of, process

pytestmark = [pytest.mark.freeswitch, pytest.mark.skipif(missing_reason() is not None, reason=str(missing_reason()))]

TABLE = "cdr_live_" + uuidlib.uuid4().hex[:8]
REDIS_LIST = f"fs_cdr_test:{TABLE}"


@pytest.fixture(scope="module")
def switch(tmp_path_factory):
    root = tmp_path_factory.mktemp("freeswitch")
    cdr = {
        "details": True,
        "fields": ["number:billsec", "number:duration", "queue_name", "jsipid:sip_h_X-jssipid"],
        "database": [
            {"dbtype": "sqlite", "connectionstring": str(root / "cdr.sqlite"), "table": "cdr"},
            {"dbtype": "mysql", "connectionstring": f"{MARIADB['host']},{MARIADB['port']}@test",
             "username": "root", "table": TABLE},
        ],
        "redis": {"list": REDIS_LIST},
        "spool_dir": str(root / "spool"),
    }
    live = LiveSwitch(root, cdr)
    live.prepare()
    live.start()
    yield live
    live.shutdown()
    import redis

    redis.Redis().delete(REDIS_LIST)
    connection = connect("mysql", None)
    connection.cursor().execute(f"DROP TABLE IF EXISTS {TABLE}")
    connection.close()


def sqlite_rows(switch: LiveSwitch, tag: str, column: str = "caller_id_name") -> list[dict]:
    connection = sqlite3.connect(str(switch.root / "cdr.sqlite"))
    connection.row_factory = sqlite3.Row
    try:
        return [dict(row) for row in connection.execute(f"SELECT * FROM cdr WHERE {column} = ?", (tag,))]
    except sqlite3.OperationalError:
        return []
    finally:
        connection.close()


def mariadb_rows(tag: str, column: str = "caller_id_name") -> list[dict]:
    connection = connect("mysql", None)
    try:
        cursor = connection.cursor()
        cursor.execute(f"SELECT * FROM {TABLE} WHERE {column} = %s", (tag,))
        names = [column[0] for column in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]
    finally:
        connection.close()


def redis_documents(tag: str, column: str = "caller_id_name") -> list[dict]:
    import redis

    return [document for document in (json.loads(item) for item in redis.Redis().lrange(REDIS_LIST, 0, -1))
            if document.get(column) == tag]


def settled_rows(switch: LiveSwitch, tag: str, count: int, column: str = "caller_id_name") -> dict[str, dict]:
    """Wait for ``count`` rows of this call in SQLite, then check MariaDB and Redis hold the same."""
    assert switch.wait_until(lambda: len(sqlite_rows(switch, tag, column)) >= count, 30), switch.api("python fs_cdr status")
    time.sleep(0.5)  # a wrong extra row would show up now
    rows = sqlite_rows(switch, tag, column)
    assert len(rows) == count, rows
    assert switch.wait_until(
        lambda: len(mariadb_rows(tag, column)) == count and len(redis_documents(tag, column)) == count, 10)
    by_uuid = {row["uuid"]: row for row in rows}
    for other in mariadb_rows(tag, column) + redis_documents(tag, column):
        mine = by_uuid[other["uuid"]]
        for column in ("leg", "direction", "account", "originator", "bridge_uuid", "billsec", "duration",
                       "destination_number", "call_source", "dial_number", "hangup_cause"):
            assert other[column] == mine[column], (column, other[column], mine[column])
    return by_uuid


def legs(rows: dict[str, dict]) -> tuple[dict, dict]:
    (a,) = [row for row in rows.values() if row["leg"] == "a"]
    (b,) = [row for row in rows.values() if row["leg"] == "b"]
    return a, b


def test_extension_to_extension(switch) -> None:
    assert switch.phone("1101", name="ext2ext").startswith("+OK")
    a, b = legs(settled_rows(switch, "ext2ext", 2))
    # the caller's record
    assert (a["direction"], a["account"], a["originator"], a["bridge_uuid"]) == ("inbound", "1100", None, b["uuid"])
    # the callee's record
    assert (b["direction"], b["account"], b["originator"], b["bridge_uuid"]) == ("outbound", "1101", a["uuid"], a["uuid"])
    for row in (a, b):
        assert (row["call_source"], row["source_name"], row["dial_number"], row["cti_line_group_name"]) == (
            "dialplan", "1100", "1101", "internal")
        assert isinstance(row["billsec"], int) and row["billsec"] >= 1 and row["duration"] >= row["billsec"]
        assert row["answer_epoch"] and row["hangup_cause"] == "NORMAL_CLEARING"
        assert row["switchname"] and row["core_uuid"]
        details = json.loads(row["details"])
        assert details["uuid"] == row["uuid"] and details["call_source"] == "dialplan"
        assert "sip_auth_password" not in details or details["sip_auth_password"] == "***"
    assert a["destination_number"] == "1101" and a["caller_id_number"] == "1100"


def test_outbound_through_a_gateway(switch) -> None:
    assert switch.phone("95551234", talk_ms=3000, name="gateway").startswith("+OK")
    a, b = legs(settled_rows(switch, "gateway", 2))
    assert b["account"] == "fs_cdr_carrier" and b["direction"] == "outbound" and b["originator"] == a["uuid"]
    assert a["account"] == "1100" and a["dial_number"] == b["dial_number"] == "5551234"
    assert b["billsec"] >= 1 and b["channel_name"].startswith("sofia/internal/")


def test_ivr_that_never_transfers_has_one_record(switch) -> None:
    assert switch.phone("5000", name="ivr").startswith("+OK")
    (only,) = settled_rows(switch, "ivr", 1).values()
    assert (only["leg"], only["call_source"], only["source_name"], only["bridge_uuid"]) == ("a", "ivr", "main_menu", None)
    assert only["billsec"] >= 1


def test_queue_acd_call_to_an_agent(switch) -> None:
    assert switch.phone("6001", name="queue").startswith("+OK")
    a, b = legs(settled_rows(switch, "queue", 2))
    for row in (a, b):
        assert (row["call_source"], row["source_name"], row["source_number"], row["dial_number"],
                row["cti_line_group_name"], row["queue_name"]) == ("acd", "support", "1100", "1101", "agents", "support")
    assert b["account"] == "1101" and b["originator"] == a["uuid"]


def test_dialer_answered_and_unanswered(switch) -> None:
    campaign = ("call_source=queuedialer,source_name=campaign1,cti_line_group_name=carriers,"
                "origination_caller_id_number=4000")
    answered = switch.api(f"originate {{{campaign},dial_number=5551777,queue_name=dialer_ok,"
                          f"originate_timeout=10}}sofia/gateway/fs_cdr_carrier/5551777 7000 XML default")
    assert answered.startswith("+OK")
    unanswered = switch.api(f"originate {{{campaign},dial_number=5552777,queue_name=dialer_na,"
                            f"originate_timeout=3}}sofia/gateway/fs_cdr_carrier/5552777 7000 XML default")
    assert "NO_ANSWER" in unanswered
    (ok,) = settled_rows(switch, "dialer_ok", 1, "queue_name").values()
    # answered: destination is the campaign's routing condition, caller is the number dialled
    assert (ok["destination_number"], ok["caller_id_number"], ok["callee_id_number"]) == ("7000", "5551777", "4000")
    (na,) = settled_rows(switch, "dialer_na", 1, "queue_name").values()
    # unanswered: destination is the number dialled, caller is the campaign's caller id
    assert (na["destination_number"], na["caller_id_number"], na["callee_id_number"]) == ("5552777", "4000", "5552777")
    assert (na["billsec"], na["answer_epoch"], na["hangup_cause"]) == (0, None, "NO_ANSWER")
    for row in (ok, na):
        assert (row["call_source"], row["source_name"], row["cti_line_group_name"], row["account"], row["leg"]) == (
            "queuedialer", "campaign1", "carriers", "fs_cdr_carrier", "a")


def test_transfer_records_the_last_party_talked_to(switch) -> None:
    assert switch.phone("81101", name="transfer").startswith("+OK")
    a, b = legs(settled_rows(switch, "transfer", 2))
    assert a["destination_number"] == "1101" and a["bridge_uuid"] == b["uuid"] and b["originator"] == a["uuid"]


def test_unanswered_and_busy_calls_through_the_gateway(switch) -> None:
    assert "NO_ANSWER" in switch.phone("95552234", name="noanswer", extra="originate_timeout=20")
    a, b = legs(settled_rows(switch, "noanswer", 2))
    assert (a["billsec"], b["billsec"], b["answer_epoch"]) == (0, 0, None)
    assert "USER_BUSY" in switch.phone("95553234", name="busy")
    a, b = legs(settled_rows(switch, "busy", 2))
    assert b["hangup_cause"] == "USER_BUSY" and b["billsec"] == 0


def test_status_and_reload_from_fs_cli(switch) -> None:
    status = switch.api("python fs_cdr status")
    assert "sqlite" in status and "mysql" in status and "redis" in status and "NO" not in status.split("\n")[3]
    as_json = json.loads(switch.api("python fs_cdr status json"))
    assert {sink["sink"] for sink in as_json["sinks"]} == {"sqlite", "mysql1", "redis"}
    good = switch.cdr_path.read_text()
    try:
        switch.cdr_path.write_text(good.replace('"details": true', '"details": "yes"'))
        answer = switch.api("python fs_cdr reload")
        assert answer.startswith("-ERR") and "cdr.details" in answer
        assert "reload refused" in switch.log_text()
        assert switch.phone("1101", name="after_bad_reload").startswith("+OK")
        a, _ = legs(settled_rows(switch, "after_bad_reload", 2))
        assert a["details"]  # still the old configuration: details on
    finally:
        switch.cdr_path.write_text(good)
    before = switch.worker_pids()
    assert len(before) == WRITERS
    assert switch.api("python fs_cdr reload").startswith("+OK")
    # the same sinks keep their workers; the workers that checked the new file (the probe) have ended
    assert switch.worker_pids() == before
    assert switch.wait_until(
        lambda: sorted(child.pid for child in children_of(switch.process.pid)) == sorted(before), 20)


#: one writer (and worker) for SQLite and Redis, two for MariaDB (a database server's default)
WRITERS = 4
#: what sys.prefix/bin/pythonX.Y is for the Python mod_python3 embeds (Debian's: /usr/bin/python3.11)
EMBEDDED_PYTHON = subprocess.run(
    [SYSTEM_PYTHON, "-c", "import sys; print('%s/bin/python%d.%d' % ((sys.prefix,) + sys.version_info[:2]))"],
    capture_output=True, text=True).stdout.strip() if os.path.exists(SYSTEM_PYTHON) else ""


def test_each_sink_runs_in_a_worker_process_beside_freeswitch(switch) -> None:
    """The drivers run in child processes of FreeSWITCH started with the Python mod_python3 embeds."""
    pids = switch.worker_pids()
    assert len(pids) == WRITERS
    for pid in pids:
        assert process(pid).parent == switch.process.pid
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            command = handle.read().split(b"\0")
        # the embedded Python's own installation, whatever python3 comes first on FreeSWITCH's PATH
        assert command[0].decode() == EMBEDDED_PYTHON and b"fs_cdr.sinks.worker" in command[2]
    assert switch.phone("1101", name="through_workers").startswith("+OK")
    a, b = legs(settled_rows(switch, "through_workers", 2))
    assert (a["leg"], b["leg"]) == ("a", "b")


def test_python_fs_cdr_from_the_dialplan_never_starts_a_second_engine(switch) -> None:
    for _ in range(30):
        assert switch.api("originate {queue_name=app_calls}null/app 4298 XML default").startswith("+OK")
    assert switch.wait_until(lambda: len(sqlite_rows(switch, "app_calls", "queue_name")) == 30, 20)
    log = switch.log_text()
    assert log.count("[fs_cdr] started:") == 1 and log.count("[fs_cdr] consuming") == 1
    assert "already running" in switch.api("python fs_cdr start")


def test_fs_cdr_status_through_the_real_event_socket(switch, tmp_path, capsys) -> None:
    from fs_cdr.cli import main

    path = tmp_path / "cdr.json"
    path.write_text(json.dumps({"cdr": {"log": True, "event_socket": {"host": "127.0.0.1", "port": switch.esl_port,
                                                                       "password": ESL_PASSWORD}}}))
    assert main(["-c", str(path), "status", "--json"]) == 0
    assert {sink["sink"] for sink in json.loads(capsys.readouterr().out)["sinks"]} == {"sqlite", "mysql1", "redis"}


def test_sidecar_on_the_real_event_socket_records_the_same_call(switch, tmp_path) -> None:
    import threading

    from fs_cdr.config import parse_config
    from fs_cdr.engine import Engine
    from fs_cdr.sidecar import run_sidecar

    config = parse_config({"cdr": {"database": {"dbtype": "sqlite", "connectionstring": str(tmp_path / "side.sqlite")},
                                   "event_socket": {"port": switch.esl_port, "password": ESL_PASSWORD},
                                   "spool_dir": str(tmp_path / "spool")}})
    engine = Engine(config).start()
    stop = threading.Event()
    sidecar = threading.Thread(target=run_sidecar, args=(engine, config.event_socket, stop))
    sidecar.start()
    try:
        time.sleep(1)
        assert switch.phone("1101", name="sidecar").startswith("+OK")
        in_process = settled_rows(switch, "sidecar", 2)

        def sidecar_rows() -> set:
            try:
                connection = sqlite3.connect(str(tmp_path / "side.sqlite"))
                found = {row[0] for row in connection.execute("SELECT uuid FROM cdr WHERE caller_id_name = 'sidecar'")}
                connection.close()
                return found
            except sqlite3.OperationalError:
                return set()

        assert switch.wait_until(lambda: sidecar_rows() == set(in_process), 15)
    finally:
        stop.set()
        sidecar.join(5)
        engine.stop()
