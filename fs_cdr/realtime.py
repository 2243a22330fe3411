"""Real-time mode (``"real": true``): a row per live channel, updated as the call moves.

Each channel event below becomes an *update*: the same record the builder makes, from what the event
knows so far, with ``call_state`` saying where the call is and without ``details`` (the hangup record
has them). CHANNEL_HANGUP_COMPLETE still writes the final record, identical to hangup-only mode.

FreeSWITCH does not always deliver one channel's events in order: at load a CHANNEL_HANGUP may come
after its CHANNEL_HANGUP_COMPLETE. So records of one uuid are ordered by one rule wherever they meet
(:func:`supersedes`), never by arrival: a final record (``completed``, or ``removed`` for a leg left
out at its end) is never replaced by an update; of two updates, or two finals, the higher
``event_seq`` wins. The engine drops an update that an already dispatched record supersedes
(:class:`ChannelOrder`), a batch keeps per uuid the record that supersedes the others
(``writer._unique``), and every SQL upsert carries the same rule as its condition (``Dialect.fresher``),
for what meets in the table: replays from the spool, other writers, other switches.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Sequence

from .channel import Headers, clean_text, header, shown
from .config import CdrConfig
from .fields import to_number
from .record import CallRecord, RecordBuilder
from .schema import SHORT_LIMIT

if TYPE_CHECKING:
    from .schema import Column
    from .sinks.database import DatabaseConfig

log = logging.getLogger("fs_cdr.realtime")

#: Channel event -> call_state of the row it updates.
STATES = {
    "CHANNEL_CREATE": "created",
    "CHANNEL_PROGRESS": "ringing",
    "CHANNEL_PROGRESS_MEDIA": "early_media",
    "CHANNEL_ANSWER": "answered",
    "CHANNEL_BRIDGE": "bridged",
    "CHANNEL_UNBRIDGE": "unbridged",
    "CHANNEL_HOLD": "held",
    "CHANNEL_UNHOLD": "unheld",
    "CHANNEL_HANGUP": "hangup",
}
COMPLETED = "completed"
#: call_state of a real-time row whose leg turned out to be left out (process_cdr, skip variable):
#: the row written while the call was up is deleted.
REMOVED = "removed"
#: The states of a leg's last record: nothing that follows replaces them.
FINAL_STATES = frozenset((COMPLETED, REMOVED))
#: call_state of a real-time row whose FreeSWITCH stopped without hanging it up (kill -9, a crash):
#: set at the next start (:func:`close_lost_rows`), so that wallboards show no ghost calls.
LOST = "lost"
#: The event_seq such a row gets: above any update, so that none from the crashed run (replayed from
#: its spool) reopens the row; its completed record, if it was spooled, still replaces it.
LOST_SEQ = 2**53 - 1
#: The states of a row whose channel is still up, as far as the row knows.
OPEN_STATES = tuple(dict.fromkeys(STATES.values()))
_UPDATE_STATES = frozenset(OPEN_STATES)


def is_update(record: CallRecord) -> bool:
    """A real-time update (the call is still up), not a leg's final record.

    An update needs no crash copy in the journal: after a crash every row the crashed run left open
    is closed as ``lost`` at the next start, and the final record, which is journaled, replaces it;
    a copy of an update replayed then would only bring back a row of a call that is gone."""
    return record.get("call_state") in _UPDATE_STATES

#: The headers an update reads. Inside FreeSWITCH these are fetched one by one with getHeader, which
#: costs far less than serializing the whole event (updates are most of the events in real-time mode).
HEADERS = (
    "Event-Name", "Event-Sequence", "Event-Date-Timestamp", "Unique-ID", "Channel-Call-UUID", "Call-Direction",
    "Channel-Name", "Caller-Caller-ID-Name", "Caller-Caller-ID-Number", "Caller-Callee-ID-Number",
    "Caller-Destination-Number", "Caller-Context", "Caller-Channel-Created-Time", "Caller-Channel-Answered-Time",
    "Other-Type", "Other-Leg-Unique-ID", "Hangup-Cause", "FreeSWITCH-Switchname", "FreeSWITCH-Hostname",
    "Core-UUID",
)
VARIABLES = (
    "uuid", "direction", "originator", "bridge_uuid", "last_bridge_to", "account", "sip_gateway_name",
    "dialed_user", "user_name", "call_source", "source_name", "source_number", "dial_number",
    "cti_line_group_name", "start_epoch", "answer_epoch", "process_cdr", "start_uepoch", "answer_uepoch",
    "end_uepoch", "billmsec", "originated_legs", "presence_id",
)


def sequence(headers: Headers) -> Optional[int]:
    return parse_sequence(header(headers, "Event-Sequence"))


def parse_sequence(text: Optional[str]) -> Optional[int]:
    """An Event-Sequence header's value as the ordering rule compares it (None when not a number)."""
    value = to_number(text)
    return value if isinstance(value, int) else None


def header_names(config: CdrConfig) -> tuple[str, ...]:
    """Every header an update for this configuration may read (fields' variables included, and with
    the extended columns every variable the record builder may read)."""
    names = set(VARIABLES) | {config.skip_variable}
    for spec in config.fields:
        names.update(spec.variables)
    others: list[str] = []
    if config.extended:
        # the extended columns read dozens of variables and a few headers (fs_cdr/outcome.py): all
        # the builder may read (its names without a hyphen are an imported CDR file's, not an event's)
        builder = RecordBuilder(replace(config, details=False))
        names.update(builder.reads)
        others = sorted(name for name in builder.headers_read if "-" in name and name not in HEADERS)
    return HEADERS + tuple(others) + tuple(sorted("variable_" + name for name in names if name))


#: FreeSWITCH sets a channel's time variables all at once, at its hangup (switch_channel_set_timestamps):
#: while the call is up none of them is there. Inside FreeSWITCH an update reads the others only when
#: this one is (each getHeader walks the event's headers: most updates save five of them).
TIMESTAMP_SENTINEL = "variable_start_uepoch"
TIMESTAMP_VARIABLES = frozenset(("variable_start_epoch", "variable_answer_epoch", "variable_answer_uepoch",
                                 "variable_end_epoch", "variable_end_uepoch", "variable_billmsec", "variable_billsec",
                                 "variable_duration"))


def header_plan(config: CdrConfig) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """:func:`header_names` as :func:`read_headers` reads them: those read always (the sentinel among
    them), and the time variables read only when the sentinel is there."""
    names = header_names(config)
    return (tuple(name for name in names if name not in TIMESTAMP_VARIABLES),
            tuple(name for name in names if name in TIMESTAMP_VARIABLES))


def read_headers(get: Callable[[Any, str], Optional[str]], event: Any,
                 plan: tuple[tuple[str, ...], tuple[str, ...]]) -> dict[str, str]:
    """The headers of ``plan`` an event has, read one by one with ``get(event, name)`` (getHeader)."""
    always, timed = plan
    headers = {}
    for name in always:
        value = get(event, name)
        if value is not None:
            headers[name] = value
    if TIMESTAMP_SENTINEL in headers:
        for name in timed:
            value = get(event, name)
            if value is not None:
                headers[name] = value
    return headers


class UpdateBuilder:
    """Makes the real-time updates for one configuration."""

    def __init__(self, config: CdrConfig) -> None:
        # Updates leave details to the final record: building them on every event is the cost to avoid.
        self.builder = RecordBuilder(replace(config, details=False))

    def build(self, headers: Headers, name: str) -> Optional[CallRecord]:
        record = self.builder.build(headers)
        if record is None:
            return None
        state = STATES[name]
        record["call_state"] = state
        record["event_seq"] = sequence(headers)
        record["event"] = name
        if state != "hangup":
            # still up: no end yet; duration and billsec so far come from the event's own time
            record["end_epoch"] = None
            record["end_stamp"] = None
            record["hangup_cause"] = None
        if name == "CHANNEL_BRIDGE" and not record.get("bridge_uuid"):
            other = header(headers, "Other-Leg-Unique-ID")
            # the same treatment the builder gives every short column
            record["bridge_uuid"] = clean_text(other)[:SHORT_LIMIT] if other else None
        return record


def is_final(record: Mapping[str, Any]) -> bool:
    """Whether ``record`` is a leg's last word (a record without ``call_state`` is a hangup record)."""
    return record.get("call_state", COMPLETED) in FINAL_STATES


def supersedes(new: Mapping[str, Any], old: Mapping[str, Any]) -> bool:
    """The ordering rule for two records of one uuid: whether ``new`` takes the place of ``old``.
    A final record beats an update whatever their order; otherwise the higher ``event_seq`` wins,
    and of two equal ones the later (a replay of the same event)."""
    new_final, old_final = is_final(new), is_final(old)
    if new_final != old_final:
        return new_final
    return (new.get("event_seq") or 0) >= (old.get("event_seq") or 0)


class ChannelOrder:
    """What the engine last dispatched per channel, for real-time mode: an update that arrives after
    its channel's final record, or after a newer update, is stale and is not sent (a table would
    refuse it; a Redis channel's subscribers would take the old state for the new one).

    Bounded: it remembers the ``limit`` channels seen last, far more than are ever live at once
    (FreeSWITCH's own limit is max-sessions), and a late event comes within seconds of its final."""

    __slots__ = ("limit", "stale", "_seen")

    def __init__(self, limit: int = 200_000) -> None:
        self.limit = limit
        #: records not sent because one already dispatched supersedes them (or is the same final)
        self.stale = 0
        self._seen: OrderedDict[object, tuple[bool, int]] = OrderedDict()

    def admit(self, record: Mapping[str, Any]) -> bool:
        """Whether ``record`` goes to the sinks; remembers it when it does. A final always goes but
        for the same final again (a stream played twice: a Redis list would hold it twice)."""
        key = record.get("uuid")
        final, seq = is_final(record), record.get("event_seq") or 0
        seen = self._seen
        last = seen.get(key)
        if last is not None:
            if (last[0] and (not final or last[1] == seq)) or (not final and last[1] > seq):
                self.stale += 1
                return False
            seen.move_to_end(key)
        elif len(seen) >= self.limit:
            seen.popitem(last=False)
        seen[key] = (final, seq)
        return True


def close_lost_rows(config: CdrConfig, switchname: str, core_uuid: str) -> int:
    """At start, in each real-time database: the rows of this ``switchname`` whose ``core_uuid`` is
    not the running one and which are not completed become ``lost`` (``SqlSink.close_lost``). Another
    switch's rows, completed rows and this run's rows are never touched. Returns how many; raises the
    sink's error when a database cannot be reached (:func:`close_lost_rows_soon` retries).

    A database whose sink runs in a worker process (the default) is reached from a worker too: its
    driver is never imported into FreeSWITCH's process (psycopg's import alone is a tenth of a CPU
    second holding the interpreter lock the source thread needs, at the first call after a start)."""
    from .schema import table_columns
    from .sinks.worker import ProcessSink

    closed = 0
    for database in config.databases:
        if not database.real:
            continue
        task = partial(close_lost_rows_in, database, table_columns(config), switchname, core_uuid)
        if database.batch.worker_process:
            count = int(ProcessSink(lambda: None, database.name, database.batch.timeout_s).run(task))
        else:
            count = task()
        if count:
            log.warning("%s: %d real-time rows of switch %s left open by an earlier run (FreeSWITCH stopped "
                        "without hanging them up) are now call_state 'lost'", database.describe(), count,
                        shown(switchname))
        closed += count
    return closed


def close_lost_rows_in(database: DatabaseConfig, columns: Sequence[Column], switchname: str, core_uuid: str) -> int:
    """:func:`close_lost_rows` in one database, in whichever process runs it."""
    from .sinks.sql import SqlSink, dialect_for

    dialect = dialect_for(database.dbtype, database)
    if dialect is None:
        return 0
    sink = SqlSink(dialect, database, columns, create=False)
    try:
        sink.open()
        return sink.close_lost(switchname, core_uuid)
    finally:
        sink.close()


def close_lost_rows_soon(config: CdrConfig, switchname: str, core_uuid: str,
                         attempts: int = 20, pause_s: float = 15.0) -> Optional[threading.Thread]:
    """:func:`close_lost_rows` in a thread of its own, retried while a database is down (FreeSWITCH's
    start never waits for it)."""
    if not switchname or not core_uuid or not any(database.real for database in config.databases):
        return None

    def run() -> None:
        for attempt in range(1, attempts + 1):
            try:
                close_lost_rows(config, switchname, core_uuid)
                return
            except Exception as error:  # noqa: BLE001 - logged, then tried again
                if attempt == attempts:
                    log.error("could not close the real-time rows an earlier run left open: %s", error)
                    return
                time.sleep(pause_s)

    thread = threading.Thread(target=run, name="fs_cdr-lost-rows", daemon=True)
    thread.start()
    return thread
