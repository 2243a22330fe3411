"""In the real FreeSWITCH: MariaDB stopped while 1,000 calls run and the spool on a 2 MB tmpfs. Every
record reaches MariaDB once both recover, or is counted lost with its uuid in the log; FreeSWITCH never
blocks a call and never crashes."""

from __future__ import annotations

import json
import re
import time

import pytest

from conftest import drop_table, rows
from live_load import sessions_created
from live_switch import LiveSwitch, missing_reason
from servers import MariaDB
from test_disk_faults import tiny_disk

pytestmark = [pytest.mark.freeswitch, pytest.mark.faults,
              pytest.mark.skipif(missing_reason() is not None, reason=str(missing_reason()))]


def test_mariadb_down_and_the_spool_disk_full_while_a_thousand_calls_run(tmp_path, table_name) -> None:
    spool = tmp_path / "spool"
    cdr = {"details": True, "spool_dir": str(spool),
           "database": {"dbtype": "mysql", "connectionstring": "127.0.0.1,3306@test", "username": "root",
                        "table": table_name, "queue_size": 400, "timeout_s": 2}}
    server = MariaDB()
    calls = 1000
    with tiny_disk(str(spool)):
        live = LiveSwitch(tmp_path, cdr)
        live.prepare()
        live.start()
        try:
            live.api("fsctl loglevel warning")
            assert live.wait_until(lambda: '"healthy":true' in live.api("python fs_cdr status json").replace(" ", ""))
            server.stop()
            try:
                live.place_calls("originate {null_auto_answer_delay=0}null/df 4299 XML default", calls, timeout_s=180)

                def received() -> int:
                    status = json.loads(live.api("python fs_cdr status json") or "{}")
                    return status["sinks"][0]["received"] if status.get("sinks") else 0

                # at load FreeSWITCH may fail some b-leg originates: every leg it did create counts
                assert live.wait_until(lambda: received() >= sessions_created(live), 60, 0.5), (
                    live.api("python fs_cdr status"))
                legs = sessions_created(live)
                time.sleep(1.0)  # several guard ticks with the disk full
                status = json.loads(live.api("python fs_cdr status json"))["sinks"][0]
                assert status["disk"] == "full" and status["spooled"] + status["journaled"] > 0, status
                assert "is ready" in live.api("status")  # FreeSWITCH answers, no call was blocked
            finally:
                server.start()
            assert live.wait_until(
                lambda: json.loads(live.api("python fs_cdr status json"))["sinks"][0]["spooled"] == 0
                and json.loads(live.api("python fs_cdr status json"))["sinks"][0]["queued"] == 0, 120, 0.5), \
                live.api("python fs_cdr status")
            status = json.loads(live.api("python fs_cdr status json"))["sinks"][0]
            log = live.log_text()
        finally:
            live.shutdown()
    try:
        written = {row["uuid"] for row in rows("mysql", tmp_path, table_name, "uuid")}
    finally:
        drop_table("mysql", tmp_path, table_name)
    lost = status["lost"]
    print(f"\n{calls} calls, MariaDB down, spool on 2 MB: received {status['received']}, written "
          f"{status['written']}, in MariaDB {len(written)}, lost {lost}")
    assert status["received"] == legs
    assert status["received"] == status["written"] + status["queued"] + status["spooled"] + status["rejected"] + lost
    assert len(written) + lost == legs and len(written) == status["written"]
    if lost:
        named = re.findall(r"LOST \d+ record\(s\) \([^)]*\): '([^']+)'", log)
        assert named and not set(named) & written, named  # the uuids the log names are the ones missing
