"""``fs-cdr``: the operator's command line, outside FreeSWITCH.

    fs-cdr play [-c cdr.json] EVENTS.jsonl...   feed recorded FreeSWITCH events through the real engine
    fs-cdr schema [-c cdr.json] [--dbtype T]    print CREATE TABLE for the configured table and fields
    fs-cdr check [-c cdr.json]                  validate cdr.json and connect to every sink
    fs-cdr replay [-c cdr.json]                 write the spooled records now (FreeSWITCH stopped)

Outside FreeSWITCH, FreeSWITCH's db and storage directories default to ``var/`` beside cdr.json.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from typing import Optional, Sequence

from .config import DBTYPES, CdrConfig, Paths, load_config
from .engine import Engine, format_status
from .errors import ConfigError
from .schema import table_columns
from .sinks import lanes_for, targets
from .sinks.sql import SqlSink, dialect_for
from .source import play
from .spool import SpoolBusy

DEFAULT_CONFIG = os.environ.get("FS_CDR_CONFIG", "cdr.json")
SHOWN = ("uuid", "leg", "direction", "caller_id_number", "destination_number", "originator", "bridge_uuid",
         "billsec", "duration", "hangup_cause")


def load(path: str) -> CdrConfig:
    here = os.path.dirname(os.path.abspath(path))
    var = os.path.join(here, "var")
    return load_config(path, Paths(conf_dir=here, db_dir=var, storage_dir=var))


def _show_rows(config: CdrConfig, uuids: list[str]) -> None:
    columns = table_columns(config)
    for database in config.databases:
        dialect = dialect_for(database.dbtype)
        if dialect is None:
            continue
        sink = SqlSink(dialect, database, columns)
        try:
            sink.open()
            quote, mark = dialect.quote, dialect.placeholder
            cursor = sink.connection.cursor()
            cursor.execute(
                f"SELECT {', '.join(quote(name) for name in SHOWN)} FROM {quote(database.table)} "
                f"WHERE {quote('uuid')} IN ({', '.join(mark for _ in uuids)}) "
                f"ORDER BY {quote('end_epoch')}, {quote('leg')}",
                tuple(uuids),
            )
            rows = [["" if value is None else str(value) for value in row] for row in cursor.fetchall()]
            cursor.close()
        except Exception as error:  # noqa: BLE001 - the demo just cannot show this table
            print(f"{database.name}: cannot read back: {error}")
            continue
        finally:
            sink.close()
        print(f"\n{database.name}: {len(rows)} rows in {database.describe()}")
        widths = [max([len(name)] + [min(len(row[i]), 36) for row in rows]) for i, name in enumerate(SHOWN)]
        print("  ".join(name.ljust(width) for name, width in zip(SHOWN, widths)))
        for row in rows:
            print("  ".join(value[:36].ljust(width) for value, width in zip(row, widths)))


def cmd_play(args: argparse.Namespace) -> int:
    config = load(args.config)
    engine = Engine(config).start()
    uuids = play(engine, args.events)
    flushed = engine.flush(args.timeout)
    print(format_status(engine.status()), end="")
    engine.stop()
    if uuids:
        _show_rows(config, uuids)
    return 0 if flushed else 1


def cmd_schema(args: argparse.Namespace) -> int:
    config = load(args.config)
    dbtypes = [DBTYPES[args.dbtype]] if args.dbtype else [database.dbtype for database in config.databases]
    if not dbtypes:
        print("no database configured; pass --dbtype", file=sys.stderr)
        return 2
    table = config.databases[0].table if config.databases else "cdr"
    for dbtype in dbtypes:
        dialect = dialect_for(dbtype)
        if dialect is None:
            print(f"-- {dbtype}: not supported by this build", file=sys.stderr)
            return 2
        print(f"-- {dbtype}\n{dialect.create_table(table, table_columns(config))};")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    config = load(args.config)
    problems = 0
    for target in targets(config):
        sink = target.open_sink()
        try:
            sink.open()
            print(f"OK    {target.name}: {target.description}")
        except Exception as error:  # noqa: BLE001 - every failure is a line of the report
            problems += 1
            print(f"FAIL  {target.name}: {target.description}: {error}")
        finally:
            sink.close()
    return 1 if problems else 0


def cmd_replay(args: argparse.Namespace) -> int:
    """Drain the spool by hand, e.g. with FreeSWITCH stopped. While FreeSWITCH runs it owns the
    spool and replays by itself (``python fs_cdr replay`` skips the backoff)."""
    config = load(args.config)
    lanes = lanes_for(config)
    waiting = {lane.name: lane.spool.pending for lane in lanes}
    total = sum(waiting.values())
    for lane in lanes:
        lane.start()
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline and not all(lane.settled() for lane in lanes):
        left = sum(lane.spool.pending for lane in lanes)
        print(f"\rreplaying: {total - left}/{total}", end="", file=sys.stderr, flush=True)
        time.sleep(0.2)
    print(file=sys.stderr)
    problems = 0
    for lane in lanes:
        left = lane.spool.pending
        lane.stop(1.0)
        state = "done" if not left else f"{left} still spooled: {lane.stats.last_error or 'timed out'}"
        print(f"{lane.name}: {waiting[lane.name]} spooled, {lane.stats.replayed} written, "
              f"{lane.stats.rejected} refused; {state}")
        problems += bool(left)
    return 1 if problems else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="fs-cdr", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO")
    parser.add_argument("-c", "--config", default=DEFAULT_CONFIG, help="path of cdr.json")
    commands = parser.add_subparsers(dest="command", required=True)
    play_parser = commands.add_parser("play", help="feed recorded FreeSWITCH events through the engine")
    play_parser.add_argument("events", nargs="+", help=".jsonl files, one FreeSWITCH event per line")
    play_parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the sinks")
    play_parser.set_defaults(run=cmd_play)
    schema_parser = commands.add_parser("schema", help="print CREATE TABLE for the configured table")
    schema_parser.add_argument("--dbtype", choices=sorted(DBTYPES))
    schema_parser.set_defaults(run=cmd_schema)
    check_parser = commands.add_parser("check", help="validate cdr.json and connect to every sink")
    check_parser.set_defaults(run=cmd_check)
    replay_parser = commands.add_parser("replay", help="write the spooled records now")
    replay_parser.add_argument("--timeout", type=float, default=300.0, help="seconds to keep trying")
    replay_parser.set_defaults(run=cmd_replay)
    for sub in (play_parser, schema_parser, check_parser, replay_parser):
        sub.add_argument("-c", "--config", default=argparse.SUPPRESS, help="path of cdr.json")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.run(args))
    except ConfigError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        return 2
    except SpoolBusy as error:
        print(f"{error}: stop FreeSWITCH first, or run 'python fs_cdr replay' in fs_cli", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
