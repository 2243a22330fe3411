"""The file sink beside mod_cdr_csv in the real FreeSWITCH: for the same calls, with the same template
(the vanilla configuration's `example`) and legs, every line fs_cdr writes equals, field by field, the
line mod_cdr_csv wrote to Master.csv — so scripts that parse Master.csv keep working."""

from __future__ import annotations

import csv
import time

import pytest

from live_switch import LiveSwitch, missing_reason

pytestmark = [pytest.mark.freeswitch, pytest.mark.skipif(missing_reason() is not None, reason=str(missing_reason()))]

#: the `example` template's fields (conf/vanilla/autoload_configs/cdr_csv.conf.xml)
FIELDS = ("caller_id_name", "caller_id_number", "destination_number", "context", "start_stamp", "answer_stamp",
          "end_stamp", "duration", "billsec", "hangup_cause", "uuid", "bleg_uuid", "accountcode", "read_codec",
          "write_codec")


def lines(path) -> dict[str, dict[str, str]]:
    if not path.exists():
        return {}
    with open(path, newline="", encoding="utf-8", errors="replace") as handle:
        return {row[10]: dict(zip(FIELDS, row)) for row in csv.reader(handle) if len(row) == len(FIELDS)}


def test_the_file_sink_writes_what_mod_cdr_csv_writes_for_the_same_calls(tmp_path) -> None:
    ours = tmp_path / "fs_cdr-csv" / "Master.csv"
    cdr = {"details": True, "spool_dir": str(tmp_path / "spool"),
           "file": {"path": str(ours), "format": "csv", "template": "example", "legs": "a"}}
    live = LiveSwitch(tmp_path, cdr, native_cdr=("mod_cdr_csv",))
    live.prepare()
    theirs = live.log_dir / "cdr-csv" / "Master.csv"
    live.start()
    try:
        calls = [
            "originate {origination_caller_id_name=Csv\\ Caller,origination_caller_id_number=1100}null/4299 4299 XML default",
            "originate {origination_caller_id_name=Plain,origination_caller_id_number=1101}null/4204 &hangup()",
            "originate {origination_caller_id_name=Answered,origination_caller_id_number=1102}null/4205 &park()",
        ]
        for command in calls:
            assert live.api(command).startswith(("+OK", "-ERR")), command
        time.sleep(1.5)
        live.api("hupall NORMAL_CLEARING")
        assert live.wait_until(lambda: len(lines(theirs)) >= 3 and len(lines(ours)) >= 3, 30), (
            lines(theirs), lines(ours), live.api("python fs_cdr status"))
        time.sleep(1.0)
    finally:
        live.shutdown()
    native, written = lines(theirs), lines(ours)
    assert set(written) == set(native), (sorted(native), sorted(written))
    for uuid, line in native.items():
        assert written[uuid] == line, {field: (line[field], written[uuid][field]) for field in FIELDS
                                       if line[field] != written[uuid][field]}
    assert any(line["answer_stamp"] for line in native.values())  # the comparison covers answered legs
