"""Sources outside FreeSWITCH: recorded event streams (one JSON event per line).

The same engine that runs inside FreeSWITCH takes these events, so the demo, the tests and the
benchmarks exercise the real record builder, lanes and sinks. (Inside FreeSWITCH the source is the
EventConsumer loop in ``switch.py``.)
"""

from __future__ import annotations

import logging
from typing import Iterable, Optional

from .engine import Engine

log = logging.getLogger("fs_cdr.source")


def play(engine: Engine, paths: Iterable[str], unreadable: Optional[list[str]] = None) -> list[str]:
    """Feed every event of the recordings to the engine, in order, as their JSON text (the way
    FreeSWITCH's serialized events reach it); returns the uuids recorded. A recording that cannot
    be opened or read is logged by name and added to ``unreadable``; the others are played."""
    uuids: list[str] = []
    for path in paths:
        try:
            with open(path, "rb") as handle:
                for number, line in enumerate(handle, 1):
                    if not line.strip():
                        continue
                    malformed = engine.malformed
                    record = engine.handle_serialized(line)
                    if record is not None:
                        uuids.append(str(record["uuid"]))
                    elif engine.malformed > malformed:
                        log.warning("%s:%d: skipped that line", path, number)
        except OSError as error:
            log.error("cannot read %s: %s", path, error.strerror or error)
            if unreadable is not None:
                unreadable.append(path)
    return uuids
