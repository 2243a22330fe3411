"""Sink writers: the shared machinery between the dispatcher and a sink.

Each sink gets a :class:`SinkLane`: its writer threads (one connection each; by default each runs its
sink in a worker process, sinks/worker.py), its durable spool and its counters. The contract every lane keeps:

- ``offer`` never blocks and never does I/O: it appends to a bounded in-memory queue, or, when the
  queue is full or the sink is down, to an overflow list that the guard thread moves to disk.
- A writer thread drains its queue in batches (``batch_size`` records or ``flush_interval_ms``,
  whichever comes first) and upserts them. Errors are classified by the sink; retriable ones are
  retried with :class:`~fs_cdr.retry.Backoff`, rejected records are set aside one by one.
- The guard (:class:`Guard`) checks every lane a few times per ``window``: records waiting longer
  than the durability window (sink down or slow) are appended to the spool and fsynced, and the
  lane stays *degraded* — new records go to disk — until a replay from the spool succeeds. So a
  record popped from FreeSWITCH is in the sink or on disk within about one window, kill -9 or not.
- A record leaves memory only once it is fsynced in the spool or written: the guard copies what is
  due to disk first and removes it from memory after. When the disk refuses (full, read-only,
  failing, ``spool_max_mb`` reached), records stay in memory — up to ``queue_size``, still written
  the moment the sink takes writes — and the disk is tried again at every tick; a record that
  neither memory, sink nor disk can hold is counted ``lost`` and its uuid logged. So at every
  moment ``received = written + queued + spooled + rejected + lost``.
- A lane replays its spool in order, one spool batch then one live batch, so a long backlog never
  starves new calls.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol, Sequence

from .channel import dumpb, shown
from .config import BatchSettings, mask_secrets
from .errors import ConfigError, RejectedError, TransientError
from .realtime import is_update, supersedes
from .record import CallRecord
from .retry import Backoff
from .spool import Journal, Spool, Ticket, describe_space, disk_space

log = logging.getLogger("fs_cdr.writer")

#: How often a batch rolled back by a deadlock is retried at once before it counts as a failure.
TRANSIENT_RETRIES = 3
#: Lost records of one disk episode whose uuids are logged one by one; the rest are counted.
LOST_LOGGED = 5
#: Below this share of its disk free, a spool's disk counts as low (one warning per change).
LOW_FREE_SHARE = 0.10
#: How often the guard looks at the free space of a lane's spool disk (statvfs), in seconds.
SPACE_CHECK_S = 1.0


class Sink(Protocol):
    """What a sink implements (``fs_cdr/sinks``). One instance per writer thread.

    ``open`` connects (and checks the table); ``write`` delivers a batch completely or raises:
    :class:`~fs_cdr.errors.RetriableError` when the same batch may succeed later,
    :class:`~fs_cdr.errors.RejectedError` when the data itself is refused. ``close`` never raises.
    """

    def open(self) -> None: ...

    def write(self, records: Sequence[CallRecord]) -> None: ...

    def close(self) -> None: ...


class EncodedSink(Sink, Protocol):
    """A sink that takes records encoded by its lane's ``encode`` (Redis: uuid, final, document).
    The writer makes them ahead: ``meanwhile`` is called once while the batch is being written (a
    sink in a worker process) or after it, and encodes the records the next batch will take."""

    def write_encoded(self, messages: Sequence[Any], meanwhile: Optional[Callable[[], None]] = None) -> None: ...


@dataclass
class LaneStats:
    #: records received without a writer: found on disk at start, or put straight there at shutdown
    #: (offer_to_disk). What a writer is given is counted by the writer (SinkWriter.received), and
    #: SinkLane.status shows the sum.
    received: int = 0
    written: int = 0
    rejected: int = 0
    retries: int = 0
    #: written records that a newer record of their uuid in the same batch replaced (real-time mode)
    coalesced: int = 0
    #: batches rolled back by a deadlock and retried at once (TransientError)
    conflicts: int = 0
    replayed: int = 0
    #: batches the sink took (live and replayed): written / batches is the batch size reached
    batches: int = 0
    #: records gone without reaching the sink: neither memory nor disk could hold them
    lost: int = 0
    #: records found on disk at start (spool, journal left by a crash); part of ``received``
    recovered: int = 0
    last_error: str = ""
    last_error_at: float = 0.0
    last_write_at: float = 0.0


class _Waiting:
    """A record in a writer's memory: when it arrived, and the journal segment holding a copy."""

    __slots__ = ("since", "record", "segment", "aged", "done", "spooled", "encoded")

    def __init__(self, since: float, record: CallRecord) -> None:
        self.since = since
        self.record = record
        self.segment = 0  # 0: not journaled
        self.aged = False  # past the journal's cutoff: journaled, or an update that gets no copy
        self.done = False  # written, or moved to the spool: it no longer needs the journal
        self.spooled = False  # done because the guard fsynced it in the spool
        self.encoded: Any = None  # the lane's encode(record), made ahead by the writer thread


@dataclass
class _Batch:
    records: list[CallRecord]
    since: float
    #: The queue entries behind a live batch (their journal holds are released when it is done).
    entries: list[_Waiting] = field(default_factory=list)
    #: Set by the guard when it moved this batch to the spool (the sink is failing).
    spooled: bool = False
    #: Set when the batch came from the spool; confirmed there once written.
    ticket: Optional[Ticket] = None
    #: Records of the batch the sink refused, by id(): "" when set aside in rejected.jsonl, else why
    #: they are lost. Counted (rejected / lost) only when the batch leaves memory or the spool, in
    #: the same step: counted earlier, they would show twice meanwhile.
    refused: dict[int, str] = field(default_factory=dict)
    #: records of the batch a newer record of their uuid replaced (realtime.supersedes)
    merged: int = 0


def _unique(records: list[CallRecord]) -> list[CallRecord]:
    """One record per uuid, the one that supersedes the others (``realtime.supersedes``: a final
    record over any update, else the higher ``event_seq``), at the place of that uuid's first record.
    Several upserts of one key in one batch are wasted work, some databases (SQL Server's MERGE)
    refuse them outright, and keeping the last *arrived* would let a late update hide the final."""
    if len(records) < 2:
        return records
    chosen: dict[object, CallRecord] = {}
    for record in records:
        key = record["uuid"]
        held = chosen.get(key)
        if held is None or supersedes(record, held):
            chosen[key] = record
    return records if len(chosen) == len(records) else list(chosen.values())


@dataclass
class Due:
    """What the guard must put on disk for one writer: copies, still in memory until
    :meth:`SinkWriter.commit` is told how many of them the spool fsynced."""

    #: to the spool, replayed later: the writer's entries (everything, while the sink is failing) ...
    entries: list[_Waiting] = field(default_factory=list)
    #: ... then the overflow (records that found the queue full or the lane degraded)
    overflow: list[CallRecord] = field(default_factory=list)
    #: to the journal: still written from memory, but safe from a crash meanwhile
    journal: list[_Waiting] = field(default_factory=list)
    #: the sink is failing (not a stop): the lane degrades once these are on disk
    failing: bool = False

    def records(self) -> list[CallRecord]:
        return [entry.record for entry in self.entries] + self.overflow


class SinkWriter:
    """One writer thread of a lane, with its own queue and its own connection."""

    def __init__(self, lane: "SinkLane", index: int) -> None:
        self.lane = lane
        self.index = index
        self.settings = lane.settings
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._queue: deque[_Waiting] = deque()
        self._overflow: list[CallRecord] = []
        self._inflight: Optional[_Batch] = None
        self._replaying = False
        #: records offered to this writer; counted under _lock with the append to the queue (or the
        #: loss), so that no status() sees a record received but not yet queued (see SinkLane.status)
        self.received = 0
        self._stopping = threading.Event()
        self._nudged = threading.Event()
        self._sink: Optional[Sink] = None
        self._thread = threading.Thread(target=self._run, name=f"fs_cdr-{lane.name}-{index}", daemon=True)

    # -- producer side (source thread) -------------------------------------------------------
    def offer(self, record: CallRecord, now: float) -> None:
        with self._lock:
            # counted in the same step as the append (or the loss): see SinkLane.status
            self.received += 1
            lane = self.lane
            if lane.disk_refusing and not self._stopping.is_set():
                # The disk takes nothing: memory is all there is, up to queue_size, and the writer
                # sends straight to the sink whatever it can.
                if len(self._queue) + len(self._overflow) >= self.settings.queue_size:
                    lane.lose([record], "the spool's disk refuses and the queue is full")
                    return
            elif lane.degraded or len(self._queue) >= self.settings.queue_size or self._stopping.is_set():
                self._overflow.append(record)
                return
            self._queue.append(_Waiting(now, record))
            # Wake the writer when the first record arrives (it then waits flush_interval_ms for the
            # batch to fill) and when a batch is full; not for every record in between.
            if len(self._queue) in (1, self.settings.batch_size):
                self._ready.notify()

    @property
    def queued(self) -> int:
        with self._lock:
            return self._queued()

    def _queued(self) -> int:
        """What this writer holds in memory (under ``_lock``)."""
        inflight = self._inflight
        held = (sum(1 for entry in inflight.entries if not entry.done)
                if inflight and not inflight.spooled and inflight.ticket is None else 0)
        return len(self._queue) + len(self._overflow) + held

    # -- guard side ---------------------------------------------------------------------------
    def take_due(self, now: float, window_s: float, everything: bool = False) -> Due:
        """What must go to disk now (copies: see :meth:`commit`). The overflow always goes to the
        spool. Records that waited longer than the window go to the journal while the sink works,
        and — with everything else this writer holds — to the spool when the sink is failing (or
        ``everything``, at stop)."""
        due = Due()
        with self._lock:
            due.overflow = list(self._overflow)
            inflight = self._inflight
            if inflight is not None and (inflight.spooled or inflight.ticket is not None):
                inflight = None
            held = [entry for entry in inflight.entries if not entry.done] if inflight else []
            queue = self._queue
            if not held and not queue:
                return due
            oldest = (held[0] if held else queue[0]).since
            if everything or (self.lane.failing_for(now) > window_s and now - oldest > window_s):
                due.entries = held + list(queue)
                due.failing = not everything
                return due
            # Journal at half the window: with a guard tick of a quarter window and an fsync, the copy
            # is on disk before the window ends.
            cutoff = now - window_s / 2
            if oldest > cutoff:
                return due
            # Entries age past the cutoff oldest first, so everything before an aged entry is aged or
            # written: scanning from the newest end stops there, and a tick costs what arrived since
            # the last one, not the whole queue (up to queue_size entries, under the lock offer takes).
            # Real-time updates age without a crash copy (realtime.is_update): a crash loses none of
            # what the copies are for, and they are most of the records in real-time mode.
            found: list[_Waiting] = []
            for entry in itertools.chain(reversed(queue), reversed(held)):
                if entry.aged:
                    break
                if entry.since <= cutoff and not entry.done:
                    if is_update(entry.record):
                        entry.aged = True
                    else:
                        found.append(entry)
            found.reverse()
            due.journal = found
            return due

    def commit(self, due: Due, count: int) -> tuple[list[int], list[CallRecord]]:
        """The first ``count`` records of ``due.records()`` are fsynced in the spool: they leave
        memory now. Returns the journal segments to release, and the records the writer wrote
        meanwhile (so the spool holds a copy the sink already has)."""
        release: list[int] = []
        twice: list[CallRecord] = []
        with self._lock:
            entries = due.entries[:count]
            if entries:
                for entry in entries:
                    if entry.done:
                        twice.append(entry.record)
                        continue
                    entry.done = entry.spooled = True
                    if entry.segment:
                        release.append(entry.segment)
                self._queue = deque(entry for entry in self._queue if not entry.spooled)
                inflight = self._inflight
                if (inflight is not None and inflight.ticket is None and inflight.entries
                        and all(entry.done for entry in inflight.entries)
                        and any(entry.spooled for entry in inflight.entries)):
                    inflight.spooled = True  # the writer gives the batch up: the spool has it
            rest = count - len(due.entries)
            if rest > 0:
                del self._overflow[:rest]
        return release, twice

    def unspill(self, now: float) -> None:
        """The disk refuses: the overflow (meant for the spool) moves into the queue, which the
        writer sends to the sink as soon as it takes writes; beyond ``queue_size`` it is lost."""
        with self._lock:
            if not self._overflow:
                return
            room = max(0, self.settings.queue_size - len(self._queue))
            moved, dropped = self._overflow[:room], self._overflow[room:]
            self._overflow = []
            self._queue.extend(_Waiting(now, record) for record in moved)
            if moved:
                self._ready.notify()
            if dropped:  # counted in the same step as they leave memory (see SinkLane.status)
                self.lane.lose(dropped, "the spool's disk refuses and the queue is full")

    def abandon(self) -> tuple[int, list[CallRecord]]:
        """At the very end of a stop: what is still in memory leaves with the process. Returns how
        many of those have a journal copy (the journal hands them to the spool), and the others."""
        with self._lock:
            inflight = self._inflight
            entries = [entry for entry in (inflight.entries if inflight and inflight.ticket is None
                                           and not inflight.spooled else []) if not entry.done]
            entries += list(self._queue)
            journaled = sum(1 for entry in entries if entry.segment)
            gone = [entry.record for entry in entries if not entry.segment] + self._overflow
            for entry in entries:
                entry.done = True
            self._queue.clear()
            self._overflow = []
            if inflight is not None:
                inflight.spooled = True
        return journaled, gone

    def journaled(self, entries: list[_Waiting], segment: int) -> None:
        """The guard fsynced ``entries`` into journal ``segment``; those written meanwhile release."""
        written = 0
        with self._lock:
            for entry in entries:
                if entry.done:
                    written += 1
                else:
                    entry.segment, entry.aged = segment, True
        if written:
            self.lane.journal.release(segment, written)

    def _finish(self, batch: _Batch) -> tuple[list[int], list[CallRecord]]:
        """A live batch left memory (written or set aside), under ``_lock``: its entries are done and
        counted written, rejected or lost in this same step, so no status() sees them in neither
        or in both. Returns the journal segments to release (not under the lock) and the records the
        guard had already put in the spool (counted as spooled: the replay counts them written)."""
        lane = self.lane
        refused = batch.refused
        written = rejected = 0
        lost: list[tuple[CallRecord, str]] = []
        segments: list[int] = []
        spooled: list[CallRecord] = []
        for entry in batch.entries:
            if not entry.done:
                entry.done = True
                why = refused.get(id(entry.record)) if refused else None
                if why is None:
                    written += 1
                elif why:
                    lost.append((entry.record, why))
                else:
                    rejected += 1
                if entry.segment:
                    segments.append(entry.segment)
            elif entry.spooled:
                spooled.append(entry.record)
        lane.counted(written, min(batch.merged, written), rejected, lost)
        return segments, spooled

    # -- consumer side (writer thread) --------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def _next_batch(self) -> Optional[_Batch]:
        settings = self.settings
        interval = settings.flush_interval_ms / 1000.0
        with self._lock:
            while not self._stopping.is_set():
                count = len(self._queue)
                if count >= settings.batch_size:
                    break
                if count:
                    age = time.monotonic() - self._queue[0].since
                    if age >= interval:
                        break
                    self._ready.wait(interval - age)
                elif self.lane.replay_due(self):
                    return None  # back to replaying at once: the spool is the backlog
                else:
                    self._ready.wait(0.25)
                    if not self._queue:
                        return None
            if not self._queue:
                return None
            taken = [self._queue.popleft() for _ in range(min(settings.batch_size, len(self._queue)))]
            self._inflight = _Batch([entry.record for entry in taken], taken[0].since, entries=taken)
            return self._inflight

    def _run(self) -> None:
        lane = self.lane
        try:
            self._open_sink()  # connect before the first record needs it
        except Exception as error:  # noqa: BLE001 - reported, then retried by the first batch
            self._close_sink()
            lane.failed(error, 1)
        while not self._stopping.is_set():
            try:
                if lane.replay_due(self):
                    self._replay_one()
                batch = self._next_batch()
                if batch is not None:
                    self._deliver(batch)
            except Exception:  # the thread must outlive any bug: log it and keep going
                log.exception("sink %s writer %d: unexpected error", lane.name, self.index)
                time.sleep(0.5)
        self._close_sink()

    def _replay_one(self) -> None:
        lane = self.lane
        if lane.failures and self._pause(lane.delay(lane.failures)):
            return
        ticket, records = lane.spool.take(self.settings.batch_size)
        if ticket is None:
            return
        # Not drained until the lane has counted the batch and recovered: the spool says 0 pending
        # as soon as it is confirmed, and flush() / status must not see that before the rest.
        self._replaying = True
        try:
            records = lane.not_yet_written(records)
            batch = _Batch(records, time.monotonic(), ticket=ticket)
            if records:
                with self._lock:
                    self._inflight = batch
                if not self._deliver(batch):
                    return
            with lane._moving:  # leaves the spool and is counted in one step (see SinkLane.status)
                lane.spool.confirm(ticket)
                # records a slow write had already delivered after the guard spooled them: in the sink
                lane.confirmed_copies()
                lost = [(record, why) for record in records if (why := batch.refused.get(id(record)))]
                rejected = sum(1 for why in batch.refused.values() if not why)
                lane.counted(len(records) - rejected - len(lost), batch.merged, rejected, lost,
                             replayed=len(records), answered=bool(records))
            lane.recover()
        finally:
            self._replaying = False

    def _deliver(self, batch: _Batch) -> bool:
        """Write one batch, retrying retriable errors, until written, spooled, or stopping. A live
        batch given up (stopping) goes back to the front of the queue: it is still only in memory,
        and the stop spools it or counts it."""
        done = False
        try:
            done = self._attempt(batch)
            return done
        finally:
            segments: list[int] = []
            spooled: list[CallRecord] = []
            with self._lock:
                self._inflight = None
                if batch.ticket is None:
                    if done:
                        # out of the inflight batch and counted in the same step (see SinkLane.status)
                        segments, spooled = self._finish(batch)
                    elif not batch.spooled:
                        self._queue.extendleft(reversed([entry for entry in batch.entries if not entry.done]))
            for segment in segments:
                self.lane.journal.release(segment)
            if spooled:
                # what the guard spooled meanwhile is counted as spooled, not twice
                self.lane.written_after_spooling(spooled)

    def _attempt(self, batch: _Batch) -> bool:
        lane = self.lane
        failures = 0
        conflicts = 0
        records = _unique(batch.records) if lane.coalesce else batch.records
        # records of a uuid that another record of the batch superseded: the row holds their newer state
        batch.merged = len(batch.records) - len(records)
        encoded: Optional[list[Any]] = None
        while True:
            if batch.spooled:
                return False  # the guard moved it to disk; the lane replays it later
            try:
                sink = self._open_sink()
                if lane.encode is None:
                    sink.write(records)
                else:
                    if encoded is None:
                        encoded = self._encoded(batch, records)
                    sink.write_encoded(encoded, self._encode_ahead)  # type: ignore[attr-defined]
            except RejectedError as error:
                if len(records) == 1:
                    batch.refused[id(records[0])] = lane.set_aside(records[0], error)
                    return True
                records, encoded = self._isolate(records, batch), None
                if not records:
                    return True
                # the sink failed half-way through: back off like any failure, then retry the rest
                failures += 1
                lane.failed(RuntimeError("the sink failed while isolating a refused record"), failures)
                if self._pause(lane.backoff.compute(failures)):
                    return False
                continue
            except TransientError as error:
                # A deadlock with another writer or switch: the database rolled the batch back and
                # the connection is fine. Retried at once, a few times, before it counts as a failure
                # (which would let the guard move the lane's records to the spool).
                conflicts += 1
                if conflicts <= TRANSIENT_RETRIES:
                    lane.conflicted(error)
                    continue
                self._close_sink()
                failures += 1
                lane.failed(error, failures)
                if batch.ticket is not None or self._pause(lane.backoff.compute(failures)):
                    return False
                continue
            except Exception as error:  # noqa: BLE001 - RetriableError, ConfigError, and driver bugs alike
                self._close_sink()
                if batch.ticket is not None:
                    # A replay batch stays in the spool; _replay_one backs off before the next try.
                    lane.failed(error, lane.failures + 1)
                    return False
                failures += 1
                lane.failed(error, failures)
                if self._pause(lane.delay(failures)):
                    return False
                continue
            return True  # counted by _deliver (live) or _replay_one (from the spool)

    def _encoded(self, batch: _Batch, records: list[CallRecord]) -> list[Any]:
        """The batch as its sink takes it: what :meth:`_encode_ahead` made, the rest now."""
        encode = self.lane.encode
        assert encode is not None
        entries = batch.entries
        if len(entries) != len(records):  # a replay batch, or coalesced: no entries to match
            return [encode(record) for record in records]
        return [entry.encoded if entry.encoded is not None else encode(entry.record) for entry in entries]

    def _encode_ahead(self) -> None:
        """While the sink writes a batch: encode the records the next batch will take, so that the
        writer hands it over the moment this one is confirmed (a worker process then never waits for
        this thread, which shares FreeSWITCH's interpreter lock with the source)."""
        encode = self.lane.encode
        if encode is None:
            return
        with self._lock:
            ahead = [entry for entry in itertools.islice(self._queue, self.settings.batch_size)
                     if entry.encoded is None]
        try:
            for entry in ahead:
                entry.encoded = encode(entry.record)
        except Exception:  # noqa: BLE001 - a record that cannot be encoded fails in its own batch
            log.exception("sink %s writer %d: could not encode a record ahead", self.lane.name, self.index)

    def _pause(self, seconds: float) -> bool:
        """Back off for ``seconds``, cut short by :meth:`nudge`; True when stopping."""
        self._nudged.wait(seconds)
        self._nudged.clear()
        return self._stopping.is_set()

    def nudge(self) -> None:
        """Try again now instead of at the end of the current backoff (``replay`` by hand)."""
        self._nudged.set()

    def _isolate(self, records: list[CallRecord], batch: _Batch) -> list[CallRecord]:
        """Find the refused records of a rejected batch by writing one at a time (noted in
        ``batch.refused``; all are counted when the batch is done); returns what is left to retry
        when the sink became unreachable half-way."""
        for position, record in enumerate(records):
            # A refused statement may cost the connection too (MySQL's 1153 drops it): each record
            # gets a fresh connection once before the sink counts as failing.
            for attempt in (1, 2):
                try:
                    self._open_sink().write([record])
                    break
                except RejectedError as error:
                    batch.refused[id(record)] = self.lane.set_aside(record, error)
                    break
                except Exception:  # noqa: BLE001 - retried as a batch by the caller
                    self._close_sink()
                    if attempt == 2:
                        return records[position:]
        return []

    def _open_sink(self) -> Sink:
        if self._sink is None:
            sink = self.lane.open_sink()
            sink.open()
            self._sink = sink
        return self._sink

    def _close_sink(self) -> None:
        if self._sink is not None:
            sink, self._sink = self._sink, None
            try:
                sink.close()
            except Exception:  # noqa: BLE001 - closing a broken connection may fail any way it likes
                pass

    def drained(self) -> bool:
        with self._lock:
            inflight = self._inflight
            return (not self._queue and (inflight is None or inflight.spooled) and not self._overflow
                    and not self._replaying)

    def stop(self) -> None:
        self._stopping.set()
        self._nudged.set()
        with self._lock:
            self._ready.notify_all()

    def join(self, timeout: float) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)


class SinkLane:
    """A sink's writers, spool and counters: what ``status`` shows as one line."""

    def __init__(
        self,
        name: str,
        description: str,
        open_sink: Callable[[], Sink],
        settings: BatchSettings,
        spool_dir: str,
        backoff: Backoff = Backoff(),
        secrets: Sequence[str] = (),
        realtime: bool = False,
        coalesce: bool = True,
        encode: Optional[Callable[[CallRecord], Any]] = None,
    ) -> None:
        self.name = name
        self.realtime = realtime
        #: what the sink's ``write_encoded`` takes per record (EncodedSink), or None: ``write(records)``
        self.encode = encode
        #: a table keeps only the newest state of a row, so a batch writes each uuid once; a channel or
        #: a queue delivers every message, so nothing is merged for them
        self.coalesce = coalesce
        self.description = description
        self.open_sink = open_sink
        self.settings = settings
        self.backoff = backoff
        self.secrets = tuple(secrets)
        max_bytes = None if settings.spool_max_mb is None else int(settings.spool_max_mb * 1_000_000)
        self.spool = Spool(os.path.join(spool_dir, name), max_bytes)
        self.journal = Journal(os.path.join(spool_dir, name, "journal"), self.spool)
        self.stats = LaneStats()
        # what an earlier run left on disk is received now, so that the counters add up
        self.stats.recovered = self.stats.received = self.spool.pending
        self.degraded = self.spool.pending > 0
        #: the spool's disk: ok, low (writing, little room left), full (ENOSPC or spool_max_mb), failing
        self.disk = "ok"
        self.disk_error = ""
        self._space_checked = 0.0
        self._lost_in_episode = 0
        #: records in the spool that the sink had already been given (a slow write that finished
        #: after the guard copied it): not counted as spooled, since they are counted as written
        self._twice_on_disk = 0
        self._filtered = (0, 0)
        self.failures = 0
        #: monotonic time of the first failure since the last write (0: writing)
        self._failing_since = 0.0
        #: monotonic time before which the sink asked not to be tried again (retry_after_s)
        self._not_before = 0.0
        self._rejected_path = os.path.join(spool_dir, name, "rejected.jsonl")
        self._lock = threading.Lock()  # the counters (see status for the lock order)
        self._rejected_lock = threading.Lock()  # appends to rejected.jsonl
        # Held by the guard from taking records out of memory until the spool counts them: without
        # it, settled() could see neither the memory copy nor the spool copy and say "all written".
        # Also held while a replayed batch is confirmed and counted, and by a stop and offer_to_disk:
        # every step between memory, spool and counters that status() must not see half done.
        self._moving = threading.Lock()
        #: uuid -> one flag per copy in the spool the sink already has: True when already counted written
        self._already_written: dict[object, list[bool]] = {}
        self.writers = [SinkWriter(self, index) for index in range(settings.workers)]
        if self.spool.error is not None:
            self._disk_failed(self.spool.error)

    def start(self) -> None:
        for writer in self.writers:
            writer.start()

    def offer(self, record: CallRecord, now: float) -> None:
        # counted received by the writer, under the lock it takes anyway (see status)
        writers = self.writers
        writer = writers[0] if len(writers) == 1 else writers[hash(record["uuid"]) % len(writers)]
        writer.offer(record, now)

    def offer_to_disk(self, record: CallRecord, now: float) -> None:
        """FreeSWITCH is shutting down: straight to the spool, or to memory when the disk refuses."""
        with self._moving:  # on disk and received in one step (see status)
            try:
                if self.spool.append([record]):
                    with self._lock:
                        self.stats.received += 1
                    return
                self._disk_full()
            except OSError as error:
                self._disk_failed(error)
        writers = self.writers
        (writers[0] if len(writers) == 1 else writers[hash(record["uuid"]) % len(writers)]).offer(record, now)

    def written_after_spooling(self, records: Sequence[CallRecord], counted: bool = False) -> None:
        """The sink got records whose copy is also in the spool (a slow write and the guard crossed):
        remember them, so the replay does not send them a second time (in this process's lifetime).
        ``counted``: they were counted as written already (the write finished first)."""
        with self._lock:
            for record in records:
                self._already_written.setdefault(record["uuid"], []).append(counted)
            if counted:
                self._twice_on_disk += len(records)

    def not_yet_written(self, records: list[CallRecord]) -> list[CallRecord]:
        self._filtered = (0, 0)
        if not self._already_written:
            return records
        kept = []
        counted = uncounted = 0
        with self._lock:
            for record in records:
                key = record["uuid"]
                copies = self._already_written.get(key)
                if copies:
                    if copies.pop():
                        counted += 1
                    else:
                        uncounted += 1
                    if not copies:
                        del self._already_written[key]
                else:
                    kept.append(record)
        self._filtered = (counted, uncounted)
        return kept

    def confirmed_copies(self) -> None:
        """The replayed batch that :meth:`not_yet_written` filtered is confirmed: its copies of
        records the sink already had leave the spool; those not yet counted count as written now."""
        counted, uncounted = self._filtered
        self._filtered = (0, 0)
        with self._lock:
            self._twice_on_disk = max(0, self._twice_on_disk - counted)
            self.stats.written += uncounted

    def replay_due(self, writer: SinkWriter) -> bool:
        """Only the first writer replays, so the spool is read by one thread, in order."""
        return writer.index == 0 and self.spool.pending > 0

    def degrade(self, reason: str) -> None:
        if not self.degraded:
            self.degraded = True
            log.warning("sink %s: spooling to disk (%s)", self.name, reason)

    def recover(self) -> None:
        if self.degraded and self.spool.pending == 0:
            self.degraded = False
            log.info("sink %s: healthy again, spool replayed", self.name)

    def counted(self, written: int, coalesced: int = 0, rejected: int = 0,
                lost: Sequence[tuple[CallRecord, str]] = (), replayed: int = 0, answered: bool = True) -> None:
        """Records that left memory or the spool: ``written`` (``coalesced`` of them are records whose
        uuid's newer record was written in their place: the sink holds their channel's newest state),
        ``rejected`` (set aside), ``lost`` (with why). Called in the same step as they leave: under
        their writer's ``_lock`` or ``_moving`` (see :meth:`status`). ``answered``: the sink took the
        batch, so it works (failures reset)."""
        with self._lock:
            stats = self.stats
            stats.written += written
            stats.coalesced += coalesced
            stats.rejected += rejected
            stats.replayed += replayed
            if answered:
                stats.batches += 1
                stats.last_write_at = time.time()
                self.failures = 0
                self._failing_since = 0.0
        if lost:
            self.lose([record for record, _why in lost], lost[0][1])

    def delay(self, failures: int) -> float:
        """How long to wait before the next attempt: the backoff, or longer when the sink asked for
        that (a RetriableError's ``retry_after_s``)."""
        return max(self.backoff.compute(failures), self._not_before - time.monotonic())

    def failing_for(self, now: float) -> float:
        """How long the sink has failed without a write in between (0 while it writes). The guard
        spools a lane's memory only once this exceeds the window: one lost connection that the
        next attempt restores is not an outage, and the journal keeps those records safe meanwhile."""
        since = self._failing_since
        return now - since if since and self.failures else 0.0

    def conflicted(self, error: BaseException) -> None:
        """A batch rolled back by a deadlock, about to be retried at once: counted, logged at the first."""
        with self._lock:
            self.stats.retries += 1
            self.stats.conflicts += 1
            first = self.stats.conflicts == 1
        if first:
            log.info("sink %s: a batch met a deadlock and is retried at once (counted in status as conflicts): %s",
                     self.name, mask_secrets(str(error), self.secrets)[:300])

    def failed(self, error: BaseException, failures: int) -> None:
        message = mask_secrets(f"{type(error).__name__}: {error}", self.secrets)[:300]
        retry_after = getattr(error, "retry_after_s", 0.0)
        with self._lock:
            if retry_after:
                self._not_before = time.monotonic() + retry_after
            self.stats.retries += 1
            self.failures = failures
            if not self._failing_since:
                self._failing_since = time.monotonic()
            first = self.stats.last_error != message
            self.stats.last_error = message
            self.stats.last_error_at = time.time()
        if first or failures in (1, 10, 100) or failures % 1000 == 0:
            level = logging.ERROR if isinstance(error, ConfigError) else logging.WARNING
            log.log(level, "sink %s: write failed (attempt %d): %s", self.name, failures, message)

    def set_aside(self, record: CallRecord, error: BaseException) -> str:
        """A record the sink refuses: kept with its error in ``rejected.jsonl`` for the operator.
        Returns "" once it is there, else why it is lost (the file cannot be written). Not counted
        here: the record is still queued or spooled, and is counted rejected (or lost) in the step
        that takes it out of there (:meth:`counted`)."""
        message = mask_secrets(str(error), self.secrets)[:500]
        try:
            with self._rejected_lock:  # not the counters' lock: this fsyncs
                with open(self._rejected_path, "ab") as handle:
                    handle.write(dumpb({"error": message, "at": time.time(), "record": record}) + b"\n")
                    handle.flush()
                    os.fsync(handle.fileno())
        except OSError as disk:
            return f"the sink refused it ({shown(message, 200)}) and {self._rejected_path} cannot be written: {disk}"
        log.error(
            "sink %s: refused record %s, set aside in %s: %s",
            self.name, shown(record.get("uuid")), self._rejected_path, shown(message, 500),
        )
        return ""

    def replay_now(self) -> int:
        """Skip the current backoff and try the sink (and its spool) at once; returns what is spooled."""
        for writer in self.writers:
            writer.nudge()
        return self.spool.pending

    @property
    def healthy(self) -> bool:
        return not self.degraded and self.failures == 0 and not self.disk_refusing

    # -- the spool's disk -----------------------------------------------------------------------
    @property
    def disk_refusing(self) -> bool:
        """The spool takes nothing now (full, failing, or its bound reached): memory is all there is."""
        return self.disk in ("full", "failing")

    def _disk_state(self, state: str, error: str) -> None:
        """One log line per change of state (a new reason within the same state is only shown)."""
        before, self.disk, self.disk_error = self.disk, state, error
        if state == before:
            return
        where, space = self.spool.directory, describe_space(self.spool.directory)
        if state in ("full", "failing"):
            self._lost_in_episode = 0
            log.error("sink %s: the spool at %s refuses records: %s (%s); they stay in memory (up to "
                      "queue_size %d per writer), still written when the sink takes them, and the disk "
                      "is tried again at every guard tick", self.name, where, error, space,
                      self.settings.queue_size)
        elif before in ("full", "failing"):
            lost = f"; {self._lost_in_episode} records were lost meanwhile" if self._lost_in_episode else ""
            log.warning("sink %s: the spool at %s takes records again (%s)%s", self.name, where, space, lost)
        elif state == "low":
            log.warning("sink %s: little room left for the spool at %s (%s)", self.name, where, space)

    def _disk_failed(self, error: OSError) -> None:
        code = errno.errorcode.get(error.errno or 0, "?")
        state = "full" if error.errno in (errno.ENOSPC, errno.EDQUOT) else "failing"
        self._disk_state(state, f"{code}: {error.strerror or error}" + (f" ({error.filename})" if error.filename else ""))

    def _disk_full(self) -> None:
        self._disk_state("full", f"spool_max_mb reached ({self.spool.bytes / 1e6:.1f} of "
                                 f"{self.spool.max_bytes / 1e6:.1f} MB)")

    def _disk_ok(self, now: float = 0.0) -> None:
        free, size = disk_space(self.spool.directory)
        low = size > 0 and free < LOW_FREE_SHARE * size
        self._disk_state("low" if low else "ok", "")
        self._space_checked = now

    def _disk_recheck(self, now: float) -> None:
        """Nothing was due for the disk this tick: is a refusing disk back, is an ok disk low?"""
        if now - self._space_checked < SPACE_CHECK_S and not self.disk_refusing:
            return
        self._space_checked = now
        if self.disk_refusing:
            if self.disk_error.startswith("spool_max_mb"):
                if self.spool.bytes >= self.spool.max_bytes * 0.95:
                    return
            free, _size = disk_space(self.spool.directory)
            if free < 1_000_000:
                return
            try:
                self.spool.probe()
            except OSError as error:
                self._disk_failed(error)
                return
        self._disk_ok(now)

    def lose(self, records: Sequence[CallRecord], why: str) -> None:
        """Records that neither the sink, nor memory, nor the disk can hold: counted, and logged
        (the uuids of the first few of each disk episode, then how many). Called in the same step as
        they leave memory: under their writer's ``_lock`` or ``_moving`` (see :meth:`status`)."""
        if not records:
            return
        with self._lock:
            self.stats.lost += len(records)
            before = self._lost_in_episode
            self._lost_in_episode += len(records)
        named = [shown(record.get("uuid")) for record in records[: max(0, LOST_LOGGED - before)]]
        if named:
            log.error("sink %s: LOST %d record(s) (%s): %s%s", self.name, len(records), why, ", ".join(named),
                      "" if len(named) == len(records) else f" and {len(records) - len(named)} more")
        elif (before // 1000) != (self._lost_in_episode // 1000):
            log.error("sink %s: LOST %d records so far (%s)", self.name, self._lost_in_episode, why)

    def queued(self) -> int:
        return sum(writer.queued for writer in self.writers)

    def guard(self, now: float, window_s: float, everything: bool = False) -> int:
        """Put on disk what is due (see :meth:`SinkWriter.take_due`); returns how many were spooled.
        Records leave memory only once the spool has fsynced them (:meth:`SinkWriter.commit`)."""
        spooled = 0
        tried = False
        for writer in self.writers:
            with self._moving:
                due = writer.take_due(now, window_s, everything)
                records = due.records()
                count = 0
                if records:
                    tried = True
                    count = self._to_disk(records)
                    release, twice = writer.commit(due, count)
                    if twice:
                        self.written_after_spooling(twice, counted=True)
                    spooled += count
                    if count and due.failing:
                        self.degrade(f"the sink is failing and records waited more than {window_s * 1000:.0f} ms")
                    if count < len(records) and not everything:
                        writer.unspill(now)
                    for segment in release:  # only once their spool copy is fsynced
                        self.journal.release(segment)
            if due.journal:
                tried = True
                try:
                    segment = self.journal.append([entry.record for entry in due.journal])
                except OSError as error:
                    self._disk_failed(error)  # they stay in memory only; the next tick tries again
                else:
                    writer.journaled(due.journal, segment)
        if not tried:
            self._disk_recheck(now)
        return spooled

    def _to_disk(self, records: list[CallRecord]) -> int:
        """Append ``records`` to the spool a batch at a time; returns how many the disk took (the
        first ones: the rest stay in memory)."""
        step = max(1, self.settings.batch_size)
        done = 0
        for start in range(0, len(records), step):
            part = records[start:start + step]
            try:
                taken = self.spool.append(part)
            except OSError as error:
                self._disk_failed(error)
                return done
            done += taken
            if taken < len(part):
                self._disk_full()
                return done
        self._disk_ok(time.monotonic())
        return done

    def drained(self) -> bool:
        """Nothing held in memory (it may still be in the spool)."""
        return all(writer.drained() for writer in self.writers)

    def settled(self) -> bool:
        """Everything received is in the sink: nothing in memory, nothing in the spool, nothing
        on its way from one to the other."""
        with self._moving:
            return self.drained() and self.spool.pending == 0

    def stop(self, timeout_s: float) -> int:
        """Let the writers finish what they hold for up to ``timeout_s``, then spool the rest."""
        deadline = time.monotonic() + timeout_s
        while not self.drained() and time.monotonic() < deadline and not self.degraded:
            time.sleep(0.01)
        for writer in self.writers:
            writer.stop()
        spooled = self.guard(time.monotonic(), 0.0, everything=True)
        for writer in self.writers:
            writer.join(max(0.0, deadline - time.monotonic()))
        spooled += self.guard(time.monotonic(), 0.0, everything=True)
        journaled = 0
        # Out of memory, and counted lost or handed to the spool (journal copies), in one step.
        with self._moving:
            before = self.spool.pending
            for writer in self.writers:
                copies, gone = writer.abandon()
                journaled += copies
                self.lose(gone, "the process stopped and the spool's disk refused them")
            self.journal.close()
            # A journal segment also holds copies of records written or spooled since: on disk twice.
            twice = self.spool.pending - before - journaled
            if twice > 0:
                with self._lock:
                    self._twice_on_disk += twice
        if journaled:
            log.warning("sink %s: %d records the disk refused at stop have a journal copy: the spool "
                        "replays them at the next start", self.name, journaled)
        self.spool.close()
        return spooled

    def status(self) -> dict[str, object]:
        """The lane's counters; ``received = written + queued + spooled + rejected + lost`` holds in
        every snapshot, not only once things settle.

        How: every change of these counts is one step that keeps the sum (a record leaves one place
        and is counted in the next), made while holding either ``_moving`` (what moves between memory
        and the spool: the guard, a replayed batch confirmed, a stop, offer_to_disk) or the lock of
        the writer whose memory it enters or leaves (offer counts ``received`` with the append, a
        live batch is counted written / rejected / lost as its entries are marked done). Here we hold
        ``_moving`` and every writer's lock together, so no step is half done. Locks rather than a
        retry loop (seqlock) because the hot path then costs nothing: offer already takes its
        writer's lock and only adds ``received += 1`` under it; a snapshot holds the writers' locks
        for a few microseconds, and never while waiting for the disk (``_moving`` and the spool's
        lock are taken first, and the writers' locks only after the spool's is released).

        Lock order (the same everywhere; a deadlock would stop CDRs):
        ``_moving`` -> ``Journal._lock`` -> ``Spool._lock``, and ``_moving`` -> ``SinkWriter._lock``
        (by index, only status() holds several) -> ``SinkLane._lock``. ``SinkLane._lock`` and
        ``Spool._lock`` are leaves: nothing else is taken while holding one of them, and the spool's
        is never held while taking a writer's lock; ``_rejected_lock`` stands alone.
        """
        stats = self.stats
        journaled = self.journal.held
        with self._moving:
            pending, spool_lost = self.spool.counts()
            with contextlib.ExitStack() as held:
                for writer in self.writers:
                    held.enter_context(writer._lock)
                queued = sum(writer._queued() for writer in self.writers)
                received = stats.received + sum(writer.received for writer in self.writers)
                written, rejected, lost = stats.written, stats.rejected, stats.lost
                spooled = pending - self._twice_on_disk
        return {
            "sink": self.name,
            "target": self.description,
            "healthy": self.healthy,
            "received": received,
            "written": written,
            "queued": queued,
            "spooled": spooled,
            "journaled": journaled,
            "journal_copies": self.journal.journaled_total,
            "rejected": rejected,
            "lost": lost + spool_lost,
            "recovered": stats.recovered,
            "disk": self.disk,
            "disk_error": self.disk_error,
            "spool_mb": round(self.spool.bytes / 1e6, 3),
            "spool_max_mb": round(self.spool.max_bytes / 1e6, 3),
            "retries": stats.retries,
            "conflicts": stats.conflicts,
            "coalesced": stats.coalesced,
            "replayed": stats.replayed,
            "batches": stats.batches,
            "last_error": stats.last_error,
            # the sink workers' process ids (fs_cdr/sinks/worker.py), when the sink runs in workers
            "worker_pids": [pid for pid in (getattr(writer._sink, "pid", None) for writer in self.writers) if pid],
        }


class Guard:
    """The thread that keeps the durability promise: a few times per window, whatever waited longer
    than the window — because a sink is down, slow, or its queue is full — goes to the spool."""

    def __init__(self, lanes: Callable[[], Sequence[SinkLane]], window_s: float) -> None:
        self.lanes = lanes
        self.window_s = window_s
        self.interval_s = max(0.005, window_s / 4)
        #: When the last tick ended (monotonic): the source reads it to see that the guard is behind.
        self.ticked = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fs_cdr-guard", daemon=True)

    def start(self) -> None:
        self.ticked = time.monotonic()
        self._thread.start()

    def behind(self, now: float) -> bool:
        """Whether the guard missed a tick (half an interval late) while it can still catch up: busy
        putting a burst on disk, or waiting for the interpreter lock. Not when it has been stuck for
        five windows (a disk that hangs): then slowing the source would not help it."""
        late = now - self.ticked
        return 1.5 * self.interval_s < late < 5 * self.window_s and self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            now = time.monotonic()
            for lane in self.lanes():
                try:
                    lane.guard(now, self.window_s)
                except Exception:  # noqa: BLE001 - a bug must not kill the guard (disk errors are handled)
                    log.exception("sink %s: guard tick failed", lane.name)
            self.ticked = time.monotonic()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2.0)
