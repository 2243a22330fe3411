"""What the call-center record costs (docs/call-center.md), each figure beside its baseline measured in
the same run, in interleaved rounds (baseline, extended, baseline, extended...), fastest round counted:

1. the source stage (JSON text -> record, one thread, as Engine.handle_serialized), with the standard
   columns and with ``"columns": "extended"``, on bench/run.py's 200-variable recorded hangups;
2. the SQL sink's write of 500-leg batches (two-leg calls made from the recorded extension-to-extension
   call, each with its own uuids), standard columns / extended columns / extended + the call table,
   on SQLite, MariaDB and PostgreSQL (one writer, in this process); and the Redis sink's, standard /
   extended / extended + call messages (the call book).

    .venv/bin/python bench/call_center.py [--records N] [--rounds N] [--kinds sqlite,mysql,postgresql,redis]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid as uuidlib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

from run import recorded_stream, source_stage

from fs_cdr.channel import decode_event, dumps
from fs_cdr.config import Paths, parse_config
from fs_cdr.record import RecordBuilder
from fs_cdr.schema import table_columns
from fs_cdr.sinks.sql import SqlSink, dialect_for

CALL_FILE = ROOT / "tests/events/live_extension_to_extension.jsonl"


def call_legs(count: int, document: dict[str, Any]) -> list[dict[str, Any]]:
    """``count`` legs: the recorded caller and callee legs again and again, each pair a call of its own."""
    events = [decode_event(line) for line in CALL_FILE.read_bytes().splitlines()
              if b'"CHANNEL_HANGUP_COMPLETE"' in line]
    a = next(event for event in events if event["Channel-Name"].startswith("sofia/internal/1100"))
    b = next(event for event in events if event["Channel-Name"] == "null/1101")
    builder = RecordBuilder(parse_config(document))
    legs = []
    for _ in range(count // 2):
        caller, callee = str(uuidlib.uuid4()), str(uuidlib.uuid4())
        pair = (dict(a, **{"Unique-ID": caller, "variable_uuid": caller, "variable_bridge_uuid": callee}),
                dict(b, **{"Unique-ID": callee, "variable_uuid": callee, "variable_originator": caller,
                           "Other-Leg-Unique-ID": caller}))
        for event in pair:
            record = builder.build(decode_event(dumps(event).encode()))
            assert record is not None
            legs.append(dict(record, call_state="completed", event_seq=1))
    return legs


def database(kind: str, table: str, directory: Path) -> dict[str, Any]:
    entry = {"mysql": {"dbtype": "mysql", "connectionstring": "127.0.0.1,3306@test", "username": "root"},
             "postgresql": {"dbtype": "pgsql", "connectionstring": "127.0.0.1,5432@test", "username": "postgres"},
             "sqlite": {"dbtype": "sqlite", "connectionstring": str(directory / f"{table}.sqlite")}}[kind]
    return dict(entry, table=table, worker_process=False)


def timed_writes(sink: Any, legs: list[dict[str, Any]]) -> float:
    """Legs/s through ``sink.write`` in batches of 500."""
    started = time.perf_counter()
    for start in range(0, len(legs), 500):
        sink.write(legs[start:start + 500])
    return len(legs) / (time.perf_counter() - started)


def redis_rate(variant: str, count: int, directory: Path) -> float:
    """Legs/s into a Redis list (one LPUSH a batch), standard / extended columns / extended + call
    messages on a list of their own (the call book beside the spool: fs_cdr/calls.py CallBook)."""
    import redis

    from fs_cdr.sinks import targets

    key = f"bench_cc_{variant}_{uuidlib.uuid4().hex[:6]}"
    section: dict[str, Any] = {"host": "127.0.0.1", "list": key}
    cdr: dict[str, Any] = {"redis": section, "spool_dir": str(directory / f"spool-{key}")}
    if variant != "standard":
        cdr["columns"] = "extended"
    if variant == "calls":
        section["calls"] = {"list": key + "_call"}
    config = parse_config({"cdr": cdr}, Paths(str(directory), str(directory), str(directory)))
    legs = call_legs(count, {"cdr": dict(cdr)})
    (target,) = targets(config)
    sink = target.open_sink()
    sink.open()
    try:
        return timed_writes(sink, legs)
    finally:
        sink.close()
        redis.Redis().delete(key, key + "_call")


def sink_rate(kind: str, variant: str, count: int, directory: Path) -> float:
    if kind == "redis":
        return redis_rate(variant, count, directory)
    table = f"bench_cc_{variant}_{uuidlib.uuid4().hex[:6]}"
    cdr: dict[str, Any] = {"database": database(kind, table, directory), "spool_dir": str(directory / "spool")}
    if variant != "standard":
        cdr["columns"] = "extended"
    if variant == "calls":
        cdr["calls"] = {"table": table + "_call"}
    config = parse_config({"cdr": cdr}, Paths(str(directory), str(directory), str(directory)))
    legs = call_legs(count, {"cdr": dict(cdr)})
    entry = config.databases[0]
    dialect = dialect_for(entry.dbtype, entry)
    assert dialect is not None
    sink = SqlSink(dialect, entry, table_columns(config), calls_table=config.calls_table)
    sink.open()
    try:
        return timed_writes(sink, legs)
    finally:
        cursor = sink.connection.cursor()
        for name in (table + "_call", table):
            cursor.execute(f"DROP TABLE IF EXISTS {name}")
        sink.connection.commit()
        sink.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--kinds", default="sqlite,mysql,postgresql,redis")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        stream = recorded_stream(args.records)
        configs = {variant: parse_config({"cdr": dict({"log": True, "details": True}, **extra)})
                   for variant, extra in (("standard", {}), ("extended", {"columns": "extended"}))}
        rates: dict[str, list[float]] = {"standard": [], "extended": []}
        for _ in range(args.rounds):
            for variant, config in configs.items():
                rates[variant].append(source_stage(config, stream))
        best = {variant: max(found) for variant, found in rates.items()}
        for variant, found in rates.items():
            print(f"source stage, {variant} columns: {best[variant]:,.0f} ev/s = {1e6 / best[variant]:.1f} µs/event "
                  f"(rounds {' / '.join(f'{rate:,.0f}' for rate in found)})")
        print(f"source stage: extended / standard = {best['extended'] / best['standard']:.2f}, "
              f"+{1e6 / best['extended'] - 1e6 / best['standard']:.1f} µs/event")
        for kind in args.kinds.split(","):
            writes: dict[str, list[float]] = {"standard": [], "extended": [], "calls": []}
            for _ in range(args.rounds):
                for variant, measured in writes.items():
                    measured.append(sink_rate(kind, variant, min(args.records, 10000), directory))
            top = {variant: max(values) for variant, values in writes.items()}
            for variant, values in writes.items():
                print(f"{kind}: write, {variant}: {top[variant]:,.0f} legs/s, {1e6 / top[variant]:.0f} µs/leg, "
                      f"ratio {top[variant] / top['standard']:.2f} (rounds {' / '.join(f'{v:,.0f}' for v in values)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
