"""The engine: configuration, record builder and sink lanes, fed one event at a time by a source.

Sources (FreeSWITCH's EventConsumer in ``switch.py``, a recorded stream in ``source.py``) call
:meth:`Engine.handle` from one thread; it never does I/O in normal operation and never raises.
``status``, ``reload``, ``flush`` and ``stop`` may be called from any other thread.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Optional, Sequence, Union

from .channel import HANGUP_EVENT, Headers, decode_event, header, log_json, shown
from .config import CdrConfig
from .errors import ConfigError
from .realtime import COMPLETED, REMOVED, STATES, ChannelOrder, UpdateBuilder, close_lost_rows_soon, parse_sequence, sequence
from .record import CallRecord, RecordBuilder, compiled_split
from .sinks import lanes_for, targets
from .writer import Guard, SinkLane

log = logging.getLogger("fs_cdr.engine")

#: FreeSWITCH's shutdown events: from then on the engine spools every record as it arrives.
SHUTDOWN_EVENTS = ("SHUTDOWN_REQUESTED", "SHUTDOWN")
#: The events a hangup-mode engine consumes.
EVENTS = (HANGUP_EVENT,) + SHUTDOWN_EVENTS
#: What real-time mode consumes besides, where a sink publishes every state change (a Redis channel).
REALTIME_EVENTS = tuple(STATES)
#: The one real-time event a table does without: a leg's CHANNEL_HANGUP comes milliseconds before its
#: CHANNEL_HANGUP_COMPLETE, whose final record (with the same end, cause and times) replaces its row's
#: state within ENDING_HOLD_S; at load FreeSWITCH even delivers it after the final. Consuming it cost
#: FreeSWITCH a quarter of real-time mode's extra events, the biggest of them (a hangup carries every
#: channel variable), for a state a table row almost never showed.
TABLE_SKIPS = frozenset(("CHANNEL_HANGUP",))
#: How often the source thread hands the GIL over for real (seconds). The source releases the GIL for
#: a moment on every event (``EventConsumer.pop``, ``getHeader``, ``serialize`` do), but CPython 3.11
#: takes it back before a waiting thread can, and each such moment restarts the waiter's 5 ms switch
#: interval: while events keep coming, the guard and the writers wait for the GIL (a burst of
#: hangups with a hung database kept records off disk for 2.2 s instead of the 200 ms window), and
#: every brief release costs the source ~10 µs of futex traffic meanwhile. ``time.sleep(0)`` this
#: often lets the waiter in (tests/test_faults.py, the burst test; bench/run.py measures the gain).
YIELD_INTERVAL_S = 0.001
#: While the guard is behind (Guard.behind), the source pops nothing until the guard's tick ends,
#: looking every GUARD_PAUSE_S, for at most GUARD_WAIT_S at a time; FreeSWITCH's event queue
#: (switch.CONSUMER_QUEUE, 50 s of 1,000 calls/s) holds what arrives meanwhile.
GUARD_PAUSE_S = 0.001
GUARD_WAIT_S = 0.05
#: Real-time mode: how long an update waits in the engine before it is built and sent (seconds). One
#: that a newer event of its leg supersedes meanwhile (the next state, or the final record) is never
#: built: in a burst of short calls that is most of them (a leg's UNBRIDGE and HANGUP come within
#: milliseconds of its HANGUP_COMPLETE). A batch would have written only the newest of them anyway
#: (``writer._unique``; flush_interval_ms is 50 by default), so the rows and the Redis messages are
#: the same, at most this much later. Only where every real-time sink is a table (:func:`update_hold`):
#: a Redis channel publishes every state change.
UPDATE_HOLD_S = 0.02
#: A leg's last states before its final record (ENDING_STATES) wait this long instead: its
#: CHANNEL_HANGUP_COMPLETE follows within milliseconds on a quiet switch, but at load FreeSWITCH takes
#: up to a few hundred (its own delivery to an event-socket listener: p99 about 200 ms at 100 calls/s
#: here), and a state that the final record replaces within this is never built or written. A leg
#: that goes on after an unbridge (a transfer, an IVR after the bridge) shows its newer state when
#: the next event comes, or ``unbridged`` at most this late.
ENDING_HOLD_S = 0.25
ENDING_STATES = frozenset(("CHANNEL_UNBRIDGE", "CHANNEL_HANGUP"))

#: How long ``replay`` waits for a failing sink's immediate retry before it says how that went.
REPLAY_WAIT_S = 1.0

LaneFactory = Callable[[CdrConfig], list[SinkLane]]


def _sink_shape(config: CdrConfig) -> tuple[Any, ...]:
    """What, when changed by a reload, needs new sink lanes (new connections, new statements)."""
    return (config.sinks, config.fields, config.details, config.spool_dir, config.columns, config.calls_table)


class Engine:
    def __init__(self, config: CdrConfig, lane_factory: LaneFactory = lanes_for) -> None:
        self.config = config
        #: set by the switch: close the real-time rows an earlier run of this switch left open, with the
        #: switchname and Core-UUID of the first record (realtime.close_lost_rows_soon)
        self.close_lost_rows = False
        self.builder = RecordBuilder(config)
        self.updates = UpdateBuilder(config)
        #: real-time mode: what was last dispatched per channel (late and stale updates stay out)
        self.order = ChannelOrder()
        self.lane_factory = lane_factory
        self.lanes: Sequence[SinkLane] = lane_factory(config)
        self.guard = Guard(lambda: self.lanes, config.durable_window_ms / 1000.0)
        self.started_at = time.time()
        self.events = 0
        self.records = 0
        self.updates_seen = 0
        self.skipped = 0
        self.malformed = 0
        #: Serialized hangups split by the compiled fast path, and those decoded whole in Python.
        self.split = 0
        self.decoded = 0
        #: Records whose columns fs_cdr._hangup built, by the builders a reload replaced.
        self._built_before = 0
        self.reloads = 0
        self.shutting_down = False
        self._swap = threading.Lock()
        self._started = False
        self._yielded = 0.0
        #: real-time updates not built yet, per uuid: [since, event_seq, event name, headers or a
        #: function that reads them] (see UPDATE_HOLD_S); the lock also orders what they dispatch
        #: with the final records (flush and stop release them from other threads)
        self.update_hold_s = update_hold(self.lanes)
        #: the channel events real-time updates are built from (the source binds these)
        self.realtime_events = realtime_events(self.lanes)
        self._held: dict[Any, list[Any]] = {}
        #: the same for legs whose first held update is an ending state (ENDING_HOLD_S)
        self._ending: dict[Any, list[Any]] = {}
        self._held_lock = threading.Lock()
        #: updates never built because a newer record of their leg came within the hold
        self.superseded = 0

    def start(self) -> "Engine":
        for lane in self.lanes:
            lane.start()
        self.guard.start()
        self._started = True
        log.info("started: %s", "; ".join(lane.description for lane in self.lanes) or "log only")
        return self

    # -- the source thread ---------------------------------------------------------------------
    def handle(self, headers: Headers) -> Optional[CallRecord]:
        """Take one event. Returns the record it produced (if any). Never raises."""
        return self._take(headers, None, None)

    def handle_serialized(self, text: Union[str, bytes]) -> Optional[CallRecord]:
        """Take one event as JSON text (``Event.serialize('json')``, a recorded line): split by the
        compiled fast path where it can (``RecordBuilder.split``), else decoded whole. Never raises."""
        builder = self.builder  # split and build with one configuration, whatever a reload does
        try:
            split = builder.split(text)
            if split is None:
                self.decoded += 1
                return self._take(decode_event(text), None, None)
        except (ValueError, MemoryError) as error:
            self.events += 1
            self.malformed += 1
            log.warning("skipped an event that is not a JSON object: %s", str(error)[:200])
            return None
        self.split += 1
        return self._take(split[0], builder, split[1])

    def _take(self, headers: Headers, builder: Optional[RecordBuilder], details: Optional[str]) -> Optional[CallRecord]:
        try:
            self.events += 1
            name = header(headers, "Event-Name")
            if name == HANGUP_EVENT or name is None:
                return self._record(headers, builder or self.builder, details)
            if name in STATES:
                if self.config.real and name in self.realtime_events:
                    self._hold(header(headers, "Unique-ID"), sequence(headers), name, headers)
                return None
            if name in SHUTDOWN_EVENTS:
                self.begin_shutdown(name)
        except Exception:  # noqa: BLE001 - nothing may escape into FreeSWITCH
            self.malformed += 1
            log.exception("could not process an event (uuid %s)", _uuid(headers))
        finally:
            self._after_event()
        return None

    def handle_update(self, uuid: Optional[str], seq: Optional[str], name: str,
                      read: Callable[[], Headers]) -> None:
        """Take one real-time event (``name`` in realtime.STATES) whose headers ``read()`` reads when
        the update is built, if it ever is (FreeSWITCH's source: getHeader on the event it holds).
        Never raises."""
        try:
            self.events += 1
            if self.config.real and name in self.realtime_events:
                self._hold(uuid, parse_sequence(seq), name, read)
        except Exception:  # noqa: BLE001 - nothing may escape into FreeSWITCH
            self.malformed += 1
            log.exception("could not process an event (uuid %s)", shown(uuid))
        finally:
            self._after_event()

    def _after_event(self) -> None:
        now = time.monotonic()
        if self._held or self._ending:
            if self._due(now):
                self.release_updates(now)
        if now - self._yielded > YIELD_INTERVAL_S:
            self._give_way(now)

    def _hold(self, uuid: Optional[str], seq: Optional[int], name: str, source: Any) -> None:
        if self.update_hold_s <= 0:
            self._update(source() if callable(source) else source, name)
            return
        with self._held_lock:
            held = self._held.get(uuid)
            if held is None:
                held = self._ending.get(uuid)
            if held is None:
                (self._ending if name in ENDING_STATES else self._held)[uuid] = [time.monotonic(), seq, name, source]
            else:
                # of two updates of one leg the higher event_seq wins (realtime.supersedes); the
                # entry keeps its place and its time, so no state waits longer than its hold
                self.superseded += 1
                if (seq or 0) >= (held[1] or 0):
                    held[1:] = (seq, name, source)

    def _holds(self) -> tuple[tuple[dict[Any, list[Any]], float], ...]:
        return (self._held, self.update_hold_s), (self._ending, max(self.update_hold_s, ENDING_HOLD_S))

    def _due(self, now: float) -> bool:
        """Whether the oldest held update of either hold has waited long enough."""
        # under the lock: a flush, stop or reload on another thread may empty a map meanwhile
        with self._held_lock:
            for held, hold_s in self._holds():
                oldest = next(iter(held.values()), None)
                if oldest is not None and now - oldest[0] >= hold_s:
                    return True
        return False

    def release_updates(self, now: float, everything: bool = False) -> int:
        """Build and send the held updates that waited their hold (all of them: ``everything``).
        The source thread calls it after each event and when no event came (``tick``); flush, stop
        and a shutdown release everything. Returns how many were released."""
        with self._held_lock:
            if not self._held and not self._ending:
                return 0
            taken: list[list[Any]] = []
            for held, hold_s in self._holds():
                if everything:
                    taken += held.values()
                    held.clear()
                    continue
                cutoff = now - hold_s
                keys = []
                for key, item in held.items():  # in the order they came: the oldest first
                    if item[0] > cutoff:
                        break
                    keys.append(key)
                taken += [held.pop(key) for key in keys]
            if len(taken) > 1:
                taken.sort(key=lambda item: item[0])
            for _since, _seq, name, source in taken:
                try:
                    self._update(source() if callable(source) else source, name)
                except Exception:  # noqa: BLE001 - one bad event costs no other
                    self.malformed += 1
                    log.exception("could not process a %s", name)
        return len(taken)

    def tick(self) -> None:
        """The source had no event for a while: release the updates that waited long enough."""
        if self._held or self._ending:
            self.release_updates(time.monotonic())

    @property
    def holding(self) -> bool:
        """Whether updates wait to be built (the source then polls at least every hold)."""
        return bool(self._held or self._ending)

    def _give_way(self, now: float) -> None:
        """See YIELD_INTERVAL_S: let a thread that waits for the GIL have it; and while the guard is
        behind (a burst of hangups to put on disk), let it finish its tick before the next event is
        popped, so the durability window holds from the moment an event is popped (the rest wait in
        FreeSWITCH's event queue meanwhile). After an event, not before: the wait must not count
        against the one just taken."""
        guard = self.guard
        if guard.behind(now):
            ticked, until = guard.ticked, now + GUARD_WAIT_S
            time.sleep(GUARD_PAUSE_S)
            while guard.ticked == ticked and time.monotonic() < until:
                time.sleep(GUARD_PAUSE_S)
        else:
            time.sleep(0)
        self._yielded = time.monotonic()

    def _record(self, headers: Headers, builder: RecordBuilder, details: Optional[str]) -> Optional[CallRecord]:
        try:
            record = builder.build(headers, details)
        except ValueError as error:
            self.malformed += 1
            log.warning("skipped a malformed event: %s", error)
            return None
        if record is None:
            self.skipped += 1
            if self.config.real:
                # the leg was left out only at its end (a skip variable set in the dialplan): take back
                # the row real-time mode wrote while it was up
                uuid = header(headers, "Unique-ID") or header(headers, "variable_uuid")
                self._dispatch_final({"uuid": uuid, "call_state": REMOVED, "event_seq": sequence(headers)}, final=False)
            return None
        record["call_state"] = COMPLETED
        record["event_seq"] = sequence(headers)
        self.records += 1
        if self.config.log:
            log.info("CDR %s", log_json(record))
        self._dispatch_final(record, final=True)
        return record

    def _dispatch_final(self, record: CallRecord, final: bool) -> None:
        """A leg's last record: an update of it still held is superseded and never built."""
        if self._held or self._ending:
            with self._held_lock:
                uuid = record.get("uuid")
                if self._held.pop(uuid, None) is not None or self._ending.pop(uuid, None) is not None:
                    self.superseded += 1
                self._dispatch(record, final)
        else:
            self._dispatch(record, final)

    def _update(self, headers: Headers, name: str) -> Optional[CallRecord]:
        try:
            record = self.updates.build(headers, name)
        except ValueError as error:
            self.malformed += 1
            log.warning("skipped a malformed %s: %s", name, error)
            return None
        if record is not None:
            self.updates_seen += 1
            self._dispatch(record, final=False)
        return record

    def _dispatch(self, record: CallRecord, final: bool) -> None:
        if self.close_lost_rows:
            self.close_lost_rows = False
            close_lost_rows_soon(self.config, str(record.get("switchname") or ""), str(record.get("core_uuid") or ""))
        if self.config.real and not self.order.admit(record):
            return  # an update older than what the sinks already have: FreeSWITCH delivered it late
        now = time.monotonic()
        with self._swap:
            lanes = self.lanes if final else [lane for lane in self.lanes if lane.realtime]
            if self.shutting_down:
                for lane in lanes:
                    lane.offer_to_disk(record, now)
            else:
                for lane in lanes:
                    lane.offer(record, now)

    def begin_shutdown(self, reason: str) -> None:
        """FreeSWITCH is stopping and will not say when Python dies: from now on every record is
        fsynced to the spool as it arrives, and what the lanes hold goes there too."""
        if self.shutting_down:
            return
        log.warning("%s: spooling what is queued and every record from now on", reason)
        with self._swap:
            self.shutting_down = True
        self.release_updates(time.monotonic(), everything=True)
        for lane in self.lanes:
            spooled = lane.guard(time.monotonic(), 0.0, everything=True)
            if spooled:
                log.info("sink %s: spooled %d records at shutdown", lane.name, spooled)

    # -- control (fs_cli, tests) ----------------------------------------------------------------
    def reload(self, config: CdrConfig, probe: bool = True) -> str:
        """Switch to a new configuration. A configuration whose table lacks a configured column is
        refused (``ConfigError``) and the running one stays; an unreachable database is not a reason
        to refuse (its records are spooled until it is back)."""
        if probe:
            probe_config(config)
        self.release_updates(time.monotonic(), everything=True)  # built as the old configuration says
        if _sink_shape(config) == _sink_shape(self.config):
            with self._swap:
                self._built_before += self.builder.built_in_c
                self.config, self.builder, self.updates = config, RecordBuilder(config), UpdateBuilder(config)
            self.reloads += 1
            return "configuration reloaded (same sinks)"
        with self._swap:
            # Old lanes finish or spool what they hold before new ones open the same spool
            # directories; meanwhile the source waits here (FreeSWITCH's queue absorbs the pause).
            for lane in self.lanes:
                lane.stop(timeout_s=1.0)
            self.lanes = self.lane_factory(config)
            self._built_before += self.builder.built_in_c
            self.config, self.builder, self.updates = config, RecordBuilder(config), UpdateBuilder(config)
            self.guard.window_s = config.durable_window_ms / 1000.0
            self.update_hold_s = update_hold(self.lanes)
            self.realtime_events = realtime_events(self.lanes)
            for lane in self.lanes:
                lane.start()
        self.reloads += 1
        return "configuration reloaded: " + ("; ".join(lane.description for lane in self.lanes) or "log only")

    def replay(self) -> str:
        """Retry every sink now (skipping its backoff); the spool drains as soon as a sink takes writes."""
        return self.replay_report()[1]

    def replay_report(self, wait_s: float = REPLAY_WAIT_S) -> tuple[bool, str]:
        """:meth:`replay`, and whether nothing stands in the way: each failing sink is tried at once
        and given up to ``wait_s`` to answer, so that a sink which is back is not reported failing.
        False when a sink still fails (named with its error), its spool's disk refuses, or records
        were lost."""
        failing = {lane.name: lane.stats.retries for lane in self.lanes if lane.failures}
        pending = {lane.name: lane.replay_now() for lane in self.lanes}
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and any(
                lane.failures and lane.stats.retries == failing[lane.name]
                for lane in self.lanes if lane.name in failing):
            time.sleep(0.01)
        parts = []
        ok = True
        for lane in self.lanes:
            part = f"{lane.name}: {pending[lane.name]} spooled"
            if lane.failures:
                ok = False
                part += f" (the sink fails: {lane.stats.last_error or 'no answer yet'})"
            if lane.disk_error:
                ok = False
                part += f" (the spool's disk refuses: {lane.disk_error})"
            lost = lane.stats.lost + lane.spool.lost
            if lost:
                ok = False
                part += f" ({lost} records lost, see the log)"
            parts.append(part)
        return ok, "replaying " + (", ".join(parts) or "nothing")

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until every lane has written everything it received, spool included."""
        self.release_updates(time.monotonic(), everything=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(lane.settled() for lane in self.lanes):
                return True
            time.sleep(0.005)
        return False

    def stop(self, timeout_s: float = 2.0) -> int:
        """Write what can be written within ``timeout_s``, spool the rest; returns how many were spooled."""
        self.release_updates(time.monotonic(), everything=True)
        if not self._started:
            for lane in self.lanes:
                lane.spool.close()  # give up the spool directories all the same
            return 0
        self.guard.stop()
        spooled = sum(lane.stop(timeout_s) for lane in self.lanes)
        self._started = False
        log.info("stopped (%d records wait in the spool)", sum(lane.spool.pending for lane in self.lanes))
        return spooled

    def status(self) -> dict[str, Any]:
        return {
            "config": self.config.source,
            "uptime_s": round(time.time() - self.started_at, 1),
            "events": self.events,
            "records": self.records,
            "updates": self.updates_seen,
            "stale_updates": self.order.stale,
            "superseded_updates": self.superseded,
            "real": self.config.real,
            "skipped": self.skipped,
            "malformed": self.malformed,
            "fast_path": {"compiled": compiled_split(), "split": self.split, "decoded": self.decoded,
                          "built_in_c": self._built_before + self.builder.built_in_c},
            "reloads": self.reloads,
            "shutting_down": self.shutting_down,
            "sinks": [lane.status() for lane in self.lanes],
        }


def update_hold(lanes: Sequence[SinkLane]) -> float:
    """UPDATE_HOLD_S where every real-time sink is a table (one row per leg: only the newest state
    counts); 0 where one publishes every state change (a Redis channel)."""
    return UPDATE_HOLD_S if _tables_only(lanes) else 0.0


def realtime_events(lanes: Sequence[SinkLane]) -> frozenset[str]:
    """The channel events real-time updates come from: every state change (REALTIME_EVENTS) where a
    sink publishes each one; where every real-time sink is a table, all but TABLE_SKIPS (a row goes
    from its last live state to its final record)."""
    return frozenset(REALTIME_EVENTS) - (TABLE_SKIPS if _tables_only(lanes) else frozenset())


def _tables_only(lanes: Sequence[SinkLane]) -> bool:
    """Whether every real-time sink keeps one row per leg (only its newest state counts), none
    publishing each state change (a Redis channel)."""
    return all(lane.coalesce for lane in lanes if lane.realtime)


def probe_config(config: CdrConfig) -> None:
    """Open each sink once and check its table; raises ``ConfigError`` for a missing column.
    A sink that cannot be reached now is only logged: its records will be spooled."""
    for target in targets(config):
        sink = target.open_sink()
        try:
            sink.open()
        except ConfigError:
            raise
        except Exception as error:  # noqa: BLE001
            log.warning("sink %s: not reachable while checking the configuration: %s", target.name, error)
        finally:
            sink.close()


def _uuid(headers: Headers) -> str:
    try:
        return shown(header(headers, "Unique-ID"))  # quoted: a newline in it cannot forge a log line
    except Exception:  # noqa: BLE001
        return "?"


def _fast_path_line(fast: Optional[dict[str, Any]]) -> str:
    if not fast:
        return ""
    if not fast["compiled"]:
        return f"events decoded in Python {fast['decoded']} (fs_cdr._hangup is not built: see the README)"
    return (f"events split by fs_cdr._hangup {fast['split']}, decoded in Python {fast['decoded']}; "
            f"records built in C {fast.get('built_in_c', 0)}")


def format_status(status: dict[str, Any]) -> str:
    """The status as a table that reads well in fs_cli."""
    lines = [
        f"fs_cdr  config {status['config']}  up {status['uptime_s']}s  events {status['events']}  "
        f"records {status['records']}  skipped {status['skipped']}  malformed {status['malformed']}"
        + ("  SHUTTING DOWN" if status["shutting_down"] else ""),
        _fast_path_line(status.get("fast_path")),
        "",
    ]
    columns = ("sink", "healthy", "received", "written", "queued", "spooled", "rejected", "lost", "retries",
               "replayed", "disk")
    rows = [
        [("yes" if sink[column] else "NO") if column == "healthy" else str(sink[column]) for column in columns]
        for sink in status["sinks"]
    ]
    widths = [max([len(column)] + [len(row[i]) for row in rows]) for i, column in enumerate(columns)]
    lines.append("  ".join(column.ljust(width) for column, width in zip(columns, widths)).rstrip())
    for row in rows:
        lines.append("  ".join(value.ljust(width) for value, width in zip(row, widths)).rstrip())
    for sink in status["sinks"]:
        error = f"  last error: {sink['last_error']}" if sink["last_error"] else ""
        if sink.get("disk_error"):
            error += f"  disk: {sink['disk_error']}"
        pids = sink.get("worker_pids")
        workers = f"  worker pid {', '.join(map(str, pids))}" if pids else ""
        lines.append(f"{sink['sink']}: {sink['target']}{workers}{error}")
    return "\n".join(lines) + "\n"
