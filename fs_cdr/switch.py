"""FreeSWITCH's side of fs_cdr: the only module that imports ``freeswitch``.

mod_python3 reloads the module it is named by (``fs_cdr``) on every ``python fs_cdr ...``, so all
state lives here, in a submodule imported once: the running :class:`~fs_cdr.engine.Engine` and the
thread that pops events from FreeSWITCH's EventConsumer.

Facts from a real FreeSWITCH that shape this module:
- ``EventConsumer.pop(1, ms)`` releases the GIL while it waits; when its C queue is full FreeSWITCH
  drops the event ("Cannot queue any more events"), so the queue is large and the pop loop does no I/O.
  It releases the GIL on every call, even with an event waiting, so any thread that wants the GIL
  contends with the pop loop event by event: the database drivers therefore run in sink worker
  processes (sinks/worker.py), started with the same Python version mod_python3 embeds. Those brief
  releases never let a waiting thread in (CPython retakes the GIL first and the waiter's switch
  interval starts over), so during a burst the guard and the writers would starve for seconds;
  ``Engine.handle`` therefore sleeps(0) once a millisecond (engine.YIELD_INTERVAL_S).
- Shutdown sends Python nothing (no atexit, no SystemExit): SHUTDOWN_REQUESTED and SHUTDOWN events are
  bound so the engine spools what it holds, and every later record goes straight to the spool.
- Threads started from Python inherit FreeSWITCH's small stack size; ``threading.stack_size`` gives
  the writer threads room for the database drivers.
- With ``-nc`` stdout and stderr go nowhere: logging goes through ``freeswitch.consoleLog``.
"""

from __future__ import annotations

import logging
import threading
from functools import partial
from typing import Any, Optional

import freeswitch

from .channel import dumps
from .config import CdrConfig, Paths, load_config, resolve_config_path
from .engine import EVENTS, Engine, format_status
from .errors import ConfigError
from .realtime import STATES, header_plan, read_headers

log = logging.getLogger("fs_cdr")

#: Events FreeSWITCH may hold for us before dropping: 50 s of 1,000 two-leg calls per second.
#: The C queue stores pointers, so this costs about 800 KB.
CONSUMER_QUEUE = 100_000
THREAD_STACK = 4 * 1024 * 1024
#: How long the source waits for an event while real-time updates are held (ms).
HOLD_POLL_MS = 10
USAGE = "-USAGE: python fs_cdr status [json|prometheus] | reload [path] | flush | replay | rotate | start [path] | stop"

_lock = threading.RLock()
_engine: Optional[Engine] = None
_config_path = ""
_source: Optional[threading.Thread] = None
_source_running = threading.Event()
_LEVELS = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warning",
    logging.ERROR: "err",
    logging.CRITICAL: "crit",
}


class ConsoleLogHandler(logging.Handler):
    """Python logging into FreeSWITCH's log, tagged ``[fs_cdr]`` (grep for it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level = _LEVELS.get(record.levelno, "notice")
            freeswitch.consoleLog(level, "[fs_cdr] " + self.format(record) + "\n")
        except Exception:  # noqa: BLE001 - logging must never raise into FreeSWITCH
            pass


def _setup_logging() -> None:
    root = logging.getLogger("fs_cdr")
    if not any(isinstance(handler, ConsoleLogHandler) for handler in root.handlers):
        root.addHandler(ConsoleLogHandler())
        root.setLevel(logging.INFO)
        root.propagate = False


def _global(name: str) -> str:
    try:
        return freeswitch.getGlobalVariable(name) or ""
    except Exception:  # noqa: BLE001
        return ""


def _paths() -> Paths:
    return Paths(
        conf_dir=_global("conf_dir") or "/etc/freeswitch",
        db_dir=_global("db_dir") or "/var/lib/freeswitch/db",
        storage_dir=_global("storage_dir") or "/var/lib/freeswitch/storage",
    )


def _load(argument: str) -> tuple[str, CdrConfig]:
    paths = _paths()
    path = resolve_config_path(argument, _global("fs_cdr_config"), paths.conf_dir)
    return path, load_config(path, paths)


def start(argument: str = "") -> str:
    """Start the engine and its source thread unless they already run. Safe to call on every call."""
    global _engine, _config_path, _source
    with _lock:
        if _engine is not None and _source is not None and _source.is_alive():
            return f"+OK fs_cdr already running ({_config_path})"
        _setup_logging()
        threading.stack_size(THREAD_STACK)
        if _engine is None:
            try:
                path, config = _load(argument)
            except ConfigError as error:
                log.error("not started: %s", error)
                return f"-ERR fs_cdr not started: {error}"
            _engine = Engine(config).start()
            _config_path = path
            _engine.close_lost_rows = True  # with the first record's switchname and Core-UUID
        _source_running.set()
        _source = threading.Thread(target=consume, name="fs_cdr-source", daemon=True)
        _source.start()
        return f"+OK fs_cdr started ({_config_path})"


def consume() -> None:
    """The source loop: pop, decode, hand to the engine. No I/O here.

    Hangups are serialized whole (they carry every variable); real-time updates read only the few
    headers they need with getHeader, which costs a fraction of serializing a whole event (called
    as SWIG's function itself where there is one: the method around it is a Python call per header)."""
    consumer = freeswitch.EventConsumer(EVENTS[0], "", CONSUMER_QUEUE)
    get_header = getattr(getattr(freeswitch, "_freeswitch", None), "Event_getHeader", None) or _get_header
    for name in EVENTS[1:]:
        consumer.bind(name, "")
    log.info("consuming %s (queue %d)", ", ".join(EVENTS), CONSUMER_QUEUE)
    #: the real-time events bound so far, and the engine's set they were last checked against
    bound: set[str] = set()
    checked: frozenset[str] = frozenset()
    plan: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
    header_config = None
    while _source_running.is_set():
        try:
            engine = _engine
            if engine is not None and engine.config.real and engine.realtime_events is not checked:
                # bound here, in the consumer's own thread; never unbound (the engine ignores what
                # it no longer needs: real-time mode off again, or the sink that needed it gone)
                checked = engine.realtime_events
                missing = sorted(checked - bound)
                for name in missing:
                    consumer.bind(name, "")
                bound.update(missing)
                if missing:
                    log.info("real-time mode: also consuming %s", ", ".join(missing))
            # while real-time updates wait to be built (Engine.update_hold_s), look often enough
            event = consumer.pop(1, HOLD_POLL_MS if engine is not None and engine.holding else 500)
            if event is None or engine is None:
                if engine is not None:
                    engine.tick()
                continue
            name = event.getHeader("Event-Name")
            if name in STATES:
                if not engine.config.real:
                    continue
                if header_config is not engine.config:
                    header_config, plan = engine.config, header_plan(engine.config)
                # the rest of its headers are read only if the update is built: one that a newer
                # event of its leg supersedes within the hold never is
                engine.handle_update(get_header(event, "Unique-ID"), get_header(event, "Event-Sequence"), name,
                                     partial(read_headers, get_header, event, plan))
            else:
                engine.handle_serialized(event.serialize("json"))
        except Exception:  # noqa: BLE001 - the loop must outlive any single bad event
            log.exception("source: could not take an event")


def _get_header(event: Any, name: str) -> Optional[str]:
    return event.getHeader(name)


def reload(argument: str = "") -> str:
    global _config_path
    with _lock:
        if _engine is None:
            return start(argument)
        try:
            path, config = _load(argument or _config_path)
            message = _engine.reload(config)
        except ConfigError as error:
            log.error("reload refused, the running configuration stays: %s", error)
            return f"-ERR reload refused, still running {_config_path}: {error}"
        _config_path = path
        log.info("%s", message)
        return f"+OK {message}"


def stop() -> str:
    global _engine
    with _lock:
        _source_running.clear()
        if _engine is None:
            return "+OK fs_cdr was not running"
        engine, _engine = _engine, None
    spooled = engine.stop()
    return f"+OK fs_cdr stopped, {spooled} records spooled"


def command(argument: str) -> str:
    """``python fs_cdr <command>`` from fs_cli."""
    words = argument.split()
    name = words[0].lower() if words else "status"
    rest = " ".join(words[1:])
    if name == "start":
        return start(rest)
    if name == "reload":
        return reload(rest)
    if name == "stop":
        return stop()
    engine = _engine
    if name not in ("status", "flush", "replay", "rotate"):
        return USAGE
    if engine is None:
        return "-ERR fs_cdr is not running (python fs_cdr start [path/to/cdr.json])"
    if name == "status":
        status = engine.status()
        if rest == "json":
            return dumps(status)
        if rest == "prometheus":
            from .metrics import prometheus

            return prometheus(status)
        return format_status(status)
    if name == "replay":
        ok, answer = engine.replay_report()
        return ("+OK " if ok else "-ERR ") + answer
    if name == "rotate":  # as mod_cdr_csv rotates on HUP: each file sink's writer opens a new file
        from .sinks.file import rotate_files

        rotated = rotate_files(engine.config)
        return "+OK " + ("; ".join(f"{old} -> {new}" for old, new in rotated) or "nothing to rotate")
    if engine.flush(10.0):
        return "+OK flushed"
    return "-ERR not everything was written within 10 s (the rest is queued or spooled)"


def handler(session: Any, args: str) -> None:
    """The dialplan application ``python fs_cdr``: starts the engine once, never twice."""
    result = start(args or "")
    if result.startswith("-ERR"):
        log.error("%s", result)


def api(stream: Any, args: str) -> None:
    try:
        output = command(args or "")
    except Exception as error:  # noqa: BLE001
        log.exception("api command failed")
        output = f"-ERR {error}"
    stream.write(output if output.endswith("\n") else output + "\n")


def runtime(args: str) -> None:
    """``pyrun fs_cdr`` / ``startup-script``: start and return; the engine's threads keep running."""
    result = start(args or "")
    freeswitch.consoleLog("info" if result.startswith("+OK") else "err", f"[fs_cdr] {result}\n")
