"""The durable spool: a sink's records on local disk while the sink cannot take them.

One directory per sink, holding numbered segment files of JSON lines (``000000000042.jsonl``). Records
are appended to the newest segment and fsynced before :meth:`Spool.append` returns; they are read back
from the oldest segment, and a segment is deleted only once the sink confirmed every record in it. A
process start never appends to an old segment, so a line torn by a crash (no trailing newline) can only
be the last line of a closed segment: it is skipped with a log line, never fatal.

The read position inside a segment is kept in ``<segment>.offset``; it is written without fsync because
losing it only means records are sent again, and every sink write is an upsert by uuid.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from dataclasses import dataclass
from typing import IO, Iterable, Optional

from .errors import CdrError
from .record import CallRecord, record_from_json, record_json

log = logging.getLogger("fs_cdr.spool")

SEGMENT_BYTES = 8 * 1024 * 1024
SUFFIX = ".jsonl"


def _append_synced(handle: "IO[bytes]", data: bytes) -> None:
    """Append and fsync: only after this are the bytes safe from a crash."""
    handle.write(data)
    handle.flush()
    os.fsync(handle.fileno())


class SpoolBusy(CdrError):
    """Another fs_cdr (a running FreeSWITCH, a ``fs-cdr replay``) owns this spool directory."""


@dataclass(frozen=True)
class Ticket:
    """What :meth:`Spool.take` handed out, to be confirmed once the sink has the records."""

    segment: str
    end: int
    count: int


class Spool:
    """A FIFO of records on disk for one sink. Thread-safe."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        os.makedirs(directory, exist_ok=True)
        # One owner per spool: two processes replaying the same files would send records twice.
        self._owner = open(os.path.join(directory, ".lock"), "a+")
        try:
            fcntl.flock(self._owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            self._owner.seek(0)
            holder = self._owner.read().strip() or "another process"
            self._owner.close()
            raise SpoolBusy(f"spool {directory} is in use by {holder}") from error
        self._owner.truncate(0)
        self._owner.write(f"pid {os.getpid()}\n")
        self._owner.flush()
        self._lock = threading.Lock()
        self._active: Optional[str] = None
        self._handle: Optional[IO[bytes]] = None
        self._active_bytes = 0
        segments = self._segments()
        self._next = 1 + max((self._number(name) for name in segments), default=0)
        self.pending = sum(self._count_lines(os.path.join(directory, name)) for name in segments)
        self.spooled_total = 0

    @staticmethod
    def _number(name: str) -> int:
        return int(name[: -len(SUFFIX)])

    def _segments(self) -> list[str]:
        names = [
            name for name in os.listdir(self.directory)
            if name.endswith(SUFFIX) and name[: -len(SUFFIX)].isdigit()
        ]
        return sorted(names, key=self._number)

    def _count_lines(self, path: str) -> int:
        with open(path, "rb") as handle:
            handle.seek(self._offset(path))
            return sum(1 for line in handle if line.endswith(b"\n"))

    @staticmethod
    def _offset(path: str) -> int:
        try:
            with open(path + ".offset", "r", encoding="ascii") as handle:
                return int(handle.read().strip() or 0)
        except (OSError, ValueError):
            return 0

    def append(self, records: Iterable[CallRecord]) -> int:
        """Write records to disk and fsync; returns how many. Only then are they safe."""
        data = b"".join(record_json(record) + b"\n" for record in records)
        if not data:
            return 0
        count = data.count(b"\n")
        with self._lock:
            if self._handle is None or self._active_bytes > SEGMENT_BYTES:
                self._roll()
            assert self._handle is not None
            _append_synced(self._handle, data)
            self._active_bytes += len(data)
            self.pending += count
            self.spooled_total += count
        return count

    def _roll(self) -> None:
        if self._handle is not None:
            self._handle.close()
        name = f"{self._next:012d}{SUFFIX}"
        self._next += 1
        self._active = os.path.join(self.directory, name)
        self._handle = open(self._active, "ab")
        self._active_bytes = 0
        # The new file's directory entry must survive a crash too.
        directory = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def adopt(self, path: str) -> int:
        """Take a journal segment left by a crash as the next spool segment; returns its records."""
        with self._lock:
            target = os.path.join(self.directory, f"{self._next:012d}{SUFFIX}")
            self._next += 1
            os.replace(path, target)
            count = self._count_lines(target)
            self.pending += count
            return count

    def take(self, limit: int) -> tuple[Optional[Ticket], list[CallRecord]]:
        """Up to ``limit`` records from the oldest segment, in the order they were spooled."""
        with self._lock:
            segments = self._segments()
            if not segments:
                return None, []
            path = os.path.join(self.directory, segments[0])
            if path == self._active:
                if self._active_bytes == 0:
                    return None, []
                # Reading the segment being appended to: close it, the next append opens a new one.
                assert self._handle is not None
                self._handle.close()
                self._handle, self._active = None, None
            start = self._offset(path)
            records: list[CallRecord] = []
            end = start
            with open(path, "rb") as handle:
                handle.seek(start)
                while len(records) < limit:
                    line = handle.readline()
                    if not line:
                        break
                    end += len(line)
                    if not line.endswith(b"\n"):
                        log.warning("spool %s: skipped a torn last line (%d bytes) left by a crash", path, len(line))
                        break
                    try:
                        records.append(record_from_json(line))
                    except ValueError:
                        log.error("spool %s: skipped an unreadable line at byte %d", path, end - len(line))
                        self.pending = max(0, self.pending - 1)
            return Ticket(path, end, len(records)), records

    def confirm(self, ticket: Ticket) -> None:
        """The sink has the records of ``ticket``: move past them (delete a finished segment)."""
        with self._lock:
            self.pending = max(0, self.pending - ticket.count)
            try:
                size = os.path.getsize(ticket.segment)
            except OSError:
                return
            if ticket.end >= size and ticket.segment != self._active:
                for path in (ticket.segment, ticket.segment + ".offset"):
                    try:
                        os.unlink(path)
                    except FileNotFoundError:
                        pass
            else:
                temporary = ticket.segment + ".offset.tmp"
                with open(temporary, "w", encoding="ascii") as handle:
                    handle.write(str(ticket.end))
                os.replace(temporary, ticket.segment + ".offset")

    def close(self) -> None:
        """Close the segment being written and give up ownership of the directory."""
        with self._lock:
            if self._handle is not None:
                self._handle.close()
                self._handle, self._active = None, None
            if not self._owner.closed:
                self._owner.close()


class Journal:
    """Records a sink is slow to take, fsynced to disk while they still wait in memory.

    A record that waited longer than the durability window is appended here, so that a crash (kill -9)
    cannot lose it, and it stays in the writer's queue: the normal path writes it, and then its hold
    is released. A segment whose records were all released is deleted. Nothing is ever read back
    while the process runs; after a crash, the segments left over are handed to the spool and
    replayed like any spooled record (upserts make the few already written harmless).
    """

    def __init__(self, directory: str, spool: Spool) -> None:
        self.directory = directory
        self.spool = spool
        os.makedirs(directory, exist_ok=True)
        self._lock = threading.Lock()
        self._handle: Optional[IO[bytes]] = None
        self._active = 0
        self._active_bytes = 0
        self._held: dict[int, int] = {}
        self.journaled_total = 0
        leftovers = sorted(name for name in os.listdir(directory) if name.endswith(SUFFIX))
        for name in leftovers:
            adopted = spool.adopt(os.path.join(directory, name))
            log.warning("journal %s: %d records left by a crash go to the spool", name, adopted)
        self._next = 1

    def append(self, records: list[CallRecord]) -> int:
        """Append and fsync; returns the segment number to :meth:`release` against."""
        data = b"".join(record_json(record) + b"\n" for record in records)
        with self._lock:
            if self._handle is None or self._active_bytes > SEGMENT_BYTES:
                self._roll()
            assert self._handle is not None
            _append_synced(self._handle, data)
            self._active_bytes += len(data)
            self._held[self._active] = self._held.get(self._active, 0) + len(records)
            self.journaled_total += len(records)
            return self._active

    def _path(self, number: int) -> str:
        return os.path.join(self.directory, f"{number:012d}{SUFFIX}")

    def _roll(self) -> None:
        if self._handle is not None:
            self._handle.close()
            if not self._held.get(self._active):
                self._unlink(self._active)
        self._active = self._next
        self._next += 1
        self._handle = open(self._path(self._active), "ab")
        self._active_bytes = 0

    def _unlink(self, number: int) -> None:
        self._held.pop(number, None)
        try:
            os.unlink(self._path(number))
        except FileNotFoundError:
            pass

    def release(self, number: int, count: int = 1) -> None:
        """``count`` records of segment ``number`` are in the sink or in the spool now."""
        with self._lock:
            left = self._held.get(number, 0) - count
            if left > 0:
                self._held[number] = left
                return
            if number == self._active:
                # the segment being appended to: start a new one next time, drop this one now
                self._held.pop(number, None)
                if self._handle is not None:
                    self._handle.close()
                    self._handle = None
            self._unlink(number)

    @property
    def held(self) -> int:
        with self._lock:
            return sum(self._held.values())

    def close(self) -> None:
        """On a clean stop everything held was written or spooled first; anything still held is
        handed to the spool rather than deleted."""
        with self._lock:
            if self._handle is not None:
                self._handle.close()
                self._handle = None
            for number in list(self._held):
                if self._held[number] > 0:
                    self.spool.adopt(self._path(number))
                    self._held.pop(number)
                else:
                    self._unlink(number)
