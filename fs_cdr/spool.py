"""The durable spool: a sink's records on local disk while the sink cannot take them.

One directory per sink, holding numbered segment files of JSON lines (``000000000042.jsonl``). Records
are appended to the newest segment and fsynced before :meth:`Spool.append` returns; they are read back
from the oldest segment, and a segment is deleted only once the sink confirmed every record in it. A
process start never appends to an old segment, so a line torn by a crash (no trailing newline) can only
be the last line of a closed segment: it is skipped with a log line, never fatal.

The disk may refuse (ENOSPC, EIO, EROFS, EACCES, a directory removed by hand). :meth:`Spool.append`
then raises ``OSError`` having changed nothing — a half-written line is cut off again — so the caller
keeps the records in memory and tries again later. The spool never grows past ``max_bytes``
(``spool_max_mb``): ``append`` stores what fits and says how many, and nothing on disk is ever deleted
to make room. Replaying needs no new disk space: the read position inside a segment is kept in memory
and overwritten in place in ``<segment>.offset`` (made with the segment), and a segment is deleted
the moment its last record is confirmed. Losing the offset file only means records are sent again,
and every sink write is an upsert by uuid.

The spool knows how many records each segment holds, so a segment truncated or removed by hand is
counted in :attr:`Spool.lost` and logged, never silently forgotten: ``pending`` is what is on disk.
"""

from __future__ import annotations

import errno
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
#: The offset file's fixed size: rewritten in place, so confirming a batch never needs a new block.
OFFSET_WIDTH = 20
#: Without ``spool_max_mb``, a spool may fill this share of the space free on its disk at start.
DEFAULT_SHARE_OF_FREE = 0.5


def disk_space(path: str) -> tuple[int, int]:
    """(free bytes for an unprivileged writer, size) of the filesystem holding ``path`` (or its
    nearest existing parent); (0, 0) when even that cannot be asked."""
    probe = os.path.abspath(path)
    while True:
        try:
            stat = os.statvfs(probe)
            return stat.f_bavail * stat.f_frsize, stat.f_blocks * stat.f_frsize
        except OSError:
            parent = os.path.dirname(probe)
            if parent == probe:
                return 0, 0
            probe = parent


def describe_space(path: str) -> str:
    free, size = disk_space(path)
    return f"{free / 1e6:.1f} MB free of {size / 1e6:.1f} MB"


def _write_synced(fd: int, data: bytes) -> None:
    """Append and fsync. On failure the file is cut back to where it was, so that no half line is
    left for the next append to run into; the caller sees the error and keeps the records."""
    start = os.lseek(fd, 0, os.SEEK_END)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except OSError:
        try:
            os.ftruncate(fd, start)
        except OSError:
            pass
        raise


class SpoolBusy(CdrError):
    """Another fs_cdr (a running FreeSWITCH, a ``fs-cdr replay``) owns this spool directory."""


@dataclass(frozen=True)
class Ticket:
    """What :meth:`Spool.take` handed out, to be confirmed once the sink has the records."""

    segment: str
    end: int
    count: int


class Spool:
    """A FIFO of records on disk for one sink. Thread-safe.

    A spool whose directory cannot be made or locked at start (read-only, no permission) is not an
    error that stops the sink: :attr:`error` says why, and every ``append`` tries again."""

    def __init__(self, directory: str, max_bytes: Optional[int] = None) -> None:
        self.directory = directory
        self._max_setting = max_bytes
        self.max_bytes = max_bytes or 0
        self._lock = threading.Lock()
        self._owner: Optional[IO[bytes]] = None
        self._active: Optional[str] = None
        self._fd: Optional[int] = None
        self._active_bytes = 0
        self._next = 1
        #: records on disk per segment name, and where reading stopped in each
        self._counts: dict[str, int] = {}
        self._offsets: dict[str, int] = {}
        self.pending = 0
        #: bytes of the segment files on disk (what spool_max_mb bounds)
        self.bytes = 0
        self.spooled_total = 0
        #: records that were on disk and are gone without reaching the sink (a file cut or removed
        #: by hand, an unreadable line)
        self.lost = 0
        #: why the directory could not be opened, while it cannot
        self.error: Optional[OSError] = None
        try:
            self._open()
        except OSError as error:
            self.error = error

    @property
    def ready(self) -> bool:
        return self._owner is not None

    def counts(self) -> tuple[int, int]:
        """``pending`` and ``lost`` read together (an unreadable line moves a record from one to the
        other under the lock)."""
        with self._lock:
            return self.pending, self.lost

    def _open(self) -> None:
        """Make and lock the directory and count what is in it (under ``_lock``, or from __init__)."""
        os.makedirs(self.directory, exist_ok=True)
        # One owner per spool: two processes replaying the same files would send records twice.
        owner = open(os.path.join(self.directory, ".lock"), "a+b", buffering=0)
        try:
            fcntl.flock(owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            owner.seek(0)
            holder = owner.read().decode(errors="replace").strip() or "another process"
            owner.close()
            raise SpoolBusy(f"spool {self.directory} is in use by {holder}") from error
        try:
            owner.truncate(0)
            owner.write(f"pid {os.getpid()}\n".encode())
        except OSError:
            pass  # a full disk: the lock itself is what matters
        segments = self._segments()
        self._next = 1 + max((self._number(name) for name in segments), default=0)
        self._counts = {}
        self.bytes = 0
        for name in segments:
            path = os.path.join(self.directory, name)
            start = self._offset_file(path)
            count = self._count_lines(path, start)
            size = os.path.getsize(path)
            if not count and start >= size:
                self._delete(path)  # read to the end (or empty): nothing in it to replay
                continue
            self._offsets[name] = start
            self._counts[name] = count
            self.bytes += size
        self.pending = sum(self._counts.values())
        if self._max_setting is None:
            free, _size = disk_space(self.directory)
            self.max_bytes = self.bytes + int(free * DEFAULT_SHARE_OF_FREE)
        self._owner = owner
        self.error = None

    def _ensure_open(self) -> None:
        if self._owner is None:
            try:
                self._open()
            except OSError as error:
                self.error = error
                raise

    @staticmethod
    def _number(name: str) -> int:
        return int(name[: -len(SUFFIX)])

    def _segments(self) -> list[str]:
        names = [
            name for name in os.listdir(self.directory)
            if name.endswith(SUFFIX) and name[: -len(SUFFIX)].isdigit()
        ]
        return sorted(names, key=self._number)

    @staticmethod
    def _count_lines(path: str, start: int = 0) -> int:
        with open(path, "rb") as handle:
            handle.seek(start)
            return sum(1 for line in handle if line.endswith(b"\n"))

    @staticmethod
    def _offset_file(path: str) -> int:
        try:
            with open(path + ".offset", "r", encoding="ascii") as handle:
                return int(handle.read().strip() or 0)
        except (OSError, ValueError):
            return 0

    def append(self, records: Iterable[CallRecord]) -> int:
        """Write records to disk and fsync; only then are they safe. Returns how many were written:
        all of them, or the first ones that fit under ``max_bytes`` (0: the spool is full). Raises
        ``OSError`` when the disk refuses, having written none of them."""
        lines = [record_json(record) + b"\n" for record in records]
        if not lines:
            return 0
        with self._lock:
            self._ensure_open()
            room = self.max_bytes - self.bytes
            fits, size = 0, 0
            for line in lines:
                if size + len(line) > room:
                    break
                size += len(line)
                fits += 1
            if not fits:
                return 0
            data = b"".join(lines[:fits]) if fits < len(lines) else b"".join(lines)
            if self._fd is None or self._active_bytes > SEGMENT_BYTES or self._vanished():
                self._roll()
            assert self._fd is not None and self._active is not None
            try:
                _write_synced(self._fd, data)
            except OSError:
                # after a failed write or fsync the file's state is uncertain: the next append starts
                # a new segment, and this one (cut back to its last whole record) is read as it is
                self._close_active()
                raise
            name = os.path.basename(self._active)
            self._counts[name] = self._counts.get(name, 0) + fits
            self._active_bytes += len(data)
            self.bytes += len(data)
            self.pending += fits
            self.spooled_total += fits
            return fits

    def probe(self) -> None:
        """Whether the disk takes a write again (after EIO, EROFS, EACCES): raises ``OSError`` if not."""
        with self._lock:
            self._ensure_open()
            path = os.path.join(self.directory, ".probe")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                _write_synced(fd, b"probe\n")
            finally:
                os.close(fd)
                try:
                    os.unlink(path)
                except OSError:
                    pass

    def _vanished(self) -> bool:
        """The segment being appended to was removed by hand (or its whole directory was)."""
        assert self._fd is not None
        try:
            return os.fstat(self._fd).st_nlink == 0
        except OSError:
            return True

    def _close_active(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
        self._fd, self._active, self._active_bytes = None, None, 0

    def _roll(self) -> None:
        self._close_active()
        os.makedirs(self.directory, exist_ok=True)  # removed by hand: made again
        name = f"{self._next:012d}{SUFFIX}"
        self._next += 1
        path = os.path.join(self.directory, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            # The new file's directory entry must survive a crash too.
            directory = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        except OSError:
            os.close(fd)
            raise
        self._fd, self._active, self._active_bytes = fd, path, 0
        self._counts.setdefault(name, 0)
        self._offsets[name] = 0
        # The offset file is made now, while there is room, so confirming never needs any.
        try:
            with open(path + ".offset", "wb") as handle:
                handle.write(b"0".ljust(OFFSET_WIDTH))
        except OSError:
            pass

    def adopt(self, path: str) -> int:
        """Take a journal segment left by a crash as the next spool segment; returns its records."""
        with self._lock:
            self._ensure_open()
            name = f"{self._next:012d}{SUFFIX}"
            target = os.path.join(self.directory, name)
            self._next += 1
            os.replace(path, target)
            count = self._count_lines(target)
            self._counts[name] = count
            self._offsets[name] = 0
            self.bytes += os.path.getsize(target)
            self.pending += count
            return count

    def _reconcile(self, present: list[str]) -> None:
        """Segments counted but no longer on disk (removed by hand): their records are lost."""
        missing = [name for name in self._counts if name not in present]
        for name in missing:
            count = self._counts.pop(name)
            self._offsets.pop(name, None)
            if count:
                self._lose(count, f"segment {name} was removed from the spool by hand")
        if missing and self._active is not None and os.path.basename(self._active) in missing:
            self._close_active()

    def _lose(self, count: int, why: str) -> None:
        self.pending = max(0, self.pending - count)
        self.lost += count
        log.error("spool %s: %d records lost: %s", self.directory, count, why)

    def take(self, limit: int) -> tuple[Optional[Ticket], list[CallRecord]]:
        """Up to ``limit`` records from the oldest segment, in the order they were spooled."""
        with self._lock:
            if self._owner is None:
                try:
                    self._ensure_open()
                except OSError:
                    return None, []
            try:
                segments = self._segments()
            except OSError:
                segments = []
            self._reconcile(segments)
            if not segments:
                return None, []
            name = segments[0]
            path = os.path.join(self.directory, name)
            if path == self._active:
                if self._active_bytes == 0:
                    return None, []
                # Reading the segment being appended to: close it, the next append opens a new one.
                self._close_active()
            start = self._offsets.get(name)
            if start is None:
                start = self._offsets[name] = self._offset_file(path)
            records: list[CallRecord] = []
            unreadable: list[int] = []
            end = start
            try:
                handle = open(path, "rb")
            except OSError:
                return None, []
            with handle:
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
                        unreadable.append(end - len(line))
            if unreadable:
                self._counts[name] = self._counts.get(name, len(unreadable)) - len(unreadable)
                self._lose(len(unreadable), f"{path}: unreadable line(s) at byte {unreadable[0]}"
                           + (f" and {len(unreadable) - 1} more" if len(unreadable) > 1 else ""))
            return Ticket(path, end, len(records)), records

    def confirm(self, ticket: Ticket) -> None:
        """The sink has the records of ``ticket``: move past them (delete a finished segment)."""
        with self._lock:
            name = os.path.basename(ticket.segment)
            self.pending = max(0, self.pending - ticket.count)
            self._counts[name] = self._counts.get(name, ticket.count) - ticket.count
            try:
                size = os.path.getsize(ticket.segment)
            except OSError:
                self._reconcile([n for n in self._counts if n != name])
                return
            if ticket.end >= size and ticket.segment != self._active:
                left = self._counts.pop(name, 0)
                self._offsets.pop(name, None)
                if left > 0:
                    self._lose(left, f"{ticket.segment} holds fewer records than were spooled into it "
                                     "(cut by hand?)")
                self._delete(ticket.segment)
                self.bytes = max(0, self.bytes - size)
            else:
                self._offsets[name] = ticket.end
                self._write_offset(ticket.segment, ticket.end)

    @staticmethod
    def _delete(segment: str) -> None:
        for path in (segment, segment + ".offset"):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as error:
                log.error("spool %s: could not delete a replayed segment: %s", path, error)

    @staticmethod
    def _write_offset(segment: str, end: int) -> None:
        """Overwrite the offset in place (no new block: works on a full disk). Best effort: the offset
        in memory is the one that counts while this process runs."""
        try:
            fd = os.open(segment + ".offset", os.O_WRONLY | os.O_CREAT, 0o600)
        except OSError:
            return
        try:
            os.pwrite(fd, str(end).encode().ljust(OFFSET_WIDTH), 0)
        except OSError as error:
            if error.errno != errno.ENOSPC:
                log.warning("spool %s: could not keep the replay position: %s", segment, error)
        finally:
            os.close(fd)

    def close(self) -> None:
        """Close the segment being written and give up ownership of the directory."""
        with self._lock:
            self._close_active()
            if self._owner is not None and not self._owner.closed:
                try:
                    self._owner.close()
                except OSError:
                    pass


class Journal:
    """Records a sink is slow to take, fsynced to disk while they still wait in memory.

    A record that waited longer than the durability window is appended here, so that a crash (kill -9)
    cannot lose it, and it stays in the writer's queue: the normal path writes it, and then its hold
    is released. A segment whose records were all released is deleted. Nothing is ever read back
    while the process runs; after a crash, the segments left over are handed to the spool and
    replayed like any spooled record (upserts make the few already written harmless). A journal that
    the disk refuses raises ``OSError`` from :meth:`append`; its records simply stay in memory only.
    """

    def __init__(self, directory: str, spool: Spool) -> None:
        self.directory = directory
        self.spool = spool
        self._lock = threading.Lock()
        self._fd: Optional[int] = None
        self._active = 0
        self._active_bytes = 0
        self._held: dict[int, int] = {}
        self.journaled_total = 0
        #: records found in segments left by a crash, handed to the spool
        self.recovered = 0
        self._next = 1
        self._opened = False
        try:
            self._open()
        except OSError:
            pass  # retried by the first append

    def _open(self) -> None:
        if self._opened:
            return
        os.makedirs(self.directory, exist_ok=True)
        leftovers = sorted(name for name in os.listdir(self.directory) if name.endswith(SUFFIX))
        for name in leftovers:
            path = os.path.join(self.directory, name)
            if not os.path.getsize(path):
                os.unlink(path)  # made, then its first write failed: nothing in it
                continue
            adopted = self.spool.adopt(path)
            self.recovered += adopted
            log.warning("journal %s: %d records left by a crash go to the spool", name, adopted)
        self._opened = True

    def append(self, records: list[CallRecord]) -> int:
        """Append and fsync; returns the segment number to :meth:`release` against."""
        data = b"".join(record_json(record) + b"\n" for record in records)
        with self._lock:
            self._open()
            if self._fd is None or self._active_bytes > SEGMENT_BYTES:
                self._roll()
            assert self._fd is not None
            try:
                _write_synced(self._fd, data)
            except OSError:
                os.close(self._fd)
                self._fd = None
                if not self._held.get(self._active):
                    self._unlink(self._active)
                raise
            self._active_bytes += len(data)
            self._held[self._active] = self._held.get(self._active, 0) + len(records)
            self.journaled_total += len(records)
            return self._active

    def _path(self, number: int) -> str:
        return os.path.join(self.directory, f"{number:012d}{SUFFIX}")

    def _roll(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            if not self._held.get(self._active):
                self._unlink(self._active)
        os.makedirs(self.directory, exist_ok=True)
        number = self._next
        self._next += 1
        self._fd = os.open(self._path(number), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._active = number
        self._active_bytes = 0

    def _unlink(self, number: int) -> None:
        self._held.pop(number, None)
        try:
            os.unlink(self._path(number))
        except OSError:
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
                if self._fd is not None:
                    os.close(self._fd)
                    self._fd = None
            self._unlink(number)

    @property
    def held(self) -> int:
        with self._lock:
            return sum(self._held.values())

    def close(self) -> None:
        """On a clean stop everything held was written or spooled first; anything still held is
        handed to the spool rather than deleted."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            for number in list(self._held):
                if self._held[number] > 0:
                    try:
                        self.spool.adopt(self._path(number))
                    except OSError as error:
                        log.error("journal %s: could not hand it to the spool: %s", self._path(number), error)
                    self._held.pop(number)
                else:
                    self._unlink(number)
