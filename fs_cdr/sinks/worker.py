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

The pipe carries pickles between two processes of the same installation (the sink object with its
configuration once, then batches of records); nothing from outside ever reaches it. A request is
two lengths, the pickle and a body of raw bytes: the documents of an encoded batch
(writer.EncodedSink: Redis's JSON documents), written from their own buffers with ``os.writev``
and read into one buffer, so a batch's megabytes are neither pickled nor copied in Python.
"""

from __future__ import annotations

import logging
import os
import pickle
import select
import shutil
import struct
import subprocess
import sys
import threading
import time
from typing import Any, BinaryIO, Callable, Optional, Sequence

from ..errors import ConfigError, RejectedError, RetriableError

log = logging.getLogger("fs_cdr.sinks.worker")

_LENGTH = struct.Struct("!Q")
#: A request's head: the pickle's length and the body's.
_HEAD = struct.Struct("!QQ")
#: Buffers per writev call (POSIX guarantees 16; Linux takes 1024).
_IOV_MAX = max(16, min(os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 16, 1024))
#: The child's first words on its protocol pipe: it started and imported fs_cdr, and which protocol
#: it speaks. The same length as the first protocol's, so that each side of a mismatch sees it at
#: once (the child imports fs_cdr's files from disk: after an upgrade they may be newer than the
#: fs_cdr FreeSWITCH is running).
_HELLO = b"fs_cdr worker v2 ok"
_FIRST_HELLO = b"fs_cdr worker ready"
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

    def close(self) -> None:
        """End the child (it closes its sink on end of input; killed after 5 s), reap it, and close
        its pipes once its last log lines are relayed."""
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
        command = [interpreter(), "-c", _CHILD]
        try:
            child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=environment, close_fds=True, start_new_session=True)
        except OSError as error:
            raise RetriableError(f"cannot start the sink worker ({command[0]}): {error}") from error
        self._child = child
        self._errors = []
        self._relay = threading.Thread(target=self._relay_log, args=(child,), name=f"fs_cdr-{self.name}-worker-log",
                                       daemon=True)
        self._relay.start()
        hello = self._read(child, len(_HELLO), self.open_timeout_s)
        if hello == _FIRST_HELLO:
            raise self._lost(child, "runs an older fs_cdr than the one FreeSWITCH loaded (were fs_cdr's files "
                                    "replaced while FreeSWITCH ran?): restart FreeSWITCH")
        if hello != _HELLO:
            raise self._lost(child, "did not start")

    def _call(self, request: tuple[str, Any], timeout_s: float, meanwhile: Optional[Callable[[], None]] = None,
              body: Sequence[bytes] = ()) -> None:
        child = self._child
        if child is None:
            raise RetriableError("the sink worker is not running")
        data = pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            assert child.stdin is not None
            child.stdin.write(_HEAD.pack(len(data), sum(len(part) for part in body)))
            child.stdin.write(data)
            child.stdin.flush()
            if body:
                _write_all(child.stdin.fileno(), list(body))
        except (OSError, ValueError) as error:
            raise self._lost(child, f"stopped taking batches ({error})") from None
        started = time.monotonic()
        if meanwhile is not None:
            meanwhile()
        size = _LENGTH.unpack(self._read(child, _LENGTH.size, timeout_s))[0]
        answer = pickle.loads(self._read(child, size, timeout_s - (time.monotonic() - started)))
        kind = answer[0]
        if kind == "ok":
            return
        if kind == "config":
            raise ConfigError(answer[1], answer[2])
        if kind == "rejected":
            raise RejectedError(answer[1])
        raise RetriableError(answer[1])

    def _read(self, child: subprocess.Popen, size: int, timeout_s: float) -> bytes:
        assert child.stdout is not None
        deadline = time.monotonic() + timeout_s
        descriptor = child.stdout.fileno()
        parts: list[bytes] = []
        left = size
        while left:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([descriptor], [], [], remaining)[0]:
                child.kill()
                raise self._lost(child, f"gave no answer within {timeout_s:.0f} s")
            part = os.read(descriptor, min(left, 1 << 20))
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


def _write_all(descriptor: int, parts: list[Any]) -> None:
    """Write every part, in order, with as few system calls as the kernel allows (no joining)."""
    first = 0
    while first < len(parts):
        written = os.writev(descriptor, parts[first:first + _IOV_MAX])
        while first < len(parts) and written >= len(parts[first]):
            written -= len(parts[first])
            first += 1
        if written:  # a part written in part: its rest goes first next time
            parts[first] = memoryview(parts[first])[written:]


# -- the child ------------------------------------------------------------------------------------
def _receive(stream: BinaryIO) -> Optional[tuple[bytes, memoryview]]:
    """One request's pickle and body; None at the end of input."""
    head = stream.read(_HEAD.size)
    if len(head) < _HEAD.size:
        return None
    size, body_size = _HEAD.unpack(head)
    data = stream.read(size)
    if len(data) < size:
        return None
    body = memoryview(bytearray(body_size))
    filled = 0
    while filled < body_size:
        count = stream.readinto(body[filled:])
        if not count:
            return None
        filled += count
    return data, body


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
    requests = os.fdopen(os.dup(0), "rb")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    replies.write(_HELLO)
    replies.flush()
    sink: Any = None
    while True:
        request = _receive(requests)
        if request is None:
            break
        try:
            # a request that cannot be unpickled (a sink class this worker cannot import) is that
            # request's failure, answered like any other: the framing stays intact
            operation, argument = pickle.loads(request[0])
            if operation == "write_encoded":
                argument = _with_documents(argument, request[1])
            if operation == "open":
                if sink is not None:
                    sink.close()
                sink = None
                argument.open()
                sink = argument
            elif operation in ("write", "write_encoded"):
                if sink is None:
                    raise RetriableError("the worker has no open sink")
                getattr(sink, operation)(argument)
            answer: tuple[Any, ...] = ("ok",)
        except ConfigError as error:
            answer = ("config", error.path, error.message)
        except RejectedError as error:
            answer = ("rejected", str(error))
        except RetriableError as error:
            answer = ("retriable", str(error))
        except Exception as error:  # noqa: BLE001 - a driver bug is still only this batch's failure
            answer = ("error", f"{type(error).__name__}: {error}")
        _answer(replies, answer)
    if sink is not None:
        sink.close()
