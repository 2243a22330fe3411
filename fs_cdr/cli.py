"""``fs-cdr``: the operator's command line, outside FreeSWITCH.

    fs-cdr play [-c cdr.json] EVENTS.jsonl...   feed recorded FreeSWITCH events through the real engine
    fs-cdr schema [-c cdr.json] [--dbtype T]    print CREATE TABLE and its indexes for the configured table
    fs-cdr schema --apply [-c cdr.json]         create the table, or add what it lacks that can be added online
    fs-cdr check [-c cdr.json]                  validate cdr.json, connect to every sink, say what tables lack
    fs-cdr replay [-c cdr.json]                 write the spooled records now (FreeSWITCH stopped)
    fs-cdr rotate [-c cdr.json]                 rename each file sink's current file aside (as on HUP)
    fs-cdr import [-c cdr.json] PATH...         backfill from mod_json_cdr / mod_xml_cdr files or folders
    fs-cdr tail [-c cdr.json] [--list]          print records as they arrive on the Redis channel (or list)
    fs-cdr status [-c cdr.json] [--json|--prometheus FILE]   a running FreeSWITCH's fs_cdr, over the event socket
    fs-cdr run [-c cdr.json] [--esl HOST:PORT]  the engine as a sidecar, fed by FreeSWITCH's event socket

Outside FreeSWITCH, FreeSWITCH's db and storage directories default to ``var/`` beside cdr.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Optional, Sequence

from .config import CdrConfig, Paths, load_config
from .engine import Engine, format_status
from .errors import ConfigError
from .schema import ADDED_COLUMNS, table_columns
from .sinks import lanes_for, targets
from .sinks.database import DBTYPES
from .sinks.partitions import Partitions
from .sinks.sql import SqlSink, dialect_for
from .source import play
from .spool import SpoolBusy
from .writer import SinkLane

log = logging.getLogger("fs_cdr.cli")
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
        dialect = dialect_for(database.dbtype, database)
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
    unreadable: list[str] = []
    try:
        uuids = play(engine, args.events, unreadable)
        flushed = engine.flush(args.timeout)
        print(format_status(engine.status()), end="")
    finally:
        engine.stop()  # whatever happened, what the engine holds is written or spooled
    if uuids:
        _show_rows(config, uuids)
    for path in unreadable:
        print(f"fs-cdr play: cannot read {path}; the other recordings were played", file=sys.stderr)
    troubles = _lane_troubles(engine.lanes)
    for line in troubles:
        print(f"fs-cdr play: {line}", file=sys.stderr)
    return 0 if flushed and not unreadable and not troubles else 1


def _lane_troubles(lanes: Sequence[SinkLane]) -> list[str]:
    """What an operator must hear after a run: records lost, a spool the disk refused."""
    lines = []
    for lane in lanes:
        status = lane.status()
        if status["lost"]:
            lines.append(f"sink {lane.name}: {status['lost']} records LOST (their uuids are in the log above)")
        if lane.spool.error is not None:
            lines.append(f"sink {lane.name}: cannot open the spool {lane.spool.directory}: {lane.spool.error}")
        elif status["disk_error"]:
            lines.append(f"sink {lane.name}: the spool's disk refused records: {status['disk_error']}")
    return lines


#: How long the statements ``schema --apply`` leaves to the operator took here, in seconds per million
#: rows (bench/growth.py --apply-rows, docs/performance.md): a MariaDB table of the first release rebuilt
#: around the ``id`` key, 1 million rows of 3.5 KB details, 2026-12-03.
REBUILD_S_PER_MILLION = {"mysql": 117.0}


def cmd_schema(args: argparse.Namespace) -> int:
    config = load(args.config)
    if args.apply:
        columns = table_columns(config)
        for database in config.databases:
            dialect = dialect_for(database.dbtype, database)
            if dialect is None:
                print(f"-- {database.name}: {database.dbtype} is not supported by this build", file=sys.stderr)
                return 2
            sink = SqlSink(dialect, database, columns, calls_table=config.calls_table)
            try:
                statements, left = sink.apply_schema()
            finally:
                sink.close()
            for statement in statements:
                print(f"-- {database.name}: applied\n{statement};")
            if not statements:
                print(f"-- {database.name}: table {database.table} already has every column and index")
            for statement in left:
                took = REBUILD_S_PER_MILLION.get(database.dbtype)
                print(f"-- {database.name}: not applied: this rewrites the whole table"
                      + (f" (measured: about {took:.0f} s per million rows, docs/performance.md)" if took else "")
                      + "; run it at a quiet hour (writers wait in the spool if it locks them out)\n"
                      + f"{statement};")
        return 0
    dbtypes = [DBTYPES[args.dbtype]] if args.dbtype else [database.dbtype for database in config.databases]
    if not dbtypes:
        print("no database configured; pass --dbtype", file=sys.stderr)
        return 2
    table = config.databases[0].table if config.databases else "cdr"
    for dbtype in dbtypes:
        serving = next((database for database in config.databases if database.dbtype == dbtype), None)
        dialect = dialect_for(dbtype, serving)
        if dialect is None:
            print(f"-- {dbtype}: not supported by this build", file=sys.stderr)
            return 2
        partitions = (Partitions(dialect, table, period=serving.partition)
                      if serving is not None and serving.partition else None)
        print(f"-- {dbtype}")
        for statement in dialect.schema_statements(table, table_columns(config), partitions):
            print(f"{statement};")
        if config.calls_table:
            from .calls import CALL_COLUMNS, CallTable

            calls = CallTable(dialect, config.calls_table, table)
            print(f"{dialect.create_table(config.calls_table, CALL_COLUMNS)};\n{calls.index_statement()};")
    return 0


def table_notes(config: CdrConfig) -> list[str]:
    """What each existing table lacks of today's schema: the newer standard columns (it is written
    without them), the recommended indexes, a key that needs a rebuild. Advice, not failures."""
    notes = []
    columns = table_columns(config)
    for database in config.databases:
        dialect = dialect_for(database.dbtype, database)
        if dialect is None:
            continue
        sink = SqlSink(dialect, database, columns, create=False)
        try:
            sink.connection = dialect.connect(database, database.batch.timeout_s)
            found = sink.existing_columns()
            if not found:
                continue
            table = f"{database.name}: table {database.table}"
            lacking = [column.name for column in columns if column.name in ADDED_COLUMNS and column.name not in found]
            if lacking:
                notes.append(f"{table} has no column {', '.join(lacking)}: written without them; "
                             "`fs-cdr schema --apply` adds them")
            indexes = sink.lacking_indexes()
            if indexes is None:
                notes.append(f"{table}: its indexes cannot be listed here; `fs-cdr schema` shows the recommended ones")
            for index in indexes or ():
                notes.append(f"{table} lacks the recommended index on ({', '.join(index.columns)}) for {index.queries}: "
                             "`fs-cdr schema --apply` adds it without stopping writers")
            for statement in dialect.rebuild_statements(sink.connection, database.table):
                notes.append(f"{table} has the uuid as its clustered key, which slows every insert once the table "
                             f"outgrows memory; `fs-cdr schema --apply` prints the rebuild: {statement}")
        except Exception as error:  # noqa: BLE001 - the connection failure is reported above
            log.debug("no table notes for %s: %s", database.name, error)
        finally:
            sink.close()
    return notes


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
    for note in table_notes(config):
        print(f"NOTE  {note}")
    return 1 if problems else 0


def cmd_replay(args: argparse.Namespace) -> int:
    """Drain the spool by hand, e.g. with FreeSWITCH stopped. While FreeSWITCH runs it owns the
    spool and replays by itself (``python fs_cdr replay`` skips the backoff)."""
    config = load(args.config)
    lanes = lanes_for(config)
    waiting = {lane.name: lane.spool.pending for lane in lanes}
    total = sum(waiting.values())
    left_by_lane: dict[str, int] = {}
    try:
        for lane in lanes:
            lane.start()
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline and not all(lane.settled() for lane in lanes):
            left = sum(lane.spool.pending for lane in lanes)
            print(f"\rreplaying: {total - left}/{total}", end="", file=sys.stderr, flush=True)
            time.sleep(0.2)
        print(file=sys.stderr)
        left_by_lane = {lane.name: lane.spool.pending for lane in lanes}
    finally:
        for lane in lanes:  # whatever happened (Ctrl-C too), each spool is closed and its lock given up
            lane.stop(1.0)
    problems = 0
    for lane in lanes:
        left = left_by_lane[lane.name]
        if lane.spool.error is not None:
            state = f"the spool could not be opened ({lane.spool.error}): nothing replayed"
        elif left:
            state = f"{left} still spooled: {lane.stats.last_error or 'timed out'}"
        else:
            state = "done"
        print(f"{lane.name}: {waiting[lane.name]} spooled, {lane.stats.replayed} written, "
              f"{lane.stats.rejected} refused; {state}")
        troubles = _lane_troubles([lane])
        for line in troubles:
            print(f"fs-cdr replay: {line}", file=sys.stderr)
        problems += bool(left) or bool(troubles)
    return 1 if problems else 0


class Progress:
    """A one-line progress bar on stderr (only when it is a terminal, or when asked)."""

    def __init__(self, total: int, label: str) -> None:
        self.total, self.label, self.done = total, label, 0
        self.show = sys.stderr.isatty()

    def step(self, count: int = 1) -> None:
        self.done += count
        if self.show and (self.done == self.total or self.done % 50 == 0):
            width = 30
            filled = int(width * self.done / max(1, self.total))
            print(f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total}",
                  end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.show:
            print(file=sys.stderr)


def cmd_rotate(args: argparse.Namespace) -> int:
    """The file sinks' current files renamed to ``<path>.YYYY-MM-DD-HH-MM-SS``; a running writer
    (inside FreeSWITCH or not) sees its file moved and opens a new one before its next batch."""
    from .sinks.file import rotate_files

    config = load(args.config)
    for old, new in rotate_files(config):
        print(f"{old} -> {new}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    """Backfill: each file through the record builder and every sink; upserts make it idempotent."""
    from .cdr_files import CdrFileError, cdr_paths, read_cdr_file

    config = load(args.config)
    paths = list(cdr_paths(args.paths))
    engine = Engine(config).start()
    progress = Progress(len(paths), "importing")
    imported = skipped = 0
    bad: list[str] = []
    try:
        for path in paths:
            try:
                headers = read_cdr_file(path)
            except (OSError, CdrFileError) as error:
                bad.append(f"{path}: {error}")
            else:
                if engine.handle(headers) is None:
                    skipped += 1
                else:
                    imported += 1
            progress.step()
        progress.close()
        flushed = engine.flush(args.timeout)
        status = engine.status()
    finally:
        engine.stop()  # whatever happened, what the engine holds is written or spooled
    for line in bad:
        print(f"skipped {line}", file=sys.stderr)
    print(f"{len(paths)} files: {imported} records read, {skipped} legs left out by process_cdr or the "
          f"skip variable, {len(bad)} bad files")
    for sink in status["sinks"]:
        print(f"  {sink['sink']}: {sink['written']} written, {sink['rejected']} refused, {sink['spooled']} spooled")
    troubles = _lane_troubles(engine.lanes)
    for line in troubles:
        print(f"fs-cdr import: {line}", file=sys.stderr)
    return 1 if bad or not flushed or troubles else 0


def cmd_tail(args: argparse.Namespace) -> int:
    import redis

    config = load(args.config)
    if config.redis is None:
        print("no redis section in the configuration", file=sys.stderr)
        return 2
    settings = config.redis
    client = redis.Redis(host=settings.host, port=settings.port, db=settings.db,
                         username=settings.username or None, password=settings.password or None)
    shown = 0
    try:
        if args.list or not settings.channel:
            while args.count is None or shown < args.count:
                item = client.brpop([settings.list], timeout=1)
                if item is not None:
                    value = item[1]
                    print(value.decode("utf-8", "replace") if isinstance(value, bytes) else value, flush=True)
                    shown += 1
        else:
            pubsub = client.pubsub()
            pubsub.subscribe(settings.channel)
            while args.count is None or shown < args.count:
                message = pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if message is not None:
                    print(message["data"].decode("utf-8", "replace"), flush=True)
                    shown += 1
    except KeyboardInterrupt:
        pass
    return 0


def _esl_address(text: Optional[str], config: CdrConfig) -> tuple[str, int]:
    if not text:
        return config.event_socket.host, config.event_socket.port
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


def cmd_status(args: argparse.Namespace) -> int:
    from .esl import EslError, EventSocket
    from .metrics import prometheus

    config = load(args.config)
    host, port = _esl_address(args.esl, config)
    try:
        socket = EventSocket(host, port, config.event_socket.password)
        answer = socket.api("python fs_cdr status json")
        socket.close()
    except (OSError, EslError) as error:
        print(f"cannot reach FreeSWITCH's event socket at {host}:{port}: {error}", file=sys.stderr)
        return 2
    try:
        status = json.loads(answer)
    except ValueError:
        print(answer.strip(), file=sys.stderr)  # e.g. -ERR fs_cdr is not running
        return 1
    if args.prometheus:
        temporary = args.prometheus + ".tmp"
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(prometheus(status))
        os.replace(temporary, args.prometheus)  # the textfile collector never reads a half file
    elif args.json:
        print(json.dumps(status, indent=2))
    else:
        print(format_status(status), end="")
    return 0 if all(sink["healthy"] for sink in status["sinks"]) else 1


def cmd_run(args: argparse.Namespace) -> int:
    import dataclasses
    import signal
    import threading

    from .sidecar import run_sidecar

    config = load(args.config)
    host, port = _esl_address(args.esl, config)
    socket_config = dataclasses.replace(config.event_socket, host=host, port=port)
    engine = Engine(config).start()
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        run_sidecar(engine, socket_config, stop)
    finally:
        spooled = engine.stop()
        print(f"stopped; {spooled} records spooled", file=sys.stderr)
    return 0


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
    schema_parser.add_argument("--apply", action="store_true", help="create the table or add missing columns")
    schema_parser.set_defaults(run=cmd_schema)
    check_parser = commands.add_parser("check", help="validate cdr.json and connect to every sink")
    check_parser.set_defaults(run=cmd_check)
    replay_parser = commands.add_parser("replay", help="write the spooled records now")
    replay_parser.add_argument("--timeout", type=float, default=300.0, help="seconds to keep trying")
    replay_parser.set_defaults(run=cmd_replay)
    rotate_parser = commands.add_parser("rotate", help="rename each file sink's current file aside")
    rotate_parser.set_defaults(run=cmd_rotate)
    import_parser = commands.add_parser("import", help="backfill from mod_json_cdr / mod_xml_cdr files")
    import_parser.add_argument("paths", nargs="+", help="files or folders (walked) of .cdr.json/.cdr.xml")
    import_parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the sinks")
    import_parser.set_defaults(run=cmd_import)
    tail_parser = commands.add_parser("tail", help="print records as they arrive on Redis")
    tail_parser.add_argument("--list", action="store_true", help="pop from the list instead of the channel")
    tail_parser.add_argument("--count", type=int, help="stop after this many records")
    tail_parser.set_defaults(run=cmd_tail)
    status_parser = commands.add_parser("status", help="fs_cdr's status in a running FreeSWITCH")
    status_parser.add_argument("--esl", help="HOST:PORT of the event socket (default from cdr.json)")
    status_parser.add_argument("--json", action="store_true")
    status_parser.add_argument("--prometheus", metavar="FILE", help="write the counters for a textfile collector")
    status_parser.set_defaults(run=cmd_status)
    run_parser = commands.add_parser("run", help="run the engine beside FreeSWITCH, fed by its event socket")
    run_parser.add_argument("--esl", help="HOST:PORT of the event socket (default from cdr.json)")
    run_parser.set_defaults(run=cmd_run)
    for sub in (play_parser, schema_parser, check_parser, replay_parser, rotate_parser, import_parser, tail_parser,
                status_parser, run_parser):
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
