"""A sink run in a worker process of its own (``"worker_process": true`` on a sink).

Inside FreeSWITCH every Python thread of fs_cdr shares one interpreter lock: the thread that turns
hangup events into records and the writer threads that encode parameters, pack commands and parse
replies take turns on one core. With a worker process, the writer thread hands each batch to a child
Python process that runs the real sink, so the driver's work runs on another core.

Nothing that keeps a record safe moves: the writer thread keeps each batch until the child answers
that it is written, and the journal, the spool and the guard stay in FreeSWITCH's process. A child
that dies, hangs or cannot start is a :class:`~fs_cdr.errors.RetriableError`, as a lost connection
is: the lane retries, and spools what waits longer than the durability window. The child ends when
its stdin closes, which happens when FreeSWITCH exits, kill -9 included.

A request is a pickle (the sink object with its configuration once, then batches of records) and a
body of raw bytes: the documents of an encoded batch (writer.EncodedSink: Redis's JSON documents).
Both go into a memory file the two processes share (``memfd_create``; an unlinked temporary file
where there is none), written with ``os.pwritev`` from their own buffers and read by the child
through ``mmap`` in place; the pipe carries only the two lengths and the answers. A batch's
megabytes are copied once, not pickled, not pushed through a 64 KB pipe one wake-up at a time. Only
processes of the same installation use the file and the pipe; nothing from outside reaches them.
"""

from __future__ import annotations

import logging
import mmap
import os
import pickle
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, BinaryIO, Callable, Optional, Sequence, cast

from ..errors import ConfigError, RejectedError, RetriableError, TransientError

log = logging.getLogger("fs_cdr.sinks.worker")

_LENGTH = struct.Struct("!Q")
#: A request's head: the pickle's length and the body's.
_HEAD = struct.Struct("!QQ")
#: Buffers per pwritev / sendmsg call (POSIX guarantees 16; Linux takes 1024).
IOV_MAX = max(16, min(os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 16, 1024))
#: The child's first words on its protocol pipe: it started and imported fs_cdr, and which protocol
#: it speaks. The same length as the first protocol's, so that each side of a mismatch sees it at
#: once (the child imports fs_cdr's files from disk: after an upgrade they may be newer than the
#: fs_cdr FreeSWITCH is running).
_HELLO = b"fs_cdr worker v3 ok"
_OLDER_HELLOS = (b"fs_cdr worker ready", b"fs_cdr worker v2 ok")
#: A request file grown past this by an outsized batch is cut back after it.
_EXCHANGE_KEEP = 64 << 20
#: What the child runs.
_CHILD = "from fs_cdr.sinks.worker import serve; serve()"


def interpreter() -> str:
    """The Python to run the worker with: the running installation's own ``pythonX.Y`` (same version,
    same compiled drivers). Inside FreeSWITCH ``sys.executable`` is whatever ``python3`` comes first on
    FreeSWITCH's PATH (a pyenv or a venv Python, say), but ``sys.prefix`` is the embedded Python's
    (``/usr`` for Debian's), so ``/usr/bin/python3.11`` is what runs."""
    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    candidates = [os.path.join(sys.prefix, "bin", version), os.path.join(sys.base_prefix, "bin", version)]
    executable = sys.executable or ""
    if os.path.basename(executable).startswith("python"):
        candidates.append(executable)
    candidates += [f"/usr/bin/{version}", shutil.which(version) or ""]
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise RetriableError(f"no {version} found to run the sink worker (looked in {sys.prefix}/bin and /usr/bin)")


class ProcessSink:
    """A sink whose ``open``/``write``/``close`` run in a child process. ``make`` builds the real sink
    (not yet opened) in this process; it is sent to the child, which opens it and writes with it."""

    def __init__(self, make: Callable[[], Any], name: str, timeout_s: float) -> None:
        self.make = make
        self.name = name
        #: how long a batch may take before the child counts as hung (the sink has its own timeouts)
        self.write_timeout_s = max(60.0, 12 * timeout_s)
        self.open_timeout_s = max(30.0, 3 * timeout_s)
        self._child: Optional[subprocess.Popen] = None
        #: the memory file requests travel in (its descriptor), and how far the largest one reached
        self._exchange: Optional[int] = None
        self._exchange_size = 0
        self._relay: Optional[threading.Thread] = None
        self._errors: list[str] = []

    # -- the Sink interface ---------------------------------------------------------------------
    def open(self) -> None:
        self._spawn()
        try:
            self._call(("open", self.make()), self.open_timeout_s)
        except BaseException:
            self.close()
            raise

    def write(self, records: Sequence[Any]) -> None:
        self._call(("write", list(records)), self.write_timeout_s)

    def write_encoded(self, messages: Sequence[tuple[Any, ...]], meanwhile: Optional[Callable[[], None]] = None) -> None:
        """Records encoded by the lane (writer.EncodedSink), each a tuple whose last item is its
        document (bytes): the documents cross as the request's body, the rest as its pickle (with
        each document's length). ``meanwhile`` runs while the child writes, so the next batch is
        ready when this one is confirmed."""
        index = [message[:-1] + (len(message[-1]),) for message in messages]
        self._call(("write_encoded", index), self.write_timeout_s, meanwhile,
                   [message[-1] for message in messages])

    def run(self, task: Callable[[], Any]) -> Any:
        """``task`` (picklable, called without arguments) run in a child of its own, once: what it
        returns (picklable), or its error as a sink's. For work that would otherwise import a driver
        into FreeSWITCH's process and hold its interpreter lock meanwhile."""
        self._spawn()
        try:
            return self._call(("run", task), self.write_timeout_s)
        finally:
            self.close()

    def close(self) -> None:
        """End the child (it closes its sink on end of input; killed after 5 s), reap it, and close
        its pipes once its last log lines are relayed."""
        exchange, self._exchange = self._exchange, None
        if exchange is not None:
            os.close(exchange)
        child, self._child = self._child, None
        if child is None:
            return
        try:
            assert child.stdin is not None
            child.stdin.close()
            child.wait(5)
        except Exception:  # noqa: BLE001 - close never raises
            pass
        if child.poll() is None:
            child.kill()
            try:
                child.wait(5)
            except Exception:  # noqa: BLE001
                pass
        if self._relay is not None:
            self._relay.join(2)  # the child is gone: its stderr ends
        for stream in (child.stdout, child.stderr):
            try:
                if stream is not None:
                    stream.close()
            except Exception:  # noqa: BLE001
                pass

    @property
    def pid(self) -> Optional[int]:
        return self._child.pid if self._child is not None else None

    # -- the pipe -------------------------------------------------------------------------------
    def _spawn(self) -> None:
        self.close()
        paths = [entry for entry in sys.path if entry and os.path.isdir(entry)]
        environment = dict(os.environ, PYTHONPATH=os.pathsep.join(paths), PYTHONUNBUFFERED="1")
        exchange = _exchange_file()
        command = [interpreter(), "-c", _CHILD, str(exchange)]
        try:
            child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=environment, close_fds=True, pass_fds=(exchange,), start_new_session=True)
        except OSError as error:
            os.close(exchange)
            raise RetriableError(f"cannot start the sink worker ({command[0]}): {error}") from error
        self._child = child
        self._exchange, self._exchange_size = exchange, 0
        self._errors = []
        self._relay = threading.Thread(target=self._relay_log, args=(child,), name=f"fs_cdr-{self.name}-worker-log",
                                       daemon=True)
        self._relay.start()
        hello = self._read(child, len(_HELLO), self.open_timeout_s)
        if hello in _OLDER_HELLOS:
            raise self._lost(child, "runs an older fs_cdr than the one FreeSWITCH loaded (were fs_cdr's files "
                                    "replaced while FreeSWITCH ran?): restart FreeSWITCH")
        if hello != _HELLO:
            raise self._lost(child, "did not start")

    def _call(self, request: tuple[str, Any], timeout_s: float, meanwhile: Optional[Callable[[], None]] = None,
              body: Sequence[bytes] = ()) -> Any:
        """The request answered: None, or what a ``run`` task returned; a failure raised as the
        sink's error."""
        child, exchange = self._child, self._exchange
        if child is None or exchange is None:
            raise RetriableError("the sink worker is not running")
        data = pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL)
        body_size = sum(len(part) for part in body)
        try:
            # The file first, then the lengths: the child reads the file only once they arrive.
            write_parts(lambda buffers, offset: os.pwritev(exchange, buffers, offset), [data, *body])
            self._exchange_size = max(self._exchange_size, len(data) + body_size)
        except OSError as error:  # the memory file is full (tmpfs, memory limits): a retriable failure
            raise self._lost(child, f"could not be handed the batch ({error})") from None
        try:
            assert child.stdin is not None
            child.stdin.write(_HEAD.pack(len(data), body_size))
            child.stdin.flush()
        except (OSError, ValueError) as error:
            raise self._lost(child, f"stopped taking batches ({error})") from None
        started = time.monotonic()
        if meanwhile is not None:
            meanwhile()
        # The child writes the answer's length and pickle at once, and nothing more until the next
        # request: one read usually takes both (each wait gives FreeSWITCH's GIL away, and getting
        # it back may wait for the source thread's next yield).
        data = self._read(child, _LENGTH.size, timeout_s, greedy=True)
        size = _LENGTH.unpack_from(data)[0]
        if len(data) < _LENGTH.size + size:
            data += self._read(child, _LENGTH.size + size - len(data), timeout_s - (time.monotonic() - started))
        answer = pickle.loads(memoryview(data)[_LENGTH.size:])
        if self._exchange_size > _EXCHANGE_KEEP:  # answered: the child reads no more of it
            os.ftruncate(exchange, 0)
            self._exchange_size = 0
        kind = answer[0]
        if kind == "ok":
            return answer[1] if len(answer) > 1 else None
        if kind == "config":
            raise ConfigError(answer[1], answer[2])
        if kind == "rejected":
            raise RejectedError(answer[1])
        if kind == "transient":
            raise TransientError(answer[1])
        raise RetriableError(answer[1], retry_after_s=answer[2] if len(answer) > 2 else 0.0)

    def _read(self, child: subprocess.Popen, size: int, timeout_s: float, greedy: bool = False) -> bytes:
        """``size`` bytes from the child; ``greedy``: and whatever more is there already."""
        assert child.stdout is not None
        deadline = time.monotonic() + timeout_s
        descriptor = child.stdout.fileno()
        parts: list[bytes] = []
        left = size
        while left > 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([descriptor], [], [], remaining)[0]:
                child.kill()
                raise self._lost(child, f"gave no answer within {timeout_s:.0f} s")
            part = os.read(descriptor, max(left, 1 << 16) if greedy else min(left, 1 << 20))
            if not part:
                raise self._lost(child, "exited")
            parts.append(part)
            left -= len(part)
        return b"".join(parts)

    def _lost(self, child: subprocess.Popen, what: str) -> RetriableError:
        """The child is gone or useless: end it as :meth:`close` does (pipes closed, not left for the
        garbage collector) and say why, with its last words."""
        self.close()
        said = " | ".join(self._errors[-3:])
        return RetriableError(f"the sink worker {what} (exit code {child.returncode}){': ' + said if said else ''}")

    def _relay_log(self, child: subprocess.Popen) -> None:
        """The child's log lines (level, logger: message) into this process's log."""
        assert child.stderr is not None
        try:
            for raw in child.stderr:
                line = raw.decode("utf-8", "replace").rstrip()
                if not line:
                    continue
                level, _, message = line.partition(" ")
                number = logging.getLevelName(level)
                if not isinstance(number, int):
                    number, message = logging.WARNING, line
                if number >= logging.WARNING:
                    self._errors.append(message[:500])
                    del self._errors[:-10]
                log.log(number, "sink %s worker %s: %s", self.name, child.pid, message)
        except Exception:  # noqa: BLE001 - the pipe closed under us
            pass


def _exchange_file() -> int:
    """A file only in memory, for the requests of one worker: a memfd on Linux, else an unlinked
    temporary file. Closed on exec; the worker gets it through ``pass_fds``."""
    if hasattr(os, "memfd_create"):
        return os.memfd_create("fs_cdr-worker-request", os.MFD_CLOEXEC)
    with tempfile.TemporaryFile(prefix="fs_cdr-worker-") as handle:
        return os.dup(handle.fileno())


def write_parts(write: Callable[[list[Any], int], int], parts: list[Any]) -> None:
    """Every part, in order, with as few system calls as the kernel allows and no joining:
    ``write(buffers, offset)`` is one gathering call (pwritev at ``offset``, the bytes written so
    far; sendmsg) that may take any part of what it is given and says how much it took."""
    first, offset = 0, 0
    while first < len(parts):
        written = write(parts[first:first + IOV_MAX], offset)
        offset += written
        while first < len(parts) and written >= len(parts[first]):
            written -= len(parts[first])
            first += 1
        if written:  # a part written in part: its rest goes first next time
            parts[first] = memoryview(parts[first])[written:]


# -- the child ------------------------------------------------------------------------------------
class _Requests:
    """The child's side: the lengths from the pipe, the request itself read in place from the memory
    file (mapped again only when a request outgrows the mapping)."""

    def __init__(self, stream: BinaryIO, exchange: int) -> None:
        self.stream = stream
        self.exchange = exchange
        self.mapping: Optional[mmap.mmap] = None

    def receive(self) -> Optional[tuple[memoryview, memoryview]]:
        """One request's pickle and body, views of the file; None at the end of input."""
        head = self.stream.read(_HEAD.size)
        if len(head) < _HEAD.size:
            return None
        size, body_size = _HEAD.unpack(head)
        end = size + body_size
        if self.mapping is None or len(self.mapping) < end:
            # the whole file as it is now (at least ``end``: the parent wrote it before the lengths);
            # an earlier mapping lives on while views of it do
            self.mapping = mmap.mmap(self.exchange, 0, mmap.MAP_SHARED, mmap.PROT_READ)
        view = memoryview(self.mapping)
        return view[:size], view[size:end]


def _with_documents(index: list[tuple[Any, ...]], body: memoryview) -> list[tuple[Any, ...]]:
    """An encoded batch back together: each entry's last item (a length) becomes its document, a
    view into the request's body."""
    messages, offset = [], 0
    for entry in index:
        size = entry[-1]
        messages.append(entry[:-1] + (body[offset:offset + size],))
        offset += size
    return messages


def _answer(stream: BinaryIO, answer: tuple[Any, ...]) -> None:
    data = pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_LENGTH.pack(len(data)) + data)
    stream.flush()


def serve() -> None:
    """The child's loop: open the sink it is sent, write each batch, answer how it went."""
    # The protocol keeps its own copy of stdout; whatever a driver prints goes to the log pipe.
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    requests = _Requests(os.fdopen(os.dup(0), "rb"), int(sys.argv[1]))
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    replies.write(_HELLO)
    replies.flush()
    sink: Any = None
    while True:
        request = argument = None  # no view of the file outlives its batch
        request = requests.receive()
        if request is None:
            break
        try:
            # a request that cannot be unpickled (a sink class this worker cannot import) is that
            # request's failure, answered like any other: the framing stays intact
            operation, argument = pickle.loads(request[0])
            answer: tuple[Any, ...] = ("ok",)
            if operation == "write_encoded":
                argument = _with_documents(argument, request[1])
            if operation == "open":
                if sink is not None:
                    sink.close()
                sink = None
                cast(Any, argument).open()
                sink = argument
            elif operation in ("write", "write_encoded"):
                if sink is None:
                    raise RetriableError("the worker has no open sink")
                getattr(sink, operation)(argument)
            elif operation == "run":
                answer = ("ok", cast(Any, argument)())
        except ConfigError as error:
            answer = ("config", error.path, error.message)
        except RejectedError as error:
            answer = ("rejected", str(error))
        except TransientError as error:
            answer = ("transient", str(error))
        except RetriableError as error:
            answer = ("retriable", str(error), error.retry_after_s)
        except Exception as error:  # noqa: BLE001 - a driver bug is still only this batch's failure
            answer = ("error", f"{type(error).__name__}: {error}")
        _answer(replies, answer)
    if sink is not None:
        sink.close()
