"""The mod_python3 entry points, with a stand-in ``freeswitch`` module that behaves like the real one
where it matters: the named module is reloaded on every call, events come from an EventConsumer
queue, logging goes to consoleLog. (The real FreeSWITCH runs the same paths in test_freeswitch.py.)"""

from __future__ import annotations

import importlib
import json
import queue
import sys
import threading
import time
import types

import pytest

from processes import wait_for

from conftest import SCENARIOS, TOTAL_ROWS, database_entry, hangups, rows, scenario_events


class FakeEvent:
    def __init__(self, headers: dict) -> None:
        self.headers = headers

    def serialize(self, kind: str) -> str:
        assert kind == "json"
        return json.dumps(self.headers)

    def getHeader(self, name: str):  # noqa: N802 - FreeSWITCH's name
        value = self.headers.get(name)
        return None if value is None else str(value)


class FakeStream:
    def __init__(self) -> None:
        self.text = ""

    def write(self, text: str) -> None:
        self.text += text


@pytest.fixture
def fake_switch(tmp_path, monkeypatch):
    """A ``freeswitch`` module, a conf dir holding cdr.json, and a fresh fs_cdr.switch."""
    events: queue.Queue = queue.Queue()
    consumers: list = []
    log: list[tuple[str, str]] = []

    class EventConsumer:
        def __init__(self, name: str, subclass: str = "", length: int = 5000) -> None:
            self.bound = [name]
            self.length = length
            consumers.append(self)

        def bind(self, name: str, subclass: str = "") -> None:
            self.bound.append(name)

        def pop(self, block: int = 0, timeout: int = 0):
            try:
                return events.get(timeout=timeout / 1000.0) if block else events.get_nowait()
            except queue.Empty:
                return None

    module = types.ModuleType("freeswitch")
    module.EventConsumer = EventConsumer
    module.consoleLog = lambda level, text: log.append((level, text))
    variables = {"conf_dir": str(tmp_path), "db_dir": str(tmp_path), "storage_dir": str(tmp_path)}
    module.getGlobalVariable = lambda name: variables.get(name)
    monkeypatch.setitem(sys.modules, "freeswitch", module)
    monkeypatch.delitem(sys.modules, "fs_cdr.switch", raising=False)
    (tmp_path / "cdr.json").write_text(json.dumps(
        {"cdr": {"database": database_entry("sqlite", "cdr", tmp_path), "spool_dir": str(tmp_path / "spool")}}))
    import fs_cdr

    switch = importlib.import_module("fs_cdr.switch")
    state = types.SimpleNamespace(events=events, consumers=consumers, log=log, tmp_path=tmp_path,
                                  switch=switch, fs_cdr=fs_cdr, variables=variables)
    yield state
    switch.stop()
    sys.modules.pop("fs_cdr.switch", None)


def api(state, args: str) -> str:
    """What ``python fs_cdr <args>`` does in mod_python3: reload the named module, call fsapi."""
    module = importlib.reload(state.fs_cdr)
    stream = FakeStream()
    module.fsapi("na", stream, None, args)
    return stream.text


def source_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "fs_cdr-source"]


def test_python_fs_cdr_on_every_call_starts_one_engine(fake_switch) -> None:
    for _ in range(25):
        module = importlib.reload(fake_switch.fs_cdr)
        module.handler(object(), "")
    assert len(source_threads()) == 1
    assert len(fake_switch.consumers) == 1
    consumer = fake_switch.consumers[0]
    assert consumer.bound == ["CHANNEL_HANGUP_COMPLETE", "SHUTDOWN_REQUESTED", "SHUTDOWN"]
    assert consumer.length >= 100_000
    assert "already running" in api(fake_switch, "start")


def test_real_time_binds_the_events_its_sinks_need(fake_switch) -> None:
    """A table takes every state change but CHANNEL_HANGUP (its final record follows within
    milliseconds and replaces it); a Redis channel, added by a reload, publishes every change: the
    source then binds CHANNEL_HANGUP too."""
    from fs_cdr.realtime import STATES

    path = fake_switch.tmp_path / "cdr.json"
    config = json.loads(path.read_text())
    config["cdr"]["database"]["real"] = True
    path.write_text(json.dumps(config))
    api(fake_switch, "start")
    consumer = fake_switch.consumers[0]
    assert wait_for(lambda: "CHANNEL_CREATE" in consumer.bound, 5)
    assert set(consumer.bound) == {"CHANNEL_HANGUP_COMPLETE", "SHUTDOWN_REQUESTED", "SHUTDOWN"} | (
        set(STATES) - {"CHANNEL_HANGUP"})
    config["cdr"]["redis"] = {"channel": "fs_cdr_test:binding", "real": True}
    path.write_text(json.dumps(config))
    assert api(fake_switch, "reload").startswith("+OK")
    assert wait_for(lambda: "CHANNEL_HANGUP" in consumer.bound, 5)
    assert len(consumer.bound) == len(set(consumer.bound))  # nothing bound twice


def test_events_from_the_consumer_become_rows_and_status_counts_them(fake_switch) -> None:
    importlib.reload(fake_switch.fs_cdr).runtime("")
    for scenario in SCENARIOS:
        for event in scenario_events(scenario):
            fake_switch.events.put(FakeEvent(event))
    deadline = time.time() + 10
    while fake_switch.switch._engine.records < TOTAL_ROWS and time.time() < deadline:
        time.sleep(0.02)
    assert api(fake_switch, "flush").startswith("+OK")
    assert len(rows("sqlite", fake_switch.tmp_path, "cdr")) == TOTAL_ROWS
    table = api(fake_switch, "status")
    assert f"records {TOTAL_ROWS}" in table and "sqlite" in table
    status = json.loads(api(fake_switch, "status json"))
    assert status["sinks"][0]["written"] == TOTAL_ROWS and status["sinks"][0]["healthy"] is True
    assert any("[fs_cdr]" in text and "started" in text for _, text in fake_switch.log)


def test_reload_with_a_bad_file_keeps_the_running_configuration(fake_switch) -> None:
    api(fake_switch, "start")
    path = fake_switch.tmp_path / "cdr.json"
    good = path.read_text()
    path.write_text('{"cdr": {"database": {"dbtype": "sqlite", "tabel": "x"}}}')
    answer = api(fake_switch, "reload")
    assert answer.startswith("-ERR") and "cdr.database.tabel" in answer
    assert any(level == "err" and "reload refused" in text for level, text in fake_switch.log)
    engine = fake_switch.switch._engine
    assert engine.config.databases[0].table == "cdr"
    fake_switch.events.put(FakeEvent(hangups("a_single_null")[0]))
    path.write_text(good.replace('"table": "cdr"', '"table": "cdr2"'))
    deadline = time.time() + 5
    while engine.records < 1 and time.time() < deadline:
        time.sleep(0.02)
    assert api(fake_switch, "flush").startswith("+OK")
    assert len(rows("sqlite", fake_switch.tmp_path, "cdr")) == 1
    assert api(fake_switch, "reload").startswith("+OK")
    fake_switch.events.put(FakeEvent(hangups("b_bridge_null")[0]))
    deadline = time.time() + 5
    while engine.records < 2 and time.time() < deadline:
        time.sleep(0.02)
    assert api(fake_switch, "flush").startswith("+OK")
    assert len(rows("sqlite", fake_switch.tmp_path, "cdr2")) == 1


def test_shutdown_event_spools_and_the_next_start_writes_them(fake_switch) -> None:
    api(fake_switch, "start")
    engine = fake_switch.switch._engine
    fake_switch.events.put(FakeEvent({"Event-Name": "SHUTDOWN_REQUESTED"}))
    hangup = hangups("a_single_null")[0]
    fake_switch.events.put(FakeEvent(hangup))
    deadline = time.time() + 5
    while engine.records < 1 and time.time() < deadline:
        time.sleep(0.02)
    assert engine.shutting_down
    # fsynced to the spool on arrival (engine.records counts it just before it is dispatched); the
    # writer may already have replayed it into SQLite
    assert wait_for(lambda: engine.lanes[0].spool.spooled_total == 1, 5)
    api(fake_switch, "stop")
    assert "started" in api(fake_switch, "start")
    assert api(fake_switch, "flush").startswith("+OK")
    assert [row["uuid"] for row in rows("sqlite", fake_switch.tmp_path, "cdr")] == [hangup["Unique-ID"]]


def test_a_broken_event_is_logged_and_the_source_keeps_going(fake_switch) -> None:
    api(fake_switch, "start")

    class Broken:
        def serialize(self, kind: str) -> str:
            return "{not json"

        def getHeader(self, name: str):  # noqa: N802
            return "CHANNEL_HANGUP_COMPLETE" if name == "Event-Name" else None

    fake_switch.events.put(Broken())
    fake_switch.events.put(FakeEvent({"Event-Name": "CHANNEL_HANGUP_COMPLETE"}))
    fake_switch.events.put(FakeEvent(hangups("a_single_null")[0]))
    engine = fake_switch.switch._engine
    deadline = time.time() + 5
    while engine.records < 1 and time.time() < deadline:
        time.sleep(0.02)
    # both are counted as malformed and logged on one line each; neither stops the source
    assert engine.records == 1 and engine.malformed == 2
    assert any(level == "warning" and "not a JSON object" in text for level, text in fake_switch.log), fake_switch.log
    assert any(level == "warning" and "no Unique-ID" in text for level, text in fake_switch.log)


def test_unknown_command_prints_usage_and_a_bad_start_says_why(fake_switch) -> None:
    assert api(fake_switch, "frobnicate").startswith("-USAGE")
    (fake_switch.tmp_path / "cdr.json").write_text("{}")
    answer = api(fake_switch, "status")
    assert answer.startswith("-ERR fs_cdr is not running")
    answer = api(fake_switch, "start")
    assert answer.startswith("-ERR") and "cdr" in answer


def _mysql_unreachable(fake_switch, spool_dir: str) -> None:
    (fake_switch.tmp_path / "cdr.json").write_text(json.dumps({"cdr": {"spool_dir": spool_dir, "database": {
        "dbtype": "mysql", "connectionstring": "127.0.0.1,1@test", "username": "root",  # nothing on port 1
        "timeout_s": 1, "worker_process": False}}}))


def test_replay_answers_ok_while_every_sink_takes_writes(fake_switch) -> None:
    api(fake_switch, "start")
    fake_switch.events.put(FakeEvent(hangups("a_single_null")[0]))
    assert wait_for(lambda: fake_switch.switch._engine.records == 1, 5)
    assert api(fake_switch, "flush").startswith("+OK")
    assert api(fake_switch, "replay") == "+OK replaying sqlite: 0 spooled\n"


def test_replay_answers_err_naming_an_unreachable_sink_and_its_error(fake_switch) -> None:
    _mysql_unreachable(fake_switch, str(fake_switch.tmp_path / "spool"))
    api(fake_switch, "start")
    for event in hangups("b_bridge_null"):
        fake_switch.events.put(FakeEvent(event))
    assert wait_for(lambda: fake_switch.switch._engine.lanes[0].spool.pending == 2, 10)
    lane = fake_switch.switch._engine.lanes[0]
    answer = api(fake_switch, "replay")
    assert answer.startswith("-ERR replaying mysql: 2 spooled (the sink fails: "), answer
    assert "Can't connect" in answer and "127.0.0.1" in answer, answer
    assert lane.disk == "ok" and lane.status()["lost"] == 0  # only the sink stands in the way


def test_replay_answers_err_when_the_spool_disk_refuses(fake_switch) -> None:
    """The sink takes writes, the spool's disk is read-only: -ERR, naming the error."""
    from test_disk_faults import remount, tiny_disk

    spool_dir = str(fake_switch.tmp_path / "disk")
    config = json.loads((fake_switch.tmp_path / "cdr.json").read_text())
    config["cdr"]["spool_dir"] = spool_dir
    (fake_switch.tmp_path / "cdr.json").write_text(json.dumps(config))
    with tiny_disk(spool_dir):
        remount(spool_dir, "ro")
        try:
            api(fake_switch, "start")
            fake_switch.events.put(FakeEvent(hangups("a_single_null")[0]))
            assert wait_for(lambda: fake_switch.switch._engine.records == 1, 5)
            assert api(fake_switch, "flush").startswith("+OK")  # written all the same
            answer = api(fake_switch, "replay")
            assert answer.startswith("-ERR replaying sqlite: 0 spooled (the spool's disk refuses: EROFS"), answer
            assert "the sink fails" not in answer
        finally:
            fake_switch.switch.stop()
            remount(spool_dir, "rw")
