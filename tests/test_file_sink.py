"""The file sink against real files: mod_cdr_csv's lines, JSON lines, rotation, and a full disk."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import uuid as uuidlib
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import SCENARIOS, TOTAL_ROWS, hangups, make_config, scenario_events
from processes import wait_for

from fs_cdr.config import parse_config
from fs_cdr.engine import Engine
from fs_cdr.errors import ConfigError

ONE_LEG = hangups("b_bridge_null")[0]


def feed_all(engine: Engine) -> None:
    for scenario in SCENARIOS:
        for event in scenario_events(scenario):
            engine.handle(event)
    assert engine.flush(20), engine.status()


def legs(count: int, **variables: str) -> list[dict[str, Any]]:
    """``count`` copies of one recorded hangup, each its own channel."""
    events = []
    for _ in range(count):
        call = str(uuidlib.uuid4())
        events.append(dict(ONE_LEG, **{"Unique-ID": call, "variable_uuid": call},
                           **{f"variable_{name}": value for name, value in variables.items()}))
    return events


def lines_of(directory: Any, pattern: str = "") -> list[str]:
    found = []
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if os.path.isfile(path) and pattern in name:
            with open(path, encoding="utf-8") as handle:
                found.extend(handle.read().splitlines())
    return found


def test_csv_lines_are_mod_cdr_csv_example_template_filled_from_columns_and_variables(tmp_path, engines) -> None:
    """The vanilla cdr_csv.conf.xml's ``example`` template: caller profile fields from the record's
    columns, stamps and codecs from the channel variables, every value between the template's quotes."""
    out = tmp_path / "cdr-csv"
    engine = engines(make_config({"cdr": {"details": True, "file": {"path": str(out / "Master.csv"),
                                                                     "template": "example"}}}, tmp_path))
    feed_all(engine)
    lines = lines_of(out)
    assert len(lines) == TOTAL_ROWS
    event = hangups("b_bridge_null")[0]
    line = next(line for line in lines if event["Unique-ID"] in line)
    fields = [field.strip('"') for field in line.split('","')]
    assert fields == [
        event["Caller-Caller-ID-Name"], event["Caller-Caller-ID-Number"], event["Caller-Destination-Number"],
        event["Caller-Context"], event["variable_start_stamp"], event["variable_answer_stamp"],
        event["variable_end_stamp"], event["variable_duration"], event["variable_billsec"],
        event["variable_hangup_cause"], event["Unique-ID"], "", event.get("variable_accountcode", ""),
        event["variable_read_codec"], event["variable_write_codec"],
    ]


def test_values_are_written_as_they_are_like_mod_cdr_csv_or_with_quotes_doubled_when_asked(tmp_path, engines) -> None:
    name = 'Bob "the builder", Jr'
    event = dict(ONE_LEG, **{"Caller-Caller-ID-Name": name})
    plain = engines(make_config({"cdr": {"file": {"path": str(tmp_path / "plain.csv"),
                                                   "template": '"${caller_id_name}","${uuid}"'}}}, tmp_path))
    plain.handle(event)
    assert plain.flush(10)
    assert (tmp_path / "plain.csv").read_text() == f'"{name}","{ONE_LEG["Unique-ID"]}"\n'
    doubled = engines(make_config({"cdr": {"spool_dir": str(tmp_path / "spool2"), "file": {
        "path": str(tmp_path / "doubled.csv"), "template": '"${caller_id_name}"', "escape": "csv"}}}, tmp_path))
    doubled.handle(event)
    assert doubled.flush(10)
    assert (tmp_path / "doubled.csv").read_text() == '"Bob ""the builder"", Jr"\n'


def test_the_shipped_sql_template_and_a_leg_only_like_mod_cdr_csv_defaults(tmp_path, engines) -> None:
    engine = engines(make_config({"cdr": {"details": True, "file": {
        "path": str(tmp_path / "Master.csv"), "template": "sql", "legs": "a"}}}, tmp_path))
    for event in hangups("b_bridge_null"):
        engine.handle(event)
    assert engine.flush(10)
    (line,) = lines_of(tmp_path, "Master")
    a_leg = next(event for event in hangups("b_bridge_null") if "variable_originator" not in event)
    assert line.startswith('INSERT INTO cdr VALUES ("') and line.endswith('");')
    assert f'"{a_leg["Unique-ID"]}"' in line


def test_a_template_naming_a_channel_variable_needs_details() -> None:
    with pytest.raises(ConfigError) as caught:
        from fs_cdr.sinks import targets

        targets(parse_config({"cdr": {"file": {"path": "/tmp/x.csv", "template": "example"}}}))
    assert "start_stamp" in str(caught.value) and "details" in str(caught.value)


def test_json_lines_hold_one_document_per_record(tmp_path, engines) -> None:
    engine = engines(make_config({"cdr": {"details": True, "file": {"path": str(tmp_path / "cdr.jsonl")}}},
                                 tmp_path))
    feed_all(engine)
    documents = [json.loads(line) for line in lines_of(tmp_path, "cdr.jsonl")]
    assert len(documents) == TOTAL_ROWS and len({document["uuid"] for document in documents}) == TOTAL_ROWS
    assert all(isinstance(document["details"], dict) for document in documents)


def test_the_date_in_the_path_starts_a_new_file_and_no_record_is_in_two(tmp_path, engines) -> None:
    """A path with seconds in it rotates every second: records written across three seconds land in
    at least three files, each record in exactly one."""
    engine = engines(make_config({"cdr": {"file": {"path": str(tmp_path / "out" / "cdr-%H%M%S.jsonl")}}}, tmp_path))
    events = legs(60)
    for index, event in enumerate(events):
        engine.handle(event)
        if index % 20 == 19:
            assert engine.flush(10)
            time.sleep(1.05)
    assert engine.flush(10)
    names = os.listdir(tmp_path / "out")
    assert len(names) >= 3, names
    counts = Counter(json.loads(line)["uuid"] for line in lines_of(tmp_path / "out"))
    assert set(counts) == {event["Unique-ID"] for event in events} and set(counts.values()) == {1}


def test_a_file_past_max_bytes_is_renamed_aside_with_mod_cdr_csv_suffix(tmp_path, engines) -> None:
    engine = engines(make_config({"cdr": {"file": {"path": str(tmp_path / "out" / "Master.csv"),
                                                   "template": '"${uuid}","${caller_id_number}"',
                                                   "max_bytes": 1000, "batch_size": 5}}}, tmp_path))
    events = legs(100)
    for event in events:
        engine.handle(event)
        time.sleep(0.002)
    assert engine.flush(10)
    names = sorted(os.listdir(tmp_path / "out"))
    rotated = [name for name in names if name != "Master.csv"]
    assert len(rotated) >= 4 and all(name.startswith("Master.csv.20") for name in rotated), names
    for name in names:
        assert os.path.getsize(tmp_path / "out" / name) <= 1000
    written = [line.split('","')[0].strip('"') for line in lines_of(tmp_path / "out")]
    assert sorted(written) == sorted(event["Unique-ID"] for event in events)


def test_fs_cdr_rotate_moves_the_file_aside_and_the_running_writer_opens_a_new_one(tmp_path, engines) -> None:
    path = tmp_path / "cdr.jsonl"
    document = {"cdr": {"spool_dir": str(tmp_path / "spool"), "file": {"path": str(path)}}}
    (tmp_path / "cdr.json").write_text(json.dumps(document))
    engine = engines(make_config(document, tmp_path))
    first, second = legs(10), legs(10)
    for event in first:
        engine.handle(event)
    assert engine.flush(10)
    result = subprocess.run([sys.executable, "-m", "fs_cdr.cli", "-c", str(tmp_path / "cdr.json"), "rotate"],
                            check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    old, new = result.stdout.strip().split(" -> ")
    assert old == str(path) and new.startswith(f"{path}.20") and not path.exists()
    for event in second:
        engine.handle(event)
    assert engine.flush(10)
    assert uuids_in(new) == [event["Unique-ID"] for event in first]
    assert uuids_in(path) == [event["Unique-ID"] for event in second]


def uuids_in(path: Any) -> list[str]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line)["uuid"] for line in handle]


def test_the_api_command_rotate_does_the_same_inside_freeswitch(tmp_path) -> None:
    from fs_cdr import switch

    assert switch.command("rotate").startswith("-ERR")  # not running: says so
    path = tmp_path / "cdr.jsonl"
    engine = Engine(make_config({"cdr": {"file": {"path": str(path)}}}, tmp_path)).start()
    switch._engine = engine
    try:
        engine.handle(legs(1)[0])
        assert engine.flush(10)
        answer = switch.command("rotate")
        assert answer.startswith(f"+OK {path} -> {path}.20") and not path.exists()
    finally:
        switch._engine = None
        engine.stop(2.0)


def test_an_unwritable_directory_spools_every_record_and_they_arrive_once_it_is_fixed(tmp_path, engines) -> None:
    """The directory cannot be made (a plain file is in its place): the sink fails like a database
    that is down, records wait in the spool, and each lands once when the directory can be made."""
    blocker = tmp_path / "cdr"
    blocker.write_text("not a directory")
    engine = engines(make_config({"cdr": {"durable_window_ms": 100, "file": {"path": str(blocker / "cdr.jsonl")}}},
                                 tmp_path))
    events = legs(50)
    for event in events:
        engine.handle(event)
    assert wait_for(lambda: engine.status()["sinks"][0]["spooled"] == 50, 10), engine.status()
    status = engine.status()["sinks"][0]
    assert not status["healthy"] and "cannot open" in status["last_error"]
    blocker.unlink()
    engine.replay()
    assert engine.flush(20), engine.status()
    counts = Counter(json.loads(line)["uuid"] for line in lines_of(blocker))
    assert set(counts) == {event["Unique-ID"] for event in events} and set(counts.values()) == {1}


@contextlib.contextmanager
def small_tmpfs(directory: Any, size: str = "1m") -> Iterator[None]:
    directory.mkdir()
    try:
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
                                check=False, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as error:
        pytest.skip(f"cannot mount a size-limited tmpfs for the full-disk test: {error}")
    if result.returncode != 0:
        pytest.skip(f"cannot mount a size-limited tmpfs for the full-disk test: {result.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False, capture_output=True, timeout=30)


def test_a_full_disk_spools_the_records_leaves_no_torn_line_and_each_arrives_once_after(tmp_path, engines) -> None:
    disk = tmp_path / "disk"
    with small_tmpfs(disk):
        filler = disk / "filler"
        with open(filler, "wb") as handle:  # fill the disk but for 40 KB
            handle.write(b"x" * (1024 * 1024 - 40 * 1024))
        engine = engines(make_config({"cdr": {"details": True, "durable_window_ms": 100, "file": {
            "path": str(disk / "cdr.jsonl"), "batch_size": 20}}}, tmp_path))
        events = legs(100)
        deadline = time.monotonic() + 30
        for event in events:
            engine.handle(event)
            time.sleep(0.002)
        assert wait_for(lambda: engine.status()["sinks"][0]["spooled"] > 0, 10), engine.status()
        status = engine.status()["sinks"][0]
        assert "No space left" in status["last_error"], status
        before = lines_of(disk, "cdr.jsonl")
        assert all(line.endswith("}") for line in before)  # whole documents only
        assert len(before) < len(events)
        filler.unlink()
        engine.replay()
        assert engine.flush(20), engine.status()
        assert time.monotonic() < deadline
        counts = Counter(json.loads(line)["uuid"] for line in lines_of(disk, "cdr.jsonl"))
        assert set(counts) == {event["Unique-ID"] for event in events} and set(counts.values()) == {1}
        engine.stop(2.0)


def test_a_variable_is_read_from_details_exactly_as_decoding_all_of_them_would() -> None:
    """The CSV line reads only the template's variables out of ``details``; values that look like
    keys, escapes, quotes, non-ASCII and lists read as a full decode reads them."""
    from fs_cdr.channel import dumps
    from fs_cdr.sinks.file import _UNREAD, detail_variable

    tricky = {"a": 'x","start_stamp":"forged', "start_stamp": "2026-11-27 02:24:06", "b": "\\", "q": 'say "hi"\\',
              "tail\\": "\\\\\"", "zoë": "张\n\t", "list": ["1", "2"], "last": ""}
    details = dumps(tricky)
    for name, value in tricky.items():
        if "\\" in name or "ë" in name:
            continue
        found = detail_variable(details, (f'{{"{name}":', f',"{name}":'))
        assert found == (_UNREAD if isinstance(value, list) else value), name
    assert detail_variable(details, ('{"missing":', ',"missing":')) is None
    assert detail_variable(dumps({"first": "1"}), ('{"first":', ',"first":')) == "1"
