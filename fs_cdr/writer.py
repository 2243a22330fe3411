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
- A lane replays its spool in order, one spool batch then one live batch, so a long backlog never
  starves new calls.
"""

from __future__ import annotations

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
from .realtime import supersedes
from .record import CallRecord
from .retry import Backoff
from .spool import Journal, Spool, Ticket

log = logging.getLogger("fs_cdr.writer")

#: How often a batch rolled back by a deadlock is retried at once before it counts as a failure.
TRANSIENT_RETRIES = 3


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
    received: int = 0
    written: int = 0
    rejected: int = 0
    retries: int = 0
    #: written records that a newer record of their uuid in the same batch replaced (real-time mode)
    coalesced: int = 0
    #: batches rolled back by a deadlock and retried at once (TransientError)
    conflicts: int = 0
    replayed: int = 0
    last_error: str = ""
    last_error_at: float = 0.0
    last_write_at: float = 0.0


class _Waiting:
    """A record in a writer's memory: when it arrived, and the journal segment holding a copy."""

    __slots__ = ("since", "record", "segment", "done", "encoded")

    def __init__(self, since: float, record: CallRecord) -> None:
        self.since = since
        self.record = record
        self.segment = 0  # 0: not journaled
        self.done = False  # written, or moved to the spool: it no longer needs the journal
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
    """What the guard must put on disk for one writer."""

    #: to the spool: replayed later (overflow, or everything while the sink is failing)
    spool: list[CallRecord] = field(default_factory=list)
    #: to the journal: still written from memory, but safe from a crash meanwhile
    journal: list[_Waiting] = field(default_factory=list)
    #: journal segments to release once ``spool`` is fsynced
    release: list[int] = field(default_factory=list)


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
        self._stopping = threading.Event()
        self._nudged = threading.Event()
        self._sink: Optional[Sink] = None
        self._thread = threading.Thread(target=self._run, name=f"fs_cdr-{lane.name}-{index}", daemon=True)

    # -- producer side (source thread) -------------------------------------------------------
    def offer(self, record: CallRecord, now: float) -> None:
        with self._lock:
            if self.lane.degraded or len(self._queue) >= self.settings.queue_size or self._stopping.is_set():
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
            inflight = self._inflight
            held = len(inflight.records) if inflight and not inflight.spooled and inflight.ticket is None else 0
            return len(self._queue) + len(self._overflow) + held

    # -- guard side ---------------------------------------------------------------------------
    def take_due(self, now: float, window_s: float, everything: bool = False) -> Due:
        """What must go to disk now. The overflow always goes to the spool. Records that waited
        longer than the window go to the journal while the sink works, and — with everything else
        this writer holds — to the spool when the sink is failing (or ``everything``, at stop)."""
        due = Due()
        with self._lock:
            due.spool, self._overflow = self._overflow, []
            inflight = self._inflight
            if inflight is not None and (inflight.spooled or inflight.ticket is not None):
                inflight = None
            held = inflight.entries if inflight else []
            queue = self._queue
            if not held and not queue:
                return due
            oldest = (held[0] if held else queue[0]).since
            if everything or (self.lane.failing_for(now) > window_s and now - oldest > window_s):
                entries = held + list(queue)
                if inflight:
                    inflight.spooled = True
                for entry in entries:
                    entry.done = True
                    if entry.segment:
                        due.release.append(entry.segment)
                due.spool = [entry.record for entry in entries] + due.spool
                queue.clear()
                if not everything:
                    self.lane.degrade(f"the sink is failing and records waited more than {window_s * 1000:.0f} ms")
                return due
            # Journal at half the window: with a guard tick of a quarter window and an fsync, the copy
            # is on disk before the window ends.
            cutoff = now - window_s / 2
            if oldest > cutoff:
                return due
            # Entries are journaled oldest first, so everything before a journaled entry is journaled
            # or written: scanning from the newest end stops there, and a tick costs what arrived since
            # the last one, not the whole queue (up to queue_size entries, under the lock offer takes).
            found: list[_Waiting] = []
            for entry in itertools.chain(reversed(queue), reversed(held)):
                if entry.segment:
                    break
                if entry.since <= cutoff and not entry.done:
                    found.append(entry)
            found.reverse()
            due.journal = found
            return due

    def journaled(self, entries: list[_Waiting], segment: int) -> None:
        """The guard fsynced ``entries`` into journal ``segment``; those written meanwhile release."""
        written = 0
        with self._lock:
            for entry in entries:
                if entry.done:
                    written += 1
                else:
                    entry.segment = segment
        if written:
            self.lane.journal.release(segment, written)

    def _finish(self, batch: _Batch) -> None:
        """A live batch left memory (written or set aside): release its journal copies."""
        segments: list[int] = []
        with self._lock:
            for entry in batch.entries:
                if not entry.done:
                    entry.done = True
                    if entry.segment:
                        segments.append(entry.segment)
        for segment in segments:
            self.lane.journal.release(segment)

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
                    if self._deliver(batch):
                        self._finish(batch)
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
            if records:
                batch = _Batch(records, time.monotonic(), ticket=ticket)
                with self._lock:
                    self._inflight = batch
                if not self._deliver(batch):
                    return
            lane.spool.confirm(ticket)
            lane.stats.replayed += len(records)
            lane.recover()
        finally:
            self._replaying = False

    def _deliver(self, batch: _Batch) -> bool:
        """Write one batch, retrying retriable errors, until written, spooled, or stopping."""
        lane = self.lane
        failures = 0
        conflicts = 0
        records = _unique(batch.records) if lane.coalesce else batch.records
        # records of a uuid that another record of the batch superseded: the row holds their newer state
        merged = len(batch.records) - len(records)
        encoded: Optional[list[Any]] = None
        try:
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
                        lane.set_aside(records[0], error)
                        return True
                    records, encoded = self._isolate(records), None
                    if not records:
                        lane.wrote(0, merged)
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
                except Exception as error:  # RetriableError, ConfigError, and driver bugs alike
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
                lane.wrote(len(records), merged)
                if batch.spooled:
                    lane.written_after_spooling(records)
                return True
        finally:
            with self._lock:
                self._inflight = None

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

    def _isolate(self, records: list[CallRecord]) -> list[CallRecord]:
        """Find the refused records of a rejected batch by writing one at a time; returns what is
        left to retry when the sink became unreachable half-way."""
        for position, record in enumerate(records):
            # A refused statement may cost the connection too (MySQL's 1153 drops it): each record
            # gets a fresh connection once before the sink counts as failing.
            for attempt in (1, 2):
                try:
                    self._open_sink().write([record])
                    self.lane.wrote(1)
                    break
                except RejectedError as error:
                    self.lane.set_aside(record, error)
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
            return not self._queue and self._inflight is None and not self._overflow and not self._replaying

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
        self.spool = Spool(os.path.join(spool_dir, name))
        self.journal = Journal(os.path.join(spool_dir, name, "journal"), self.spool)
        self.stats = LaneStats()
        self.degraded = self.spool.pending > 0
        self.failures = 0
        #: monotonic time of the first failure since the last write (0: writing)
        self._failing_since = 0.0
        #: monotonic time before which the sink asked not to be tried again (retry_after_s)
        self._not_before = 0.0
        self._rejected_path = os.path.join(spool_dir, name, "rejected.jsonl")
        self._lock = threading.Lock()
        # Held by the guard from taking records out of memory until the spool counts them: without
        # it, settled() could see neither the memory copy nor the spool copy and say "all written".
        self._moving = threading.Lock()
        self._already_written: dict[object, int] = {}
        self.writers = [SinkWriter(self, index) for index in range(settings.workers)]

    def start(self) -> None:
        for writer in self.writers:
            writer.start()

    def offer(self, record: CallRecord, now: float) -> None:
        self.stats.received += 1
        writers = self.writers
        writer = writers[0] if len(writers) == 1 else writers[hash(record["uuid"]) % len(writers)]
        writer.offer(record, now)

    def written_after_spooling(self, records: Sequence[CallRecord]) -> None:
        """A slow write finished after the guard had copied its batch to the spool: remember it,
        so the replay does not send those records a second time (in this process's lifetime)."""
        with self._lock:
            for record in records:
                key = record["uuid"]
                self._already_written[key] = self._already_written.get(key, 0) + 1

    def not_yet_written(self, records: list[CallRecord]) -> list[CallRecord]:
        if not self._already_written:
            return records
        kept = []
        with self._lock:
            for record in records:
                key = record["uuid"]
                count = self._already_written.get(key, 0)
                if count:
                    if count == 1:
                        del self._already_written[key]
                    else:
                        self._already_written[key] = count - 1
                else:
                    kept.append(record)
        return kept

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

    def wrote(self, count: int, merged: int = 0) -> None:
        """``count`` records written, and ``merged`` more whose uuid's newer record was written in
        their place (they count as written: the sink holds their channel's newest state)."""
        with self._lock:
            self.stats.written += count + merged
            self.stats.coalesced += merged
            self.stats.last_write_at = time.time()
            self.failures = 0
            self._failing_since = 0.0

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

    def set_aside(self, record: CallRecord, error: BaseException) -> None:
        """A record the sink refuses: kept with its error in ``rejected.jsonl`` for the operator."""
        message = mask_secrets(str(error), self.secrets)[:500]
        with self._lock:
            self.stats.rejected += 1
            with open(self._rejected_path, "ab") as handle:
                handle.write(dumpb({"error": message, "at": time.time(), "record": record}) + b"\n")
                handle.flush()
                os.fsync(handle.fileno())
        log.error(
            "sink %s: refused record %s, set aside in %s: %s",
            self.name, shown(record.get("uuid")), self._rejected_path, shown(message, 500),
        )

    def replay_now(self) -> int:
        """Skip the current backoff and try the sink (and its spool) at once; returns what is spooled."""
        for writer in self.writers:
            writer.nudge()
        return self.spool.pending

    @property
    def healthy(self) -> bool:
        return not self.degraded and self.failures == 0

    def queued(self) -> int:
        return sum(writer.queued for writer in self.writers)

    def guard(self, now: float, window_s: float, everything: bool = False) -> int:
        """Put on disk what is due (see :meth:`SinkWriter.take_due`); returns how many were spooled."""
        spooled = 0
        for writer in self.writers:
            with self._moving:
                due = writer.take_due(now, window_s, everything)
                if due.spool:
                    spooled += self.spool.append(due.spool)
            for segment in due.release:  # only once their spool copy is fsynced
                self.journal.release(segment)
            if due.journal:
                writer.journaled(due.journal, self.journal.append([entry.record for entry in due.journal]))
        return spooled

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
        self.journal.close()
        self.spool.close()
        return spooled

    def status(self) -> dict[str, object]:
        stats = self.stats
        return {
            "sink": self.name,
            "target": self.description,
            "healthy": self.healthy,
            "received": stats.received,
            "written": stats.written,
            "queued": self.queued(),
            "spooled": self.spool.pending,
            "journaled": self.journal.held,
            "rejected": stats.rejected,
            "retries": stats.retries,
            "conflicts": stats.conflicts,
            "coalesced": stats.coalesced,
            "replayed": stats.replayed,
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
                except Exception:  # noqa: BLE001 - a full disk must not kill the guard
                    log.exception("sink %s: could not spool", lane.name)
            self.ticked = time.monotonic()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2.0)
