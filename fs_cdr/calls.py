"""One row per call (``"calls": {"table": "cdr_call"}``), made again from the leg rows in the table.

A call is the leg it started on (its *originating leg*, the row whose ``call_key`` is its own uuid) and
every leg whose ``call_key`` leads to it: the legs it originated (``originator``), the agent legs a
queue originated for it (``cc_member_session_uuid``), and legs originated by those (a consultation
of an attended transfer), followed up to :data:`DEPTH` links.

Order independence, by construction: the call row is a pure function of the set of its legs' rows
(:func:`call_row`). Each batch of legs, in the same transaction that upserts them, recomputes the row
of every call the batch touches from the leg table as it then is, and deletes the row of a touched key
whose originating leg is not there. A leg's ``call_key`` is its own (a replay carries the same), legs
are upserted by uuid, so after every leg of a call has been written, once or many times, in any
order, the last recomputation saw them all: the row is the same whatever the order. Recomputations
of one call must not run side by side (each would miss the other's uncommitted legs), so a database
with a call table has one writer (``workers`` 1); one table shared by several switches is fine, as
their calls are different calls.
"""

from __future__ import annotations

import operator
import os
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Optional

from .config import Section, SectionContext
from .errors import ConfigError, RetriableError
from .fields import Value
from .schema import Column

#: How many ``call_key`` links are followed from a leg to its call's originating leg.
DEPTH = 4
#: At most this many values in one ``IN (...)`` list (Oracle takes 1,000, SQL Server 2,100 parameters).
CHUNK = 500

CALL_COLUMNS: tuple[Column, ...] = (
    Column("uuid", "key", "the originating leg's uuid (its row in the leg table)"),
    Column("caller_id_number", "text", "the originating leg's caller_id_number"),
    Column("caller_id_name", "text", "the originating leg's caller_id_name"),
    Column("destination", "text", "the originating leg's first_destination: what the caller dialled"),
    Column("answered_by", "text", "who answered first: the agent (cc_agent), else the leg's account "
                                  "(extension, gateway), else its destination_number; NULL if nobody"),
    Column("queue", "text", "the queue the call went through (cc_queue)"),
    Column("call_source", "text", "the originating leg's call_source"),
    Column("source_name", "text", "the originating leg's source_name"),
    Column("start_epoch", "int", "the originating leg's start_epoch"),
    Column("answer_epoch", "int", "when a party answered (Unix seconds); NULL if nobody did"),
    Column("end_epoch", "int", "when the last leg ended"),
    Column("started_at_ms", "int", "the originating leg's started_at_ms"),
    Column("wait_ms", "int", "the caller's wait: start to a party's answer, or to the caller's hangup"),
    Column("talk_ms", "int", "a party's answer to the caller's hangup; NULL if nobody answered"),
    Column("legs", "int", "how many legs the call has"),
    Column("transfers", "int", "transfers of its legs (transfer_history), and legs that joined it by one"),
    Column("outcome", "short", "answered, missed, abandoned, busy, failed or voicemail (docs/call-center.md)"),
    Column("hangup_by", "short", "caller, callee or system: the originating leg's hangup_by"),
    Column("switchname", "text", "the originating leg's switchname"),
)
CALL_NAMES = tuple(column.name for column in CALL_COLUMNS)
#: The leg columns a call row is made from.
LEG_NAMES = ("uuid", "leg", "call_key", "caller_id_number", "caller_id_name", "first_destination", "account",
             "destination_number", "agent", "queue", "call_source", "source_name", "start_epoch", "end_epoch",
             "started_at_ms", "answer_ms", "duration_ms", "outcome", "hangup_by", "transfers", "switchname",
             "originator", "direction")

Leg = Mapping[str, Any]
_LEG_VALUES = operator.itemgetter(*LEG_NAMES)


def _ms(leg: Leg, name: str) -> int | None:
    start, offset = leg.get("started_at_ms"), leg.get(name)
    return start + offset if isinstance(start, int) and isinstance(offset, int) else None


def call_row(root: Leg, legs: Iterable[Leg]) -> dict[str, Value]:
    """The row of the call that started on ``root``, from all its legs' rows (``root`` among them)."""
    others = sorted((leg for leg in legs if leg["uuid"] != root["uuid"]), key=lambda leg: str(leg["uuid"]))
    every = [root] + others
    answered = [(at, str(leg["uuid"]), leg) for leg in others if (at := _ms(leg, "answer_ms")) is not None]
    first = min(answered, key=lambda found: (found[0], found[1]))[2] if answered else None
    root_outcome, root_queue = root.get("outcome"), root.get("queue")
    queue = root_queue or next((leg.get("queue") for leg in others if leg.get("queue")), None)
    answered_at = _ms(first, "answer_ms") if first is not None else None
    if first is None and root_outcome == "answered" and not queue:
        answered_at = _ms(root, "answer_ms")  # the switch itself answered (an IVR) and nobody else was called
    ended = _ms(root, "duration_ms")
    started = root.get("started_at_ms")
    if root_outcome == "voicemail":
        outcome = "voicemail"
    elif answered_at is not None:
        outcome = "answered"
    elif queue:
        outcome = "abandoned" if root.get("hangup_by") == "caller" else "missed"
    else:
        outcomes = {leg.get("outcome") for leg in every}
        if root_outcome == "busy" or (others and all(leg.get("outcome") == "busy" for leg in others)):
            outcome = "busy"
        elif root_outcome == "failed" or (others and all(leg.get("outcome") == "failed" for leg in others)):
            outcome = "failed"
        elif outcomes & {"no_answer", "cancelled", "rejected"}:
            outcome = "missed"
        else:
            outcome = None  # nothing tells (a leg without the variables that decide its outcome)
    answered_by = None
    if first is not None:
        answered_by = first.get("agent") or first.get("account") or first.get("destination_number")
    elif answered_at is not None and root.get("direction") == "outbound":
        # an originated call (a dialer's): the leg it started on is the called party's own
        answered_by = root.get("account") or root.get("destination_number")
    ends = [leg["end_epoch"] for leg in every if isinstance(leg.get("end_epoch"), int)]
    joined = sum(1 for leg in others if leg.get("call_key") != root["uuid"] and leg.get("answer_ms") is not None)
    return {
        "uuid": root["uuid"],
        "caller_id_number": root.get("caller_id_number"),
        "caller_id_name": root.get("caller_id_name"),
        "destination": root.get("first_destination") or root.get("destination_number"),
        "answered_by": answered_by,
        "queue": queue,
        "call_source": root.get("call_source"),
        "source_name": root.get("source_name"),
        "start_epoch": root.get("start_epoch"),
        "answer_epoch": answered_at // 1000 if answered_at is not None else None,
        "end_epoch": max(ends) if ends else None,
        "started_at_ms": started,
        "wait_ms": (answered_at - started if answered_at is not None and isinstance(started, int)
                    else root.get("duration_ms")),
        "talk_ms": ended - answered_at if answered_at is not None and ended is not None else None,
        "legs": len(every),
        "transfers": sum(leg.get("transfers") or 0 for leg in every) + joined,
        "outcome": outcome,
        "hangup_by": root.get("hangup_by") or (first.get("hangup_by") if first is not None else None),
        "switchname": root.get("switchname"),
    }


def root_of(uuid: str, keys: Mapping[str, str | None]) -> str | None:
    """The originating leg a leg's ``call_key`` links lead to, within ``keys`` (uuid -> call_key); None
    when a link leads to a leg not (yet) there, or goes round."""
    for _ in range(DEPTH + 1):
        if uuid not in keys:
            return None
        key = keys[uuid]
        if key is None or key == uuid:
            return uuid if key == uuid else None
        uuid = key
    return None


def calls_of(legs: Iterable[Leg]) -> dict[str, dict[str, Value]]:
    """Every call row a set of leg rows makes (what the table holds once these legs are written)."""
    by_uuid = {leg["uuid"]: leg for leg in legs}
    keys = {uuid: leg.get("call_key") for uuid, leg in by_uuid.items()}
    members: dict[str, list[Leg]] = {}
    for uuid, leg in by_uuid.items():
        root = root_of(uuid, keys)
        if root is not None:
            members.setdefault(root, []).append(leg)
    return {root: call_row(by_uuid[root], found) for root, found in members.items()}


def _chunks(values: Sequence[Any]) -> Iterable[Sequence[Any]]:
    for start in range(0, len(values), CHUNK):
        yield values[start:start + CHUNK]


class CallTable:
    """The call table of one SQL sink: its statements, and :meth:`refresh` for a batch of legs."""

    def __init__(self, dialect: Any, table: str, leg_table: str) -> None:
        self.dialect = dialect
        self.table = table
        self.leg_table = leg_table
        self.upsert = dialect.upsert(table, CALL_NAMES)
        quote = dialect.quote
        self._legs = ", ".join(quote(name) for name in LEG_NAMES)
        self._from = quote(leg_table)

    def _in(self, count: int) -> str:
        return ", ".join([self.dialect.placeholder] * count)

    def _select(self, cursor: Any, column: str, values: Sequence[str]) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        quote = self.dialect.quote
        for chunk in _chunks(values):
            cursor.execute(f"SELECT {self._legs} FROM {self._from} WHERE {quote(column)} IN ({self._in(len(chunk))})",
                           tuple(chunk))
            found.extend(dict(zip(LEG_NAMES, row)) for row in cursor.fetchall())
        return found

    def _linked(self, cursor: Any, keys: Sequence[str]) -> list[str]:
        """The uuids of the legs whose call_key is one of ``keys`` (only the key column is read: the
        rows of the usual call are already known)."""
        found: list[str] = []
        quote = self.dialect.quote
        for chunk in _chunks(keys):
            cursor.execute(f"SELECT {quote('uuid')} FROM {self._from} WHERE {quote('call_key')} IN "
                           f"({self._in(len(chunk))})", tuple(chunk))
            found.extend(str(row[0]) for row in cursor.fetchall())
        return found

    def keys_of(self, cursor: Any, uuids: Sequence[str]) -> list[str]:
        """The call keys of these legs, as the table holds them (read before the legs are deleted)."""
        return [str(leg["call_key"]) for leg in self._select(cursor, "uuid", uuids) if leg.get("call_key")]

    def refresh(self, cursor: Any, records: Sequence[Mapping[str, Any]], removed: Sequence[str] = (),
                removed_keys: Sequence[str] = (), write: bool = True) -> list[dict[str, Value]]:
        """Recompute, from the leg table, the row of every call these legs (just written, not yet
        committed) belong to. ``removed``: legs just deleted (real-time mode: a leg left out at its
        end), whose calls (``removed_keys``) are recomputed too, and whose own call row, if it was an
        originating leg, is deleted. Returns the call rows, written into the call table unless
        ``write`` is false (a :class:`CallBook` sends them as messages instead)."""
        touched = {str(value) for record in records for value in (record.get("uuid"), record.get("call_key"))
                   if value} | set(removed_keys)
        # A completed record is what its row now holds (nothing overwrites a completed row but the same
        # leg completed): those need not be read back. A real-time update may have lost to a fresher row.
        legs: dict[str, dict[str, Any]] = {}
        for record in records:
            if record.get("call_state") == "completed" and record.get("call_key"):
                try:
                    legs[str(record["uuid"])] = dict(zip(LEG_NAMES, _LEG_VALUES(record)))
                except KeyError:  # not a record the builder made with the extended columns
                    legs[str(record["uuid"])] = {name: record.get(name) for name in LEG_NAMES}
        frontier = sorted(touched)
        for _ in range(DEPTH + 1):  # up: from each touched leg to its call's originating leg
            frontier = [uuid for uuid in frontier if uuid not in legs]
            if not frontier:
                break
            for leg in self._select(cursor, "uuid", frontier):
                legs[leg["uuid"]] = leg
            frontier = sorted({leg["call_key"] for leg in legs.values() if leg.get("call_key")} - set(legs))
        keys = {uuid: leg.get("call_key") for uuid, leg in legs.items()}
        roots = sorted({root for uuid in touched if (root := root_of(uuid, keys)) is not None})
        # down: every leg whose call_key links to a leg of the call; the legs already known are asked
        # for at once, so that the usual call (its legs in this batch, or its caller's leg before) takes
        # one query
        wanted = set(roots)
        frontier = sorted(wanted | {uuid for uuid in legs if root_of(uuid, keys) in wanted})
        searched: set[str] = set()
        for _ in range(DEPTH):
            searched.update(frontier)
            linked = self._linked(cursor, frontier) if frontier else []
            unknown = sorted({uuid for uuid in linked if uuid not in legs})
            for leg in self._select(cursor, "uuid", unknown) if unknown else []:
                legs[leg["uuid"]] = leg
            frontier = sorted(set(linked) - searched)
            if not frontier:
                break
        rows = calls_of(legs.values())
        written = [rows[root] for root in roots if root in rows]
        if written and write:
            cursor.executemany(self.upsert, [tuple(row[name] for name in CALL_NAMES) for row in written])
        # Only an originating leg has a row, and a leg's call_key never changes: a row can only lose its
        # originating leg by a deletion
        gone = sorted(set(removed) - set(rows)) if write else []
        quote = self.dialect.quote
        for chunk in _chunks(gone):
            cursor.execute(f"DELETE FROM {quote(self.table)} WHERE {quote('uuid')} IN ({self._in(len(chunk))})",
                           tuple(chunk))
        return written

    def index_statement(self) -> str:
        """The index the recomputation reads the leg table by."""
        quote = self.dialect.quote
        return f"CREATE INDEX {quote(self.leg_table + '_call_key')} ON {quote(self.leg_table)} ({quote('call_key')})"


@dataclass(frozen=True)
class CallMessages:
    """A message sink's ``calls`` object: where its call messages go (``(kind, name)``: a Redis
    ``list``/``channel``/``stream``, a RabbitMQ ``routing_key``), and how long the book keeps legs."""

    targets: tuple[tuple[str, str], ...]
    keep_hours: float = 48.0

    def get(self, kind: str) -> str:
        return next((name for found, name in self.targets if found == kind), "")


def parse_call_messages(section: Section, kinds: tuple[str, ...], context: SectionContext) -> CallMessages | None:
    """The ``calls`` object of a message sink's section, or None when it has none."""
    value = section.get("calls")
    if value is None:
        return None
    path = section.key("calls")
    calls = Section(path, value)
    targets = tuple((kind, name) for kind in kinds if (name := calls.text(kind)))
    keep_hours = calls.number("keep_hours", 48.0, 1.0, 24.0 * 366)
    calls.done()
    if not targets:
        raise ConfigError(path, f"say where call messages go: {' and/or '.join(repr(kind) for kind in kinds)}")
    if context.columns != "extended":
        raise ConfigError(path, 'call messages are made from the extended columns: set "columns": "extended" too')
    return CallMessages(targets, keep_hours)


def call_book(calls: CallMessages | None, name: str, batch: Any, config: Any) -> tuple[str, Any]:
    """The book's file for a message sink's lane (beside its spool), and its batch settings: one
    writer when it has a book (two would each miss the other's legs, as fs_cdr/calls.py says of a
    database's call table)."""
    if calls is None:
        return "", batch
    return os.path.join(config.spool_dir, name, "calls.sqlite"), replace(batch, workers=1)


class CallBook:
    """Call messages for a message sink (Redis, RabbitMQ: ``"calls": {...}`` in its section): the call
    columns of every final leg record the sink sent, kept in an SQLite file beside the sink's spool
    (``calls.sqlite``) for ``keep_s``, and for each batch the rows of the calls it touched, made by the
    same :class:`CallTable` code as a database's call table, from every leg of the call the book holds.

    So a call message is the call as all its legs sent so far make it, whatever order they came in
    and however often one was replayed; the last message of a call (a consumer keeps the latest per
    ``uuid``) carries its final values. A batch's legs are committed (fsynced) before its messages
    go out: a retried batch computes the same rows again. One writer per book (``workers`` 1).
    A leg is kept for ``keep_s`` from when the book took it (a call whose legs reach the sink further
    apart than that is made from the legs still kept)."""

    LEGS = "legs"

    @classmethod
    def for_sink(cls, path: str, calls: Optional[CallMessages]) -> Optional["CallBook"]:
        """A message sink's book: at ``path`` (:func:`call_book`) when its section has ``calls``."""
        return cls(path, calls.keep_hours * 3600) if calls is not None and path else None

    def __init__(self, path: str, keep_s: float = 2 * 86400.0) -> None:
        from .sinks.sqlite import SQLite

        self.path = path
        self.keep_s = keep_s
        dialect = SQLite()
        self.table = CallTable(dialect, "", self.LEGS)
        self._upsert = dialect.upsert(self.LEGS, (*LEG_NAMES, "kept_at"))
        self._connection: Any = None
        self._expired_at = 0.0

    def open(self) -> None:
        if self._connection is not None:
            return
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        connection = sqlite3.connect(self.path, timeout=10.0, check_same_thread=False)
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=FULL")
            columns = ", ".join(f'"{name}"' + (" TEXT PRIMARY KEY" if name == "uuid" else "") for name in LEG_NAMES)
            # kept_at: when the book took the leg (a leg replayed days late is kept from then on)
            connection.execute(f"CREATE TABLE IF NOT EXISTS {self.LEGS} ({columns}, kept_at INTEGER)")
            connection.execute(f"CREATE INDEX IF NOT EXISTS {self.LEGS}_call_key ON {self.LEGS} (call_key)")
            connection.execute(f"CREATE INDEX IF NOT EXISTS {self.LEGS}_kept ON {self.LEGS} (kept_at)")
            connection.commit()
        except Exception:
            connection.close()
            raise
        self._connection = connection

    def add(self, legs: Sequence[Mapping[str, Any]], now: float | None = None) -> list[dict[str, Value]]:
        """Keep these final legs (records or their JSON documents decoded); the rows of every call
        they touch. A book that cannot be read or written (its disk) raises ``RetriableError``, so the
        sink's batch is retried whole, and leaves nothing half kept."""
        final = [leg for leg in legs if leg.get("call_state") == "completed" and leg.get("call_key")]
        if not final:
            return []
        try:
            return self._add(final, time.time() if now is None else now)
        except Exception as error:  # sqlite3.Error, OSError: the book's disk (and whatever else the batch meets)
            raise RetriableError(f"call book {self.path}: {type(error).__name__}: {error}") from error

    def _add(self, final: Sequence[Mapping[str, Any]], now: float) -> list[dict[str, Value]]:
        self.open()
        connection = self._connection
        try:
            cursor = connection.cursor()
            cursor.executemany(self._upsert, [(*(leg.get(name) for name in LEG_NAMES), int(now)) for leg in final])
            rows = self.table.refresh(cursor, final, write=False)
            if now - self._expired_at > 3600:
                cursor.execute(f"DELETE FROM {self.LEGS} WHERE kept_at < ?", (int(now - self.keep_s),))
                self._expired_at = now
            connection.commit()
        except Exception:
            connection.rollback()
            raise
        return rows

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()
