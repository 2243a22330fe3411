"""``"worker_process": true``: each writer runs its sink in a child Python process. The rows must be
the same as with the sink in-process, and nothing may be lost when the child dies, hangs, or its
parent is killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import SCENARIOS, TOTAL_ROWS, database_entry, drop_table, hangups, make_config, rows, scenario_events
from fs_cdr.errors import ConfigError
from fs_cdr.sinks.worker import ProcessSink
from processes import process_gone, wait_for

TEMPLATE = hangups("b_bridge_null")[1]


def event(index: int, tag: str) -> dict:
    return dict(TEMPLATE, **{"Unique-ID": f"{tag}-{index:06d}", "variable_queue_name": tag})


def worker_of(engine) -> ProcessSink:
    sink = engine.lanes[0].writers[0]._sink
    assert isinstance(sink, ProcessSink), sink
    return sink



def alive(pid: int) -> bool:
    return not process_gone(pid)


@pytest.fixture
def redis_list(table_name):
    """A Redis list key of this test's own and a client; the key is deleted afterwards."""
    import redis

    key = f"fs_cdr_test:{table_name}"
    client = redis.Redis()
    yield key, client
    client.delete(key)
    client.close()


def test_rows_through_a_worker_process_equal_rows_written_in_process(sql_kind, table_name, tmp_path, engines) -> None:
    fields = ["queue_name", "number:billsec"]
    in_process = make_config({"cdr": {"details": True, "fields": fields, "database": dict(
        database_entry(sql_kind, table_name, tmp_path), worker_process=False)}}, tmp_path)
    other = table_name + "w"
    in_worker = make_config({"cdr": {"details": True, "fields": fields, "spool_dir": str(tmp_path / "spool-w"),
                                     "database": database_entry(sql_kind, other, tmp_path)}}, tmp_path)
    engine, worker_engine = engines(in_process), engines(in_worker)
    for scenario in SCENARIOS:
        for item in scenario_events(scenario):
            engine.handle(item)
            worker_engine.handle(item)
    assert engine.flush(30) and worker_engine.flush(30), worker_engine.status()
    writers = worker_engine.lanes[0].writers
    children = [writer._sink.pid for writer in writers]
    assert all(child and child != os.getpid() and alive(child) for child in children)
    assert len(set(children)) == len(writers) == (1 if sql_kind == "sqlite" else 2)  # a server gets two
    assert worker_engine.status()["sinks"][0]["worker_pids"] == children
    assert engine.status()["sinks"][0]["worker_pids"] == []
    try:
        expected = sorted(rows(sql_kind, tmp_path, table_name), key=lambda row: row["uuid"])
        found = sorted(rows(sql_kind, tmp_path, other), key=lambda row: row["uuid"])
        assert len(found) == TOTAL_ROWS
        assert found == expected
        assert worker_engine.status()["sinks"][0]["written"] == TOTAL_ROWS
    finally:
        drop_table(sql_kind, tmp_path, other)


def test_redis_through_a_worker_process(tmp_path, table_name, redis_list, engines) -> None:
    key, client = redis_list
    engine = engines(make_config({"cdr": {"details": True, "redis": {"list": key, "worker_process": True}}}, tmp_path))
    for index in range(300):
        engine.handle(event(index, table_name))
    assert engine.flush(20), engine.status()
    documents = [json.loads(item) for item in client.lrange(key, 0, -1)]
    assert sorted(document["uuid"] for document in documents) == [f"{table_name}-{i:06d}" for i in range(300)]
    assert documents[0]["details"]["queue_name"] == table_name


def test_documents_reach_redis_byte_for_byte_when_written_in_pieces(tmp_path, table_name, redis_list,
                                                                                engines, monkeypatch) -> None:
    """An encoded batch crosses to the worker as raw documents (os.pwritev from their own buffers into
    the memory file the two share). A write may take any part of what it is given: here each call
    takes at most 4,099 bytes, cut mid-document and mid-character, and every document must still
    arrive exactly as fs_cdr made it."""
    from fs_cdr.sinks import worker as worker_module
    from fs_cdr.sinks.redis import payload

    real_pwritev, calls = os.pwritev, []

    def stingy(descriptor: int, buffers: list, offset: int) -> int:
        taken, left = [], 4099
        for buffer in buffers:
            if left <= 0:
                break
            piece = memoryview(buffer)[:left]
            taken.append(piece)
            left -= len(piece)
        calls.append(len(taken))
        return real_pwritev(descriptor, taken, offset)

    monkeypatch.setattr(worker_module.os, "pwritev", stingy)
    key, client = redis_list
    engine = engines(make_config({"cdr": {"details": True, "fields": ["queue_name"], "redis": {
        "list": key, "worker_process": True}}}, tmp_path))
    expected = []
    for index in range(700):
        item = dict(event(index, table_name), variable_queue_name=f"名前\u202e\"'\\ {index} " + "é" * (index % 50))
        expected.append(payload(engine.handle(item)))
    assert engine.flush(30), engine.status()
    assert client.lrange(key, 0, -1) == list(reversed(expected))
    assert len(calls) >= sum(map(len, expected)) // 4099  # the documents did cross in pieces


def test_an_outsized_batch_does_not_keep_its_memory_and_later_batches_still_arrive(tmp_path, table_name, redis_list,
                                                                                   engines, monkeypatch) -> None:
    """Batches reach the worker through a memory file. One far larger than usual (huge variables)
    must not pin that much memory for the life of the worker: the file is cut back once the batch is
    answered, and the smaller batches after it (read through the worker's larger, older mapping)
    arrive intact."""
    from fs_cdr.sinks import worker as worker_module
    from fs_cdr.sinks.redis import payload

    monkeypatch.setattr(worker_module, "_EXCHANGE_KEEP", 3 << 20)
    key, client = redis_list
    engine = engines(make_config({"cdr": {"details": True, "fields": ["queue_name"], "redis": {
        "list": key, "worker_process": True, "batch_size": 50, "flush_interval_ms": 5000}}}, tmp_path))
    sink = worker_of_when_open(engine)
    expected, sizes = [], []
    for round_number, filler in enumerate((1_000, 200_000, 10, 100_000, 10)):
        for index in range(50):
            item = dict(event(round_number * 50 + index, table_name),
                        variable_queue_name=f"{round_number}-{index}-" + "x" * filler)
            expected.append(payload(engine.handle(item)))
        assert engine.flush(30), engine.status()
        sizes.append(os.fstat(sink._exchange).st_size)
    assert client.lrange(key, 0, -1) == list(reversed(expected))
    assert sizes[0] > 50 * 1_000 and sizes[2] > 0  # small batches stay in the file, as they were
    assert sizes[1] == 0 and sizes[3] == 0  # a batch past the limit (10 MB, 5 MB) was let go
    assert worker_of(engine) is sink and alive(sink.pid)  # one worker did all of it


def worker_of_when_open(engine, timeout_s: float = 10.0) -> ProcessSink:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        sink = engine.lanes[0].writers[0]._sink
        if isinstance(sink, ProcessSink) and sink._exchange is not None:
            return sink
        time.sleep(0.02)
    raise AssertionError("the worker did not start")


def test_a_killed_worker_is_started_again_and_every_record_arrives_once(tmp_path, table_name, engines) -> None:
    engine = engines(make_config({"cdr": {"fields": ["queue_name"], "database": dict(
        database_entry("postgresql", table_name, tmp_path), worker_process=True, workers=1)}}, tmp_path))
    try:
        for index in range(200):
            engine.handle(event(index, table_name))
        assert wait_for(lambda: engine.lanes[0].stats.written >= 50, 20)
        first = worker_of(engine).pid
        os.kill(first, signal.SIGKILL)
        for index in range(200, 400):
            engine.handle(event(index, table_name))
        assert engine.flush(60), engine.status()
        found = [row["uuid"] for row in rows("postgresql", tmp_path, table_name, "uuid")]
        assert sorted(found) == [f"{table_name}-{index:06d}" for index in range(400)]
        second = worker_of(engine).pid
        assert second != first and alive(second)
        assert engine.status()["sinks"][0]["healthy"]
    finally:
        drop_table("postgresql", tmp_path, table_name)


def test_a_redis_worker_killed_mid_batch_is_replaced_and_every_record_arrives(tmp_path, table_name, redis_list,
                                                                              engines) -> None:
    """kill -9 the worker while batches cross the pipe as raw documents: the writer sees a broken
    pipe or a lost answer, starts a new worker and retries; every record reaches the list (Redis is
    at least once: a batch written just before the kill may be pushed again, never one lost)."""
    key, client = redis_list
    engine = engines(make_config({"cdr": {"details": True, "redis": {"list": key, "worker_process": True}}}, tmp_path))
    for index in range(1500):
        engine.handle(event(index, table_name))
    assert wait_for(lambda: engine.lanes[0].stats.written >= 500, 20)
    first = worker_of(engine).pid
    os.kill(first, signal.SIGKILL)  # while the rest is being written
    for index in range(1500, 3000):
        engine.handle(event(index, table_name))
    assert engine.flush(60), engine.status()
    listed = {json.loads(item)["uuid"] for item in client.lrange(key, 0, -1)}
    assert listed == {f"{table_name}-{index:06d}" for index in range(3000)}
    status = engine.status()["sinks"][0]
    assert status["healthy"] and status["retries"] >= 1, status
    assert worker_of(engine).pid != first


def test_a_hung_worker_costs_the_source_nothing_and_its_batch_is_spooled(tmp_path, table_name, engines) -> None:
    """SIGSTOP the child mid-stream: the guard moves what waits to the spool within the window; once
    the child runs again everything is written, and nothing twice."""
    engine = engines(make_config({"cdr": {"fields": ["queue_name"], "durable_window_ms": 200, "database": dict(
        database_entry("postgresql", table_name, tmp_path), worker_process=True, workers=1)}}, tmp_path))
    try:
        engine.handle(event(0, table_name))
        assert engine.flush(20)
        child = worker_of(engine).pid
        os.kill(child, signal.SIGSTOP)
        slowest = 0.0
        for index in range(1, 301):
            started = time.perf_counter()
            engine.handle(event(index, table_name))
            slowest = max(slowest, time.perf_counter() - started)
            time.sleep(0.002)
        lane = engine.lanes[0]
        assert wait_for(lambda: lane.spool.pending + lane.journal.held >= 250, 10), engine.status()
        os.kill(child, signal.SIGCONT)
        assert engine.flush(90), engine.status()
        found = [row["uuid"] for row in rows("postgresql", tmp_path, table_name, "uuid")]
        assert sorted(found) == [f"{table_name}-{index:06d}" for index in range(301)]
        assert slowest < 0.2
    finally:
        drop_table("postgresql", tmp_path, table_name)


def test_worker_process_must_be_a_boolean(tmp_path) -> None:
    with pytest.raises(ConfigError) as caught:
        make_config({"cdr": {"redis": {"list": "x", "worker_process": "yes"}}}, tmp_path)
    assert "cdr.redis.worker_process" in str(caught.value)


def test_the_worker_ends_when_its_parent_is_killed(tmp_path) -> None:
    """kill -9 of FreeSWITCH must not leave a worker behind: it sees its stdin close and exits."""
    script = textwrap.dedent(f"""
        import sys, time
        sys.path[:0] = [{os.path.dirname(os.path.abspath(__file__))!r}]
        from conftest import make_config
        from fs_cdr.engine import Engine
        from pathlib import Path
        config = make_config({{"cdr": {{"database": {{"dbtype": "sqlite", "worker_process": True,
                              "connectionstring": {str(tmp_path / "cdr.sqlite")!r}}}}}}}, Path({str(tmp_path)!r}))
        engine = Engine(config).start()
        while engine.lanes[0].writers[0]._sink is None:
            time.sleep(0.05)
        print(engine.lanes[0].writers[0]._sink.pid, flush=True)
        time.sleep(60)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        assert alive(child)
        parent.kill()
        parent.wait(10)
        assert wait_for(lambda: not alive(child), 10), "the worker outlived its parent"
    finally:
        if parent.poll() is None:
            parent.kill()


@pytest.mark.parametrize("hello", [b"fs_cdr worker ready", b"fs_cdr worker v2 ok"])
def test_a_worker_from_other_fs_cdr_files_is_refused_with_the_reason(monkeypatch, hello) -> None:
    """The child imports fs_cdr from disk: replaced while FreeSWITCH ran, the files may speak an older
    protocol than the running engine (v1 pickled batches into the pipe, v2 sent documents through
    it). That must be a clear error at start, not garbled batches."""
    from fs_cdr.errors import RetriableError
    from fs_cdr.sinks import worker as worker_module

    monkeypatch.setattr(worker_module, "_CHILD", f"import os, sys, time; os.write(1, {hello!r}); "
                                                 "sys.stdin.buffer.read()")
    sink = ProcessSink(dict, "old", 1.0)
    with pytest.raises(RetriableError, match="older fs_cdr than the one FreeSWITCH loaded.*restart FreeSWITCH"):
        sink.open()
    assert sink.pid is None  # reaped, not left behind


def test_a_sink_the_worker_cannot_load_is_a_retriable_error_that_says_why() -> None:
    """A worker whose Python lacks what the sink needs (a driver, a newer fs_cdr) answers with the
    reason instead of dying; the lane retries with backoff and spools meanwhile."""
    import importlib

    from fs_cdr.errors import RetriableError

    class Unloadable:
        def __reduce__(self):
            return (importlib.import_module, ("fs_cdr_no_such_driver",))

    sink = ProcessSink(Unloadable, "broken", 1.0)
    sink._spawn()
    try:
        with pytest.raises(RetriableError) as caught:
            sink._call(("open", Unloadable()), 30)
        assert "No module named 'fs_cdr_no_such_driver'" in str(caught.value)
        # the same worker still answers: the failure was the request's, not the worker's
        with pytest.raises(RetriableError, match="no open sink"):
            sink.write([{"uuid": "x"}])
        assert sink.pid is not None and alive(sink.pid)
    finally:
        sink.close()
    with pytest.raises(RetriableError) as caught:
        sink.open()
    assert "fs_cdr_no_such_driver" in str(caught.value) and sink.pid is None  # reaped, not left behind


def test_a_worker_that_keeps_dying_leaves_no_pipes_open() -> None:
    """Each failed start is reaped and its pipes closed: a worker that dies at every attempt during a
    long outage must not use up FreeSWITCH's file descriptors."""
    from fs_cdr.errors import RetriableError

    class DiesAtOnce:
        def __reduce__(self):
            return (os._exit, (3,))

    before = len(os.listdir("/proc/self/fd"))
    kept = []  # the sinks and their errors (tracebacks and all) stay alive, as a logged error may
    for _ in range(20):
        sink = ProcessSink(DiesAtOnce, "dying", 1.0)
        with pytest.raises(RetriableError, match=r"exited \(exit code 3\)") as caught:
            sink.open()
        kept.append((sink, caught.value))
    assert len(os.listdir("/proc/self/fd")) == before
