"""fs_cdr benchmark: each figure beside the raw limit measured in the same run, as a ratio.

    make bench            (or: .venv/bin/python bench/run.py [--records N] [--freeswitch-calls N]
                           [--freeswitch-rounds N] [--sections sinks,latency,memory,freeswitch])

1. raw limits: a plain batched executemany of the same rows into the same kind of table (MariaDB,
   PostgreSQL, SQLite), pipelined LPUSH+PUBLISH (Redis), and one INSERT per transaction (what
   FreeSWITCH's own C CDR modules do, one per call);
2. fs_cdr end to end from a recorded event stream (JSON text, details on, 200-variable channels);
3. the source stage alone (decode -> record) on one core, and from it and (1) the CPU ceiling: the
   rate no writer starting from JSON events can pass on this machine's cores;
4. hangup-to-row latency at a fixed 500 records/s;
5. memory per queued record with 100,000 records queued and the database unreachable;
   (sections http, nats, file: bench/message_sinks.py, each beside its raw client in the same run)
6. where FreeSWITCH is installed: loopback calls with no CDR module, with mod_cdr_sqlite, and with
   fs_cdr to SQLite and MariaDB (calls/s, FreeSWITCH CPU seconds per 1,000 calls, rows).
Not part of the test suite: a shared machine's timings are for ratios, not for pass/fail.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import os
import platform
import resource
import select
import shutil
import socket
import statistics
import sys
import tempfile
import time
import uuid as uuidlib
from pathlib import Path
from typing import Any, Callable, Iterator

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from processes import processes  # noqa: E402

import fs_cdr.engine as engine_module  # noqa: E402
import fs_cdr.record as record_module  # noqa: E402
from fs_cdr.channel import decode_event, dumps  # noqa: E402
from fs_cdr.config import Paths, parse_config  # noqa: E402
from fs_cdr.engine import Engine  # noqa: E402
from fs_cdr.record import RecordBuilder  # noqa: E402
from fs_cdr.schema import table_columns  # noqa: E402
from fs_cdr.sinks.redis import payload  # noqa: E402
from fs_cdr.sinks.sql import SqlSink, dialect_for  # noqa: E402
from fs_cdr.sinks.worker import ProcessSink  # noqa: E402

TEMPLATE_FILE = ROOT / "tests/events/b_bridge_null.jsonl"
FIELDS = ["rtp_last_audio_codec_string", "number:billsec", "number:duration", "record_filename",
          "jsipid:sip_h_X-jssipid", "queue_name"]


def recorded_stream(count: int) -> list[bytes]:
    """``count`` CHANNEL_HANGUP_COMPLETE events as FreeSWITCH serializes them: the recorded b-leg,
    padded to 200 channel variables (a realistic SIP channel), each with its own uuid."""
    template = [decode_event(line) for line in TEMPLATE_FILE.read_bytes().splitlines()
                if b'"CHANNEL_HANGUP_COMPLETE"' in line][0]
    have = sum(1 for key in template if key.startswith("variable_"))
    for index in range(200 - have):
        template[f"variable_sip_h_X-Bench-{index}"] = f"value-{index}-" + "x" * (index % 40)
    template["variable_queue_name"] = "support"
    events = []
    for _ in range(count):
        call = str(uuidlib.uuid4())
        events.append(dumps(dict(template, **{"Unique-ID": call, "variable_uuid": call})).encode())
    return events


def config_for(kind: str, table: str, directory: Path, details: bool = True, **extra: Any):
    databases = {
        "mysql": {"dbtype": "mysql", "connectionstring": "127.0.0.1,3306@test", "username": "root", "table": table},
        "postgresql": {"dbtype": "pgsql", "connectionstring": "127.0.0.1,5432@test", "username": "postgres",
                       "table": table},
        "sqlite": {"dbtype": "sqlite", "connectionstring": str(directory / f"{table}.sqlite"), "table": table},
    }
    cdr: dict[str, Any] = {"details": details, "fields": FIELDS, "spool_dir": str(directory / f"spool-{table}")}
    if kind == "redis":
        cdr["redis"] = dict({"list": f"bench:{table}", "channel": f"bench:{table}"}, **extra)
    else:
        cdr["database"] = dict(databases[kind], **extra)
    return parse_config({"cdr": cdr}, Paths(str(directory), str(directory), str(directory)))


def sql_sink(config) -> SqlSink:
    database = config.databases[0]
    dialect = dialect_for(database.dbtype)
    assert dialect is not None
    sink = SqlSink(dialect, database, table_columns(config))
    sink.open()
    return sink


def drop(sink: SqlSink) -> None:
    cursor = sink.connection.cursor()
    cursor.execute(f"DROP TABLE IF EXISTS {sink.config.table}")
    sink.connection.commit()


class CpuMeter:
    """CPU seconds between start() and stop(): this process, its child processes (fs_cdr's sink
    workers), and the server's processes (PostgreSQL backends included)."""

    def __init__(self, server: str = "") -> None:
        self.server = server[:15]

    def _sample(self) -> tuple[float, dict[int, float], dict[int, float]]:
        me = os.getpid()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        everything = processes()
        children = {entry.pid: entry.cpu_s for entry in everything if entry.parent == me}
        server = {entry.pid: entry.cpu_s for entry in everything if self.server and entry.name.startswith(self.server)}
        return usage.ru_utime + usage.ru_stime, children, server

    def start(self) -> None:
        self._start = self._sample()

    def stop(self) -> None:
        own, children, server = self._sample()
        self.own = own - self._start[0]
        self.children = sum(cpu - self._start[1].get(pid, 0.0) for pid, cpu in children.items())
        self.server_cpu = sum(cpu - self._start[2].get(pid, 0.0) for pid, cpu in server.items())

    def seconds_per_record(self, count: int) -> float:
        return (self.own + self.children + self.server_cpu) / count

    def per_record(self, count: int) -> str:
        """µs of CPU per record: this process + workers + server."""
        parts = [f"{self.own / count * 1e6:.0f}"]
        parts.append(f"{self.children / count * 1e6:.0f}")
        parts.append(f"{self.server_cpu / count * 1e6:.0f}")
        return " + ".join(parts)


SERVERS = {"mysql": "mariadbd", "postgresql": "postgres", "sqlite": "", "redis": "redis-server"}


def raw_batched(config, records: list[dict], meter: CpuMeter) -> float:
    """Records/s of a plain executemany in batches of 500 with the same statement and rows."""
    sink = sql_sink(config)
    rows = sink.rows(records)
    meter.start()
    started = time.perf_counter()
    cursor = sink.connection.cursor()
    for start in range(0, len(rows), 500):
        cursor.executemany(sink.statement, rows[start:start + 500])
        sink.connection.commit()
    elapsed = time.perf_counter() - started
    meter.stop()
    drop(sink)
    sink.close()
    return len(rows) / elapsed


def raw_per_call(config, records: list[dict]) -> float:
    """Records/s of one INSERT and one commit per record, as mod_cdr_sqlite/mod_odbc_cdr do."""
    sink = sql_sink(config)
    rows = sink.rows(records)
    started = time.perf_counter()
    cursor = sink.connection.cursor()
    for row in rows:
        cursor.execute(sink.statement, row)
        sink.connection.commit()
    elapsed = time.perf_counter() - started
    drop(sink)
    sink.close()
    return len(rows) / elapsed


def raw_redis(config, records: list[dict], meter: CpuMeter) -> float:
    import redis

    client = redis.Redis()
    key = config.redis.list
    meter.start()
    started = time.perf_counter()
    for start in range(0, len(records), 500):
        documents = [payload(record) for record in records[start:start + 500]]
        pipe = client.pipeline(transaction=False)
        pipe.lpush(key, *documents)
        for document in documents:
            pipe.publish(key, document)
        pipe.execute()
    elapsed = time.perf_counter() - started
    meter.stop()
    client.delete(key)
    return len(records) / elapsed


def raw_redis_packed(config, records: list[dict], meter: CpuMeter) -> float:
    """The same commands packed as RESP by hand, as fs_cdr's RedisSink does (fs_cdr/sinks/redis.py),
    called directly in batches of 500: no queue, no worker, no journal. What redis-py's pipeline
    costs beyond that is what the hand packing saves; shown beside the raw limit, not instead of it."""
    import redis

    from fs_cdr.sinks.redis import RedisSink

    sink = RedisSink(config.redis)
    sink.open()
    meter.start()
    started = time.perf_counter()
    for start in range(0, len(records), 500):
        sink.write(records[start:start + 500])
    elapsed = time.perf_counter() - started
    meter.stop()
    sink.close()
    redis.Redis().delete(config.redis.list)
    return len(records) / elapsed


def fs_cdr_end_to_end(config, stream: list[bytes], meter: CpuMeter, backlog: int = 2000) -> float:
    """Records/s from JSON text to committed rows, through the real engine, sustained: the feeder
    keeps at most ``backlog`` records waiting in fs_cdr (beyond that, FreeSWITCH's own event queue
    would hold them), so the figure is the rate fs_cdr keeps up with, not how fast it buffers."""
    if config.databases:
        sink = sql_sink(config)  # create the table outside the timing
        sink.close()
    engine = Engine(config).start()
    lanes = engine.lanes
    time.sleep(0.2)
    meter.start()
    started = time.perf_counter()
    for index, text in enumerate(stream):
        if index % 100 == 0:
            while sum(lane.queued() for lane in lanes) > backlog:
                time.sleep(0.001)
        release_gil()
        engine.handle_serialized(text)
    assert engine.flush(600), engine.status()
    elapsed = time.perf_counter() - started
    meter.stop()
    status = engine.status()["sinks"][0]
    engine.stop()
    assert status["written"] == len(stream), status
    if config.databases:
        sink = sql_sink(config)
        drop(sink)
        sink.close()
    elif config.redis is not None:
        import redis

        redis.Redis().delete(config.redis.list)
    return len(stream) / elapsed


def release_gil() -> None:
    """What EventConsumer.pop() does inside FreeSWITCH when an event is queued: mod_python3's wrapper
    releases the GIL around the C call (Py_BEGIN_ALLOW_THREADS), which returns at once without sleeping.
    A zero-timeout select() is such a call; time.sleep(0) is not (it sleeps: a context switch per event)."""
    select.select((), (), (), 0)


PYTHON_DECODER = "python decoder"


@contextlib.contextmanager
def bulk_inserts(enabled: bool) -> Iterator[None]:
    """With ``enabled`` false, PostgreSQL batches are upserted row by row (executemany) as before
    fs_cdr wrote new rows by COPY: the gain, measured in the same run. The sink is built in this
    process and sent to its worker as it is, so the change reaches the workers too."""
    from fs_cdr.sinks.postgres import PostgreSQL

    saved = PostgreSQL.bulk_insert
    if not enabled:
        PostgreSQL.bulk_insert = lambda self, table, names: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        PostgreSQL.bulk_insert = saved  # type: ignore[method-assign]


@contextlib.contextmanager
def source_yield(enabled: bool) -> Iterator[None]:
    """With ``enabled`` false, the engine as it was before it yielded the GIL once a millisecond
    (fs_cdr/engine.py, YIELD_INTERVAL_S): the gain, measured in the same run."""
    saved = engine_module.YIELD_INTERVAL_S
    if not enabled:
        engine_module.YIELD_INTERVAL_S = float("inf")
    try:
        yield
    finally:
        engine_module.YIELD_INTERVAL_S = saved


@contextlib.contextmanager
def python_decoder(enabled: bool) -> Iterator[None]:
    """With ``enabled``, every event decoded whole in Python (orjson, then the record builder), as
    before the compiled split (fs_cdr/_hangup.c): the gain, measured in the same run. Builders made
    inside see no compiled module; the sink workers never decode events."""
    saved = record_module._hangup
    if enabled:
        record_module._hangup = None
    try:
        yield
    finally:
        record_module._hangup = saved


def source_stage(config, stream: list[bytes]) -> float:
    """Events/s from JSON text to record on one thread, as Engine.handle_serialized does it."""
    builder = RecordBuilder(config)
    started = time.perf_counter()
    for text in stream:
        split = builder.split(text)
        if split is None:
            builder.build(decode_event(text))
        else:
            builder.build(*split)
    return len(stream) / (time.perf_counter() - started)


def stamped(original: Callable, stamps: dict[str, float], first: bool = False) -> Callable:
    """``original`` (a method taking a batch of records), noting when it returned for each record:
    the last time, or with ``first`` the first."""
    def method(self, records):
        records = list(records)
        result = original(self, records)
        now = time.perf_counter()
        for record in records:
            if first:
                stamps.setdefault(record["uuid"], now)
            else:
                stamps[record["uuid"]] = now
        return result
    return method


def offer_at_rate(engine: Engine, stream: list[bytes], rate: float) -> dict[str, float]:
    """Hand ``stream`` to the engine at ``rate`` events per second; when each was handed over."""
    offered: dict[str, float] = {}
    start = time.perf_counter()
    for index, text in enumerate(stream):
        pause = start + index / rate - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        handed = time.perf_counter()
        record = engine.handle_serialized(text)
        assert record is not None
        offered[str(record["uuid"])] = handed
    return offered


def spread(offered: dict[str, float], done: dict[str, float]) -> tuple[float, float, float]:
    """p50/p99/max ms from each record's offer to its ``done`` time."""
    delays = sorted((done[key] - offered[key]) * 1000 for key in offered)
    return statistics.median(delays), delays[int(len(delays) * 0.99) - 1], delays[-1]


def abandon(engine: Engine) -> None:
    """Stop an engine whose sink never takes a write, without the wait for it that stop() makes."""
    engine.guard.stop()
    for lane in engine.lanes:
        for writer in lane.writers:
            writer.stop()
        lane.journal.close()
        lane.spool.close()


def latency(config, stream: list[bytes], rate: float = 500.0) -> tuple[float, float, float]:
    """p50/p99/max ms from handle() (the hangup popped) to the commit that made the row visible."""
    sink = sql_sink(config)
    sink.close()
    committed: dict[str, float] = {}
    # the write that returns in this process once the row is committed: the worker's, or the sink's
    # own when it runs here
    writes = {kind: kind.write for kind in (SqlSink, ProcessSink)}
    for kind, original in writes.items():
        kind.write = stamped(original, committed)  # type: ignore[method-assign]  # timed in place
    try:
        engine = Engine(config).start()
        time.sleep(0.2)
        offered = offer_at_rate(engine, stream, rate)
        engine.flush(60)
        engine.stop()
    finally:
        for kind, original in writes.items():
            kind.write = original  # type: ignore[method-assign]
    sink = sql_sink(config)
    drop(sink)
    sink.close()
    return spread(offered, committed)


def offer_at_once(engine: Engine, stream: list[bytes], rate: float = 0.0) -> dict[str, float]:
    """Hand ``stream`` to the engine as fast as the source can (a mass hangup), releasing the GIL
    before each event as pop() does; when each was handed over."""
    offered: dict[str, float] = {}
    for text in stream:
        release_gil()
        handed = time.perf_counter()
        record = engine.handle_serialized(text)
        assert record is not None
        offered[str(record["uuid"])] = handed
    return offered


def durability_window(directory: Path, stream: list[bytes], rate: float = 500.0,
                      offer: Callable[..., dict[str, float]] = offer_at_rate) -> tuple[float, float, float]:
    """p50/p99/max ms from handle() until a record is on disk (journal or spool fsynced) or committed,
    with a database that accepts connections and never answers (the worst case: nothing fails fast)."""
    from fs_cdr.spool import Journal, Spool

    stalled = socket.socket()
    stalled.bind(("127.0.0.1", 0))
    stalled.listen(64)
    port = stalled.getsockname()[1]
    durable: dict[str, float] = {}
    originals = (Journal.append, Spool.append)
    Journal.append, Spool.append = (stamped(original, durable, first=True)  # type: ignore[method-assign]
                                    for original in originals)
    try:
        config = parse_config({"cdr": {"details": True, "fields": FIELDS, "spool_dir": str(directory / "spool-dw"),
                                       "database": {"dbtype": "mysql", "connectionstring": f"127.0.0.1,{port}@test",
                                                    "timeout_s": 5}}})
        engine = Engine(config).start()
        offered = offer(engine, stream, rate)
        time.sleep(1.0)
        abandon(engine)
    finally:
        Journal.append, Spool.append = originals  # type: ignore[method-assign]
        stalled.close()
    return spread(offered, durable)


def rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def memory_queued(directory: Path, stream: list[bytes]) -> tuple[float, float]:
    """Bytes per queued record and peak RSS with len(stream) records held for an unreachable database."""
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there: connection refused
    config = parse_config({"cdr": {"details": True, "fields": FIELDS, "spool_dir": str(directory / "spool-mem"),
                                   "durable_window_ms": 600000, "database": {
                                       "dbtype": "mysql", "connectionstring": f"127.0.0.1,{port}@test",
                                       "queue_size": len(stream) + 1}}})
    engine = Engine(config).start()
    gc.collect()
    before = rss_mb()
    for text in stream:
        engine.handle_serialized(text)
    gc.collect()
    after = rss_mb()
    queued = engine.status()["sinks"][0]["queued"]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    abandon(engine)
    assert queued == len(stream), queued
    return (after - before) * 2**20 / len(stream), peak


def addition_loop_s(count: int = 10_000_000, clock: Callable[[], float] = time.perf_counter) -> float:
    """Seconds (by ``clock``) for ``count`` Python additions: a yardstick of the CPU alone."""
    started = clock()
    total = 0
    for number in range(count):
        total += number
    return clock() - started


def machine_speed(stream: list[bytes]) -> tuple[float, float]:
    """Two yardsticks independent of fs_cdr's code, best of three: seconds for 10 million Python
    additions (the CPU alone), and µs for orjson to decode one recorded event (CPU, caches and
    memory, which a shared VM's neighbours slow down far more than the first)."""
    import orjson

    def decode() -> float:
        sample = stream[:5000]
        started = time.perf_counter()
        for text in sample:
            orjson.loads(text)
        return (time.perf_counter() - started) / len(sample) * 1e6

    return min(addition_loop_s() for _ in range(3)), min(decode() for _ in range(3))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=20000)
    parser.add_argument("--freeswitch-calls", type=int, default=2000)
    parser.add_argument("--freeswitch-rounds", type=int, default=5)
    parser.add_argument("--freeswitch-variants", default="",
                        help="only the FreeSWITCH variants whose name contains one of these comma-separated "
                             "words (besides the no-CDR baseline), e.g. 'mod_cdr_sqlite,extended'")
    parser.add_argument("--sections", default="sinks,http,nats,file,latency,memory,freeswitch",
                        help="which parts to run (comma-separated): sinks, http, nats, file, latency, memory, "
                             "freeswitch")
    args = parser.parse_args()
    sections = set(args.sections.split(","))
    directory = Path(tempfile.mkdtemp(prefix="fs_cdr_bench-"))
    stream = recorded_stream(args.records)
    probe = config_for("sqlite", "probe", directory)
    builder = RecordBuilder(probe)
    records: list[dict[str, Any]] = [record for record in (builder.build(decode_event(text)) for text in stream)
                                     if record is not None]
    size = sum(len(text) for text in stream) / len(stream)
    print(f"fs_cdr benchmark {time.strftime('%Y-%m-%d %H:%M')} on {platform.node()}: {os.cpu_count()} cores, "
          f"{os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.0f} GiB, Python {platform.python_version()}")
    print(f"{args.records} hangup events, {size / 1024:.1f} KB each (200 channel variables), details on, "
          f"{len(FIELDS)} fields")
    loop_s, decode_us = machine_speed(stream)
    print(f"this machine's speed now: {loop_s:.2f} s for 10 million Python additions, {decode_us:.1f} µs for orjson "
          f"to decode one event (a shared VM's speed varies between runs; compare absolute figures only between "
          f"runs of like speed)\n")
    lines = []

    def row(name: str, value: str, ratio: str = "", target: str = "", cpu: str = "") -> None:
        lines.append((name, value, ratio, target, cpu))
        print(f"{name:<52}{value:>16}{ratio:>8}  {target:<10}{cpu}", flush=True)

    print(f"{'measure':<52}{'value':>16}{'ratio':>8}  {'target':<10}CPU µs/record: this process + workers + server")
    kinds = (("mysql", 0.9), ("postgresql", 0.9), ("sqlite", None), ("redis", 0.8)) if "sinks" in sections else ()
    source = CpuMeter()
    source.start()
    rate = source_stage(probe, stream)
    source.stop()
    with python_decoder(True):
        python_rate = source_stage(probe, stream)
    with memory_kept():
        for kind, target in kinds:
            sink_rows(kind, target, directory, records, stream, source, rate, row)
    with memory_kept():
        from message_sinks import message_sink_rows

        message_sink_rows(sections, directory, records, stream, row, rate)
    row("source stage alone (JSON -> record), one core", f"{rate:,.0f} ev/s", "", ">= 20,000",
        source.per_record(len(stream)))
    row("source stage, events decoded in Python (before)", f"{python_rate:,.0f} ev/s")
    if "latency" in sections:
        latency_rows(directory, stream, row)
    if "memory" in sections:
        memory_rows(directory, row)
    if args.freeswitch_calls and "freeswitch" in sections:
        from switch_cost import freeswitch_rows

        for label, measured, against, wanted in freeswitch_rows(directory, args.freeswitch_calls,
                                                                args.freeswitch_rounds, args.freeswitch_variants):
            row(label, measured, against, wanted)
    shutil.rmtree(directory, ignore_errors=True)
    return 0


#: Interleaved rounds of the raw limit and fs_cdr's defaults, per sink (a Redis run takes a second).
ROUNDS = {"redis": 5}


@contextlib.contextmanager
def memory_kept() -> Iterator[None]:
    """While the rates are measured, glibc keeps what this process frees instead of giving each large
    block back to the system at once. Otherwise a run page-faults its memory in again after the run
    before it let go of it: the raw Redis client measured 125,000-143,000 page faults and 28 µs of CPU
    a record (about 31,000 records/s) against none and 16 µs (about 50,000) once memory stays. The
    same for both sides, fs_cdr's source runs in this process too; the memory section (RSS) runs
    with glibc's usual thresholds again, after the kept memory is given back."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to set
        yield
        return
    libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)
    libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)
    try:
        yield
    finally:
        libc.mallopt(M_TRIM_THRESHOLD, 128 << 10)
        libc.mallopt(M_MMAP_THRESHOLD, 128 << 10)
        libc.malloc_trim(0)


#: mallopt's parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3


def raw_limit(kind: str, config, records: list[dict], meter: CpuMeter) -> float:
    return raw_redis(config, records, meter) if kind == "redis" else raw_batched(config, records, meter)


def sink_rows(kind: str, target: Any, directory: Path, records: list[dict], stream: list[bytes],
              source: CpuMeter, rate: float, row: Callable[..., None]) -> None:
    """One sink's rows. The raw limit and fs_cdr's defaults are measured in interleaved rounds (raw,
    fs_cdr, raw, fs_cdr...) and each side's fastest round counts: on this shared machine one run of
    either can be half as fast as the next (Redis's server or client CPU a record doubles now and
    then), and neither side may gain or lose by such a moment. Every round is printed. The other
    variants run once, after the rounds."""
    table = f"bench_{kind}_{uuidlib.uuid4().hex[:6]}"
    raws: list[tuple[float, float, str]] = []
    rounds = ROUNDS.get(kind, 3)

    def measure_raw(suffix: str) -> None:
        if kind == "redis":
            # The raw limit is the best the client can do: a warm-up run first, not measured (even
            # with memory kept, the first run after others makes its 200 MB of documents anew).
            raw_redis(config_for(kind, table + "w", directory), records, CpuMeter())
        meter = CpuMeter(SERVERS[kind])
        found = raw_limit(kind, config_for(kind, table + suffix, directory), records, meter)
        raws.append((found, meter.seconds_per_record(len(records)), meter.per_record(len(records))))

    def measure_ours(number: int, label: str, extra: dict[str, Any]) -> tuple[str, float, str]:
        meter = CpuMeter(SERVERS[kind])
        with python_decoder(extra.get(PYTHON_DECODER, False)):
            settings = {key: value for key, value in extra.items() if key != PYTHON_DECODER}
            found = fs_cdr_end_to_end(config_for(kind, f"{table}e{number}", directory, **settings), stream, meter)
        return label, found, meter.per_record(len(stream))

    default_writers = 1 if kind in ("sqlite", "redis") else 2
    other = 3 - default_writers
    defaults_name = f"fs_cdr end to end (defaults: {default_writers} writer{'s' * (default_writers > 1)})"
    variants: tuple[tuple[str, dict[str, Any]], ...] = ((defaults_name, {}),
                ("fs_cdr, sink in the source's process", {"worker_process": False}),
                (f"fs_cdr, workers: {other}", {"workers": other}),
                ("fs_cdr, events decoded in Python (before)", {PYTHON_DECODER: True}))
    defaults: list[tuple[str, float, str]] = []
    for number in range(rounds):
        measure_raw(f"r{number}")
        defaults.append(measure_ours(number, *variants[0]))
    ours = [max(defaults, key=lambda found: found[1])]
    ours += [measure_ours(rounds + number, *variant) for number, variant in enumerate(variants[1:])]
    raw, raw_cpu_s, raw_cpu = max(raws)
    what = "raw pipelined LPUSH+PUBLISH, batches of 500" if kind == "redis" else "raw executemany, batches of 500"
    row(f"{kind}: {what}", f"{raw:,.0f} rec/s", cpu=raw_cpu)
    row(f"{kind}: (the raw limit, each round)", " / ".join(f"{found:,.0f}" for found, _, _ in raws))
    row(f"{kind}: (fs_cdr's defaults, each round)", " / ".join(f"{found:,.0f}" for _, found, _ in defaults))
    if kind == "redis":
        packed_meter = CpuMeter(SERVERS[kind])
        packed = max(raw_redis_packed(config_for(kind, table + f"p{number}", directory), records, packed_meter)
                     for number in range(2))
        row(f"{kind}: raw, the same commands packed as RESP by hand", f"{packed:,.0f} rec/s", f"{packed / raw:.2f}",
            cpu=packed_meter.per_record(len(records)))
        row(f"{kind}: fs_cdr end to end against that", "", f"{ours[0][1] / packed:.2f}")
    if kind != "redis":
        single = raw_per_call(config_for(kind, table + "s", directory), records[: min(2000, len(records))])
        row(f"{kind}: one INSERT+commit per call (C modules)", f"{single:,.0f} rec/s", f"{single / raw:.2f}")
    # Any writer that starts from JSON events spends at least the raw write's CPU plus the source
    # stage's on every record; on this many cores that caps its rate, however it is built.
    cores = os.cpu_count() or 1
    ceiling = cores / (raw_cpu_s + source.seconds_per_record(len(stream)))
    row(f"{kind}: CPU ceiling on {cores} cores (raw + source stage CPU)", f"{ceiling:,.0f} rec/s", f"{ceiling / raw:.2f}")
    # Inside FreeSWITCH the source stage is one thread under one GIL: it cannot feed more than its rate.
    row(f"{kind}: source stage's rate, one thread", f"{rate:,.0f} rec/s", f"{rate / raw:.2f}")
    for label, found, cpu in ours:
        row(f"{kind}: {label}", f"{found:,.0f} rec/s", f"{found / raw:.2f}", f">= {target}" if target else "", cpu)
    if kind == "postgresql":
        lz4_rows(directory, table, records, stream, row)
        no_details_rows(directory, table, stream, row)


def lz4_details(config) -> None:
    """Create the table as fs_cdr does, then store ``details`` with lz4 instead of the server's
    default TOAST compression (pglz): a DBA's one-line tuning (README, Performance)."""
    sink = sql_sink(config)
    cursor = sink.connection.cursor()
    cursor.execute(f"ALTER TABLE {config.databases[0].table} ALTER COLUMN details SET COMPRESSION lz4")
    sink.connection.commit()
    sink.close()


def lz4_rows(directory: Path, table: str, records: list[dict], stream: list[bytes], row: Callable[..., None]) -> None:
    """PostgreSQL with ``details`` compressed by lz4: the server's CPU per record halves, so the raw
    limit and fs_cdr both rise; reported for the absolute figures, not against a target."""
    meter = CpuMeter(SERVERS["postgresql"])
    config = config_for("postgresql", table + "lz", directory)
    lz4_details(config)
    raw = raw_batched(config, records, meter)
    row("postgresql, details COMPRESSION lz4: raw executemany", f"{raw:,.0f} rec/s", cpu=meter.per_record(len(records)))
    config = config_for("postgresql", table + "lze", directory)
    lz4_details(config)
    ours = fs_cdr_end_to_end(config, stream, meter)
    row("postgresql, details COMPRESSION lz4: fs_cdr end to end", f"{ours:,.0f} rec/s", f"{ours / raw:.2f}",
        cpu=meter.per_record(len(stream)))


def no_details_rows(directory: Path, table: str, stream: list[bytes], row: Callable[..., None]) -> None:
    """PostgreSQL with ``details`` off (the parser's default): the rows are small, so what each
    statement costs the server shows — the case fs_cdr uses COPY for (with details it upserts: COPY
    measured no cheaper there). fs_cdr with and without COPY, same run."""
    config = config_for("postgresql", table + "nd", directory, details=False)
    builder = RecordBuilder(config)
    records: list[dict[str, Any]] = [record for record in (builder.build(decode_event(text)) for text in stream)
                                     if record is not None]
    meter = CpuMeter(SERVERS["postgresql"])
    raw = raw_batched(config, records, meter)
    row("postgresql, details off: raw executemany", f"{raw:,.0f} rec/s", cpu=meter.per_record(len(records)))
    for number, (label, enabled) in enumerate((("fs_cdr end to end (defaults)", True),
                                               ("fs_cdr, upserts only, no COPY (before)", False))):
        with bulk_inserts(enabled):
            ours = fs_cdr_end_to_end(config_for("postgresql", f"{table}nd{number}", directory, details=False), stream,
                                     meter)
        row(f"postgresql, details off: {label}", f"{ours:,.0f} rec/s", f"{ours / raw:.2f}",
            cpu=meter.per_record(len(stream)))


def latency_rows(directory: Path, stream: list[bytes], row: Callable[..., None]) -> None:
    p50, p99, worst = latency(config_for("mysql", f"bench_lat_{uuidlib.uuid4().hex[:6]}", directory),
                              stream[: min(len(stream), 5000)])
    row("mysql: hangup -> row visible at 500 rec/s, p50", f"{p50:.1f} ms")
    row("mysql: hangup -> row visible at 500 rec/s, p99", f"{p99:.1f} ms", "", "<= 200 ms")
    p50, p99, worst = durability_window(directory, stream[: min(len(stream), 3000)])
    row("durability window, db never answers, p50", f"{p50:.0f} ms")
    row("durability window, db never answers, p99 / max", f"{p99:.0f} / {worst:.0f} ms", "", "aim 200 ms")
    burst = stream[: min(len(stream), 20000)]
    for label, enabled in (("", True), (", no GIL yield (before)", False)):
        with source_yield(enabled):
            p50, p99, worst = durability_window(directory, burst, offer=offer_at_once)
        row(f"same, {len(burst):,} hangups at once{label}: p50", f"{p50:.0f} ms")
        row(f"same, {len(burst):,} hangups at once{label}: p99 / max", f"{p99:.0f} / {worst:.0f} ms", "",
            "aim 200 ms")


def memory_rows(directory: Path, row: Callable[..., None]) -> None:
    per_record, peak = memory_queued(directory, recorded_stream(100_000))
    row("memory per queued record (100,000 queued, db down)", f"{per_record / 1024:.1f} KB")
    row("peak RSS of the benchmark process", f"{peak:,.0f} MB")


if __name__ == "__main__":
    sys.exit(main())
