"""Faults injected into the real servers: records stream in while MariaDB, PostgreSQL or Redis is
stopped and started again; a server that accepts and never answers; a record the database refuses.
Every record must arrive exactly once, and the source must never block."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import pytest

from conftest import create_strict_mysql_table, database_entry, drop_table, hangups, make_config, rows
from fs_cdr.engine import Engine
from processes import wait_for
from servers import MariaDB, PostgreSQL, Redis, Server

pytestmark = pytest.mark.faults

TEMPLATE = hangups("b_bridge_null")[1]


def event(index: int, tag: str) -> dict[str, Any]:
    return dict(TEMPLATE, **{"Unique-ID": f"{tag}-{index:06d}", "variable_queue_name": tag})


class Feeder(threading.Thread):
    """Offers ``count`` hangups at ``rate`` per second, like FreeSWITCH's source thread would, and
    measures how long each ``handle`` took (it must never wait for a sink)."""

    def __init__(self, engine: Engine, count: int, rate: float, tag: str) -> None:
        super().__init__()
        self.engine, self.count, self.rate, self.tag = engine, count, rate, tag
        self.slowest = 0.0

    def run(self) -> None:
        start = time.monotonic()
        for index in range(self.count):
            pause = start + index / self.rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            before = time.perf_counter()
            self.engine.handle(event(index, self.tag))
            self.slowest = max(self.slowest, time.perf_counter() - before)


def outage(server: Server, engine: Engine, tag: str, count: int = 600, rate: float = 120.0,
           down_after_s: float = 1.0, down_for_s: float = 3.0) -> Feeder:
    feeder = Feeder(engine, count, rate, tag)
    feeder.start()
    time.sleep(down_after_s)
    server.stop()
    try:
        time.sleep(down_for_s)
        assert engine.status()["sinks"][0]["healthy"] is False
    finally:
        server.start()
    feeder.join()
    assert engine.flush(90), engine.status()
    return feeder


@pytest.mark.parametrize("server, kind", [(MariaDB(), "mysql"), (PostgreSQL(), "postgresql")])
def test_database_restart_while_records_stream_in(server, kind, tmp_path, table_name, engines) -> None:
    config = make_config({"cdr": {"fields": ["queue_name"], "database": dict(
        database_entry(kind, table_name, tmp_path), timeout_s=2)}}, tmp_path)
    engine = engines(config)
    try:
        feeder = outage(server, engine, table_name)
        found = [row["uuid"] for row in rows(kind, tmp_path, table_name, "uuid")]
        status = engine.status()["sinks"][0]
        print(f"\n{server.name}: sent 600, arrived {len(set(found))}, duplicated {len(found) - len(set(found))}, "
              f"spooled {engine.lanes[0].spool.spooled_total}, replayed {status['replayed']}, "
              f"slowest handle {feeder.slowest * 1000:.2f} ms")
        assert sorted(found) == [f"{table_name}-{index:06d}" for index in range(600)]
        assert engine.lanes[0].spool.spooled_total > 0 and status["spooled"] == 0 and status["healthy"]
        assert feeder.slowest < 0.2
    finally:
        drop_table(kind, tmp_path, table_name)


def test_redis_restart_while_records_stream_in(tmp_path, table_name, engines) -> None:
    import redis

    key = f"fs_cdr_test:{table_name}"
    server = Redis(str(tmp_path))
    server.start()
    engine = engines(make_config({"cdr": {"redis": {"list": key, "port": server.port, "timeout_s": 2}}}, tmp_path))
    try:
        feeder = outage(server, engine, table_name)
        found = [item.decode() for item in redis.Redis(port=server.port).lrange(key, 0, -1)]
        import json

        uuids = [json.loads(item)["uuid"] for item in found]
        print(f"\nredis: sent 600, arrived {len(set(uuids))}, duplicated {len(uuids) - len(set(uuids))}, "
              f"spooled {engine.lanes[0].spool.spooled_total}, slowest handle {feeder.slowest * 1000:.2f} ms")
        assert sorted(uuids) == [f"{table_name}-{index:06d}" for index in range(600)]
        assert feeder.slowest < 0.2
    finally:
        server.stop()


class StalledServer:
    """Accepts TCP connections and never says a word (a hung database or a black-holed proxy)."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        try:
            while True:
                connection, _ = self.listener.accept()
                self.accepted.append(connection)
        except OSError:
            pass

    def close(self) -> None:
        self.listener.close()
        for connection in self.accepted:
            connection.close()


@pytest.mark.parametrize("dbtype", ["mysql", "pgsql"])
def test_a_server_that_never_answers_is_timed_out_and_records_spooled(dbtype, tmp_path, engines) -> None:
    stalled = StalledServer()
    try:
        config = make_config({"cdr": {"database": {"dbtype": dbtype, "connectionstring": f"127.0.0.1,{stalled.port}@test",
                                                   "timeout_s": 1}}}, tmp_path)
        engine = engines(config)
        feeder = Feeder(engine, 200, 400.0, "stall")
        feeder.run()
        lane = engine.lanes[0]
        assert feeder.slowest < 0.2
        deadline = time.time() + 5
        while lane.spool.pending < 200 and time.time() < deadline:
            time.sleep(0.05)
        assert lane.spool.pending == 200 and not lane.healthy
        assert stalled.accepted
        # the writer gives up by itself (timeout_s), reports it, and keeps retrying with backoff
        deadline = time.time() + 10
        while not lane.stats.last_error and time.time() < deadline:
            time.sleep(0.05)
        assert lane.stats.last_error, "the writer never timed out"
        assert lane.spool.pending == 200
    finally:
        stalled.close()


def test_a_burst_of_hangups_is_on_disk_within_the_window_while_the_database_hangs(tmp_path, engines,
                                                                                  monkeypatch) -> None:
    """A mass hangup (a trunk drops, a conference ends) while the database hangs: the source thread is
    busy for seconds and releases the GIL only for a moment per event, as EventConsumer.pop does. The
    guard must still get its turn and put every record on disk within about the durability window
    (CPython hands the GIL back to the source each time unless the source really yields)."""
    import select

    from fs_cdr.spool import Journal, Spool

    on_disk: dict[str, float] = {}

    def stamped(original):
        def append(self, records):
            records = list(records)
            result = original(self, records)
            now = time.perf_counter()
            for record in records:
                on_disk.setdefault(record["uuid"], now)
            return result
        return append

    monkeypatch.setattr(Journal, "append", stamped(Journal.append))
    monkeypatch.setattr(Spool, "append", stamped(Spool.append))
    stalled = StalledServer()
    try:
        config = make_config({"cdr": {"details": True, "database": {
            "dbtype": "mysql", "connectionstring": f"127.0.0.1,{stalled.port}@test", "timeout_s": 5}}}, tmp_path)
        assert config.durable_window_ms == 200
        engine = engines(config)
        handed: dict[str, float] = {}
        started = time.perf_counter()
        index = 0
        while time.perf_counter() - started < 2.0:
            select.select((), (), (), 0)  # what pop() does between events: the GIL released for a moment
            record = event(index, "burst")
            handed[record["Unique-ID"]] = time.perf_counter()
            engine.handle(record)
            index += 1
        assert wait_for(lambda: len(on_disk) == len(handed), 10), f"{len(on_disk)} of {len(handed)} on disk"
        delays = sorted(on_disk[uuid] - handed[uuid] for uuid in handed)
        print(f"\nburst of {len(handed)} hangups in 2 s, database hung: on disk after p50 "
              f"{delays[len(delays) // 2] * 1000:.0f} ms, max {delays[-1] * 1000:.0f} ms")
        assert delays[-1] < 0.8, f"a record waited {delays[-1]:.2f} s before it was on disk (window 0.2 s)"
    finally:
        stalled.close()


@pytest.mark.parametrize("worker_process", [True, False], ids=["sink in a worker", "sink in-process"])
def test_a_record_the_database_refuses_is_set_aside_and_the_rest_flow(worker_process, tmp_path, table_name,
                                                                      engines) -> None:
    create_strict_mysql_table(tmp_path, table_name, "`queue_name` VARCHAR(10)")
    try:
        engine = engines(make_config({"cdr": {"fields": ["queue_name"], "database": dict(
            database_entry("mysql", table_name, tmp_path), worker_process=worker_process)}}, tmp_path))
        for index in range(50):
            record = event(index, "ok")
            record["variable_queue_name"] = "x" * 40 if index == 17 else "short"
            engine.handle(record)
        assert engine.flush(20)
        found = {row["uuid"] for row in rows("mysql", tmp_path, table_name, "uuid")}
        assert len(found) == 49 and "ok-000017" not in found
        status = engine.status()["sinks"][0]
        assert status["rejected"] == 1 and status["healthy"]
        rejected = (tmp_path / "spool" / "mysql" / "rejected.jsonl").read_text()
        assert "ok-000017" in rejected and "Data too long" in rejected
    finally:
        drop_table("mysql", tmp_path, table_name)
