"""Real-time mode at load, in a real FreeSWITCH (issue 20): does every leg end as its final record?

    .venv/bin/python bench/realtime_load.py [--calls 2000] [--rounds 5] [--paced-calls 1000]
                                            [--paced-rounds 5] [--databases mariadb,postgresql]

The call shape and driver of bench/switch_cost.py (2,000 two-leg null/ calls as fast as the event
socket takes ``bgapi originate``), fs_cdr with ``details: true`` into MariaDB and, separately,
PostgreSQL; a fresh table and a fresh private FreeSWITCH each run. Per database, hangup-only and
real-time (``"real": true``) runs alternate in ABBA order, ``--rounds`` of each; then ``--paced-rounds``
real-time runs at 100 calls/s with an event-socket listener and a poller on the table, for the lag
from each state change (its Event-Date-Timestamp) to the moment a reader sees the row show it.

Per run: FreeSWITCH's own count of sessions created (``status``) against the rows; rows that are not
``completed`` with ``details``; whether the rows equal the paired hangup-only run's in every column
that does not depend on the run (live_load.RUN_DEPENDENT); fs_cdr's deadlocks (``conflicts``),
records spooled (left in the spool + replayed from it), stale updates (late CHANNEL_HANGUPs fs_cdr
saw after their leg's final record); FreeSWITCH's + its sink workers' CPU seconds per 1,000 calls.
The burst runs have no listener (it would cost FreeSWITCH CPU); the paced ones do.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid as uuidlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from live_load import (
    SQL_TARGETS,
    EventCapture,
    RowWatcher,
    SwitchWatch,
    difference,
    drop,
    everything_built,
    incomplete,
    late_hangup_legs,
    percentile,
    read_rows,
    sessions_created,
    start_own,
    state_lags,
    unlike_own_details,
)
from live_switch import LiveSwitch, missing_reason
from run import CpuMeter, addition_loop_s
from switch_cost import _drive, _spooled


@dataclass
class Run:
    kind: str
    mode: str
    calls: int
    sessions: int = -1
    rows: int = 0
    not_final: int = 0
    #: columns of a row that disagree with its own details (live_load.unlike_own_details)
    unlike_details: int = 0
    rate: float = 0.0
    fs_cpu: float = 0.0
    worker_cpu: float = 0.0
    #: the database server's CPU seconds over the same span (not in cpu_per_1000: it is the server's)
    server_cpu: float = 0.0
    conflicts: int = 0
    retries: int = 0
    spooled: int = 0
    replayed: int = 0
    rejected: int = 0
    stale: int = 0
    #: updates never built: a newer event of their leg came within the engine's hold (UPDATE_HOLD_S)
    superseded: int = 0
    #: updates built and sent to the lanes
    updates: int = 0
    #: crash copies the lane put in its journal (records that waited half the durability window)
    journaled: int = 0
    #: batches the sink took (status json): written rows / batches is the batch size it reached
    batches: int = 0
    records: int = 0
    same: str = "-"
    lags: list[float] = field(default_factory=list)
    lags_by_event: dict[str, list[float]] = field(default_factory=dict)
    never_shown: int = 0
    #: seconds from each event's Event-Date-Timestamp to its arrival at the listener (FreeSWITCH's own delivery)
    delivery: list[float] = field(default_factory=list)
    late_seen: int = 0
    poll_ms: float = 0.0
    #: the machine's 1-minute load average as the run started (it is shared)
    load: float = 0.0
    #: the machine's speed around the run: CPU seconds of a fixed Python loop, before and after
    #: (speed_probe); a shared VM's speed moves by half or more between minutes
    speed: tuple[float, float] = (0.0, 0.0)
    notes: list[str] = field(default_factory=list)
    #: other FreeSWITCH processes of the harness's binary seen during the run
    shared: set[int] = field(default_factory=set)

    @property
    def cpu_per_1000(self) -> float:
        return (self.fs_cpu + self.worker_cpu) * 1000 / self.calls

    @property
    def complete(self) -> bool:
        """Every leg FreeSWITCH created has a row, a final one with its details, none refused, every
        state change shown (paced runs). Whether the rows equal the hangup-only run's is its own column:
        at load FreeSWITCH itself sometimes ends a call differently (see the notes)."""
        return (self.rows == self.sessions and self.not_final == 0 and self.unlike_details == 0 and self.rejected == 0
                and self.never_shown == 0)


def speed_probe() -> float:
    """CPU seconds of 5 million Python additions: the machine's speed now (lower is faster)."""
    return addition_loop_s(5_000_000, time.process_time)


def steady(run: Run, limit: float = 0.1) -> bool:
    """Whether the machine's speed held during the run (before and after within ``limit``)."""
    before, after = run.speed
    return before > 0 and abs(after - before) / before <= limit


def one_run(directory: Path, kind: str, real: bool, calls: int, pace: float = 0.0) -> tuple[Run, list[dict[str, Any]]]:
    """:func:`attempt`, again (up to three times) when another FreeSWITCH of the same binary ran
    meanwhile (another session's live tests): its commands may have reached ours."""
    for _ in range(3):
        before = speed_probe()
        run, rows = attempt(directory, kind, real, calls, pace)
        run.speed = (before, speed_probe())
        if not run.shared:
            return run, rows
        print(f"({run.kind} {run.mode}: another FreeSWITCH ({sorted(run.shared)}) ran meanwhile; run again)",
              flush=True)
    run.notes.append(f"another FreeSWITCH ran during the run: {sorted(run.shared)}")
    return run, rows


def attempt(directory: Path, kind: str, real: bool, calls: int, pace: float = 0.0) -> tuple[Run, list[dict[str, Any]]]:
    """One private FreeSWITCH, ``calls`` two-leg calls, fs_cdr into a fresh ``kind`` table (dropped after)."""
    root = directory / f"fs-{uuidlib.uuid4().hex[:8]}"
    root.mkdir()
    table = f"bench_rt_{uuidlib.uuid4().hex[:8]}"
    cdr = {"details": True, "spool_dir": str(root / "spool"),
           "database": dict(SQL_TARGETS[kind], table=table, real=real)}
    mode = ("paced real-time" if pace else "real-time") if real else "hangup-only"
    run = Run(kind, mode, calls, load=os.getloadavg()[0])
    legs = 2 * calls
    live = LiveSwitch(root, cdr)
    live.prepare()
    start_own(live)
    assert live.process is not None
    others = SwitchWatch(live.process.pid)
    capture: EventCapture | None = None
    watcher: RowWatcher | None = None
    try:
        if pace:
            capture, watcher = EventCapture(live), RowWatcher(kind, table)
        server = CpuMeter(SERVER_PROCESS[kind])
        server.start()
        run.rate, run.fs_cpu, run.worker_cpu = _drive(
            live, calls, settled=lambda: everything_built(live, sessions_created(live)), rate=pace)
        server.stop()
        run.server_cpu = server.server_cpu
        live.api("python fs_cdr flush")
        run.sessions = sessions_created(live)
        status = live.fs_cdr_status()
        if status is None or len(status["sinks"]) != 1:
            run.notes.append(f"status from fs_cdr: {status}")
        else:
            run.records, run.stale = status["records"], status["stale_updates"]
            run.superseded, run.updates = status.get("superseded_updates", 0), status.get("updates", 0)
            (sink,) = status["sinks"]
            run.conflicts, run.retries, run.rejected = sink["conflicts"], sink["retries"], sink["rejected"]
            run.spooled, run.replayed = sink["spooled"], sink["replayed"]
            run.journaled = sink.get("journal_copies", 0)
            run.batches = sink.get("batches", 0)
            if sink["last_error"]:
                run.notes.append(f"last error: {sink['last_error']}")
        if watcher is not None:
            # until every leg's final record has been seen (or 10 s)
            deadline = time.time() + 10
            while time.time() < deadline and sum(
                    1 for history in list(watcher.history.values()) if history[-1][2] == "completed") < legs:
                time.sleep(0.05)
            watcher.stop()
            run.poll_ms = watcher.poll_s * 1000
    finally:
        if watcher is not None:
            watcher.stop()
        events = capture.stop() if capture is not None else []
        live.shutdown()
        run.shared = others.stop()
    run.spooled += _spooled(root / "spool")  # left at shutdown: written at the next start
    if "Cannot queue any more events" in live.log_text():
        run.notes.append("FreeSWITCH: Cannot queue any more events")
    rows = read_rows(kind, table)
    drop(kind, table)
    shutil.rmtree(root, ignore_errors=True)
    run.rows = len(rows)
    bad = incomplete(rows)
    run.not_final = len(bad)
    unlike = unlike_own_details(rows)
    run.unlike_details = len(unlike)
    if unlike:
        run.notes.append(f"{len(unlike)} columns unlike the row's own details, e.g. {unlike[:3]}")
    if bad:
        run.notes.append("not final: " + ", ".join(f"{row['uuid']} leg {row['leg']} {row['call_state']} "
                                                   f"details {'set' if row.get('details') else 'NULL'}"
                                                   for row in bad[:5]))
    if watcher is not None:
        named, never = state_lags(events, watcher.history)
        run.lags = [lag for _name, lag in named]
        for name, lag in named:
            run.lags_by_event.setdefault(name, []).append(lag)
        run.never_shown = len(never)
        run.late_seen = len(late_hangup_legs(events))
        assert capture is not None
        run.delivery = [arrived - int(event["Event-Date-Timestamp"]) / 1e6
                        for event, arrived in zip(events, capture.arrivals)]
        if never:
            run.notes.append("never shown: " + ", ".join(f"{event['Unique-ID']} {event['Event-Name']}"
                                                         for event in never[:5]))
    return run, rows


#: the database server's process name, as /proc shows it (PostgreSQL: every backend's), for CpuMeter
SERVER_PROCESS = {"mariadb": "mariadbd", "postgresql": "postgres"}


def _parts(run: Run) -> str:
    """FreeSWITCH / its sink workers / the database server, CPU-s per 1,000 calls."""
    per = 1000 / run.calls
    return f"{run.fs_cpu * per:.2f}/{run.worker_cpu * per:.2f}/{run.server_cpu * per:.2f}"


def _line(run: Run) -> str:
    lag = (f"{percentile(run.lags, 0.5) * 1000:6.1f} {percentile(run.lags, 0.99) * 1000:6.1f}" if run.lags
           else f"{'':6} {'':6}")
    return (f"{run.kind:<10} {run.mode:<16} {run.rate:6.0f} {run.sessions:6} {run.rows:6} {run.not_final:5} "
            f"{'equal' if not run.same else run.same if run.same == '-' else 'DIFF':>6} {run.conflicts:4} "
            f"{run.spooled:5} {run.replayed:5} {run.journaled:6} {run.stale:5} {run.updates:6} {run.superseded:6} "
            f"{run.batches:5} "
            f"{run.cpu_per_1000:7.2f} {_parts(run):>15} {lag} {_delivery(run):>11}"
            f" {run.load:5.1f} {run.speed[0]:.2f}/{run.speed[1]:.2f} {'yes' if run.complete else 'NO':>4}"
            + (f"  {'; '.join(run.notes)}" if run.notes else "") + (f"  {run.same}" if run.same not in ("", "-") else ""))


HEADER = (f"{'database':<10} {'mode':<16} {'call/s':>6} {'legs':>6} {'rows':>6} {'!fin':>5} {'same':>6} "
          f"{'dlk':>4} {'spool':>5} {'repl':>5} {'jrnl':>6} {'stale':>5} {'upd':>6} {'supsd':>6} {'batch':>5} {'CPU/1k':>7} "
          f"{'fs/workers/db':>15} "
          f"{'p50ms':>6} {'p99ms':>6} {'to ESL p50/99':>11} "
          f"{'load':>5} {'speed':>9} {'ok':>4}")


def _delivery(run: Run) -> str:
    if not run.delivery:
        return ""
    return f"{percentile(run.delivery, 0.5) * 1000:.0f}/{percentile(run.delivery, 0.99) * 1000:.0f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--paced-calls", type=int, default=1000)
    parser.add_argument("--paced-rounds", type=int, default=5)
    parser.add_argument("--pace", type=float, default=100.0, help="calls a second in the paced runs")
    parser.add_argument("--databases", default="mariadb,postgresql")
    args = parser.parse_args()
    reason = missing_reason()
    if reason:
        print(f"skipped: {reason}")
        return 0
    print(f"fs_cdr real-time at load {time.strftime('%Y-%m-%d %H:%M %Z')} on {platform.node()}: "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    print("columns: legs = FreeSWITCH's sessions since startup; !fin = rows not completed with details; same = rows "
          "equal to the paired hangup-only run's in the run-independent columns; dlk = deadlocks (conflicts); "
          "spool = left in the spool; repl = replayed from it; jrnl = crash copies journaled; "
          "stale = updates after their leg's final; upd = updates built and sent; supsd = updates never built "
          "(superseded within the engine's hold); "
          "CPU/1k = FreeSWITCH + workers CPU-s per 1,000 calls "
          "(fs/workers/db: each part, and the database server's beside them); p50/p99 = state change -> row visible (paced); "
          "speed = CPU-s of a fixed Python loop before/after the run (lower is faster; a shared VM's speed moves)\n")
    print(HEADER, flush=True)
    directory = Path(tempfile.mkdtemp(prefix="fs_cdr_rt-"))
    runs: list[Run] = []
    #: per database, real-time's extra CPU over the hangup-only run of its pair
    extra: dict[str, list[float]] = {}
    #: the same, for the pairs whose machine speed held (both runs steady, within 10% of each other)
    extra_steady: dict[str, list[float]] = {}
    for kind in args.databases.split(","):
        reference: list[dict[str, Any]] = []
        for round_ in range(args.rounds):
            pair: dict[bool, tuple[Run, list[dict[str, Any]]]] = {}
            for real in ((False, True) if round_ % 2 == 0 else (True, False)):
                pair[real] = one_run(directory, kind, real, args.calls)
            (hangup, hangup_rows), (real_run, real_rows) = pair[False], pair[True]
            real_run.same = difference(real_rows, hangup_rows)
            extra.setdefault(kind, []).append(real_run.cpu_per_1000 / hangup.cpu_per_1000 - 1)
            if steady(hangup) and steady(real_run) and abs(sum(real_run.speed) / sum(hangup.speed) - 1) <= 0.1:
                extra_steady.setdefault(kind, []).append(real_run.cpu_per_1000 / hangup.cpu_per_1000 - 1)
            if reference:
                hangup.same = difference(hangup_rows, reference)  # the control: hangup-only against itself
            reference = hangup_rows
            for done, _rows in (pair[False], pair[True]) if round_ % 2 == 0 else (pair[True], pair[False]):
                runs.append(done)
                print(_line(done), flush=True)
        for _ in range(args.paced_rounds):
            paced, rows = one_run(directory, kind, True, args.paced_calls, pace=args.pace)
            paced.same = _paced_difference(rows, reference) if reference else "-"
            runs.append(paced)
            print(_line(paced), flush=True)
    shutil.rmtree(directory, ignore_errors=True)
    print()
    summary(runs)
    for kind, ratios in extra.items():
        print(f"{kind}: real-time's extra CPU over its pair's hangup-only run: "
              + ", ".join(f"{ratio * 100:+.1f}%" for ratio in ratios)
              + f" (median {statistics.median(ratios) * 100:+.1f}%)")
        kept = extra_steady.get(kind, [])
        print(f"{kind}: the same, pairs whose machine speed held (speed within 10%): "
              + (", ".join(f"{ratio * 100:+.1f}%" for ratio in kept) + f" (median {statistics.median(kept) * 100:+.1f}%)"
                 if kept else "none"))
    return 0


def _paced_difference(rows: list[dict[str, Any]], reference: list[dict[str, Any]]) -> str:
    """A paced run has fewer calls than the hangup-only runs: each of its rows must be one of theirs."""
    from live_load import comparable

    ours, theirs = comparable(rows), comparable(reference)
    unknown = [key for key in ours if key not in theirs]
    return f"{len(unknown)} kinds of row no hangup-only run wrote" if unknown else ""


def summary(runs: list[Run]) -> None:
    """Per database and mode: runs complete, medians, and real-time's extra CPU over hangup-only."""
    print(f"{'database':<10} {'mode':<16} {'runs':>4} {'complete':>8} {'rows (min-max)':>15} {'dlk':>6} "
          f"{'spooled':>8} {'stale':>6} {'CPU/1k median':>13} {'extra':>7} {'lag p50/p99 ms (pooled)':>24}")
    for kind in dict.fromkeys(run.kind for run in runs):
        base: float | None = None
        for mode in ("hangup-only", "real-time", "paced real-time"):
            chosen = [run for run in runs if run.kind == kind and run.mode == mode]
            if not chosen:
                continue
            cpu = statistics.median(run.cpu_per_1000 for run in chosen)
            if mode == "hangup-only":
                base = cpu
            extra = f"{(cpu / base - 1) * 100:+.1f}%" if base and mode == "real-time" else ""
            lags = [lag for run in chosen for lag in run.lags]
            delivered = [lag for run in chosen for lag in run.delivery]
            lag = f"{percentile(lags, 0.5) * 1000:.1f} / {percentile(lags, 0.99) * 1000:.1f}" if lags else ""
            rows = [run.rows for run in chosen]
            print(f"{kind:<10} {mode:<16} {len(chosen):4} {sum(run.complete for run in chosen):8} "
                  f"{min(rows):>7}-{max(rows):<7} {'/'.join(str(run.conflicts) for run in chosen):>6} "
                  f"{'/'.join(str(run.spooled + run.replayed) for run in chosen):>8} "
                  f"{'/'.join(str(run.stale) for run in chosen):>6} {cpu:13.2f} {extra:>7} {lag:>24}"
                  + (f"   FreeSWITCH -> listener p50/p99 {percentile(delivered, 0.5) * 1000:.1f} / "
                     f"{percentile(delivered, 0.99) * 1000:.1f} ms" if delivered else ""))


if __name__ == "__main__":
    sys.exit(main())
