"""The columns of a CDR table: the seed's standard columns, then the configured ``fields``.

Each column has a *kind*; each SQL dialect maps kinds to its own types (``fs_cdr/sinks/<db>.py``).
The docs here are the README's "where each column comes from" table.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import CdrConfig

#: Longest text stored in a standard text column; longer values are cut (and logged) by the builder,
#: identically for every sink, so that a hostile caller name cannot make a strict database refuse a row.
TEXT_LIMIT = 255
SHORT_LIMIT = 64


@dataclass(frozen=True)
class Column:
    name: str
    #: key (the uuid), short (≤64), text (≤255), long (unbounded text), int, number, json, stamp (a UTC
    #: date and time to the millisecond, 'YYYY-MM-DD HH:MM:SS.mmm' in a record)
    kind: str
    doc: str = ""


STANDARD_COLUMNS: tuple[Column, ...] = (
    Column("uuid", "key", "Unique-ID: this channel's uuid, the table's primary key"),
    Column("leg", "short", "'b' when the channel has an originator (variable_originator), else 'a'"),
    Column("call_uuid", "short", "Channel-Call-UUID: shared by the legs of one call"),
    Column("direction", "short", "variable_direction (inbound: the caller called FreeSWITCH)"),
    Column("account", "text", "variable_account, else sip_gateway_name, else dialed_user (b-leg) / user_name (a-leg)"),
    Column("caller_id_name", "text", "Caller-Caller-ID-Name"),
    Column("caller_id_number", "text", "Caller-Caller-ID-Number"),
    Column("callee_id_number", "text", "Caller-Callee-ID-Number"),
    Column("destination_number", "text", "Caller-Destination-Number (the last dialplan destination)"),
    Column("context", "text", "Caller-Context"),
    Column("channel_name", "text", "Channel-Name, e.g. sofia/internal/1001@host"),
    Column("originator", "short", "variable_originator: the a-leg's uuid; NULL on an a-leg"),
    Column("bridge_uuid", "short", "variable_bridge_uuid, else last_bridge_to: the last party talked to"),
    Column("call_source", "text", "variable_call_source (dialplan, acd, queuedialer; set in the dialplan)"),
    Column("source_name", "text", "variable_source_name (calling extension, queue name)"),
    Column("source_number", "text", "variable_source_number (the original calling number)"),
    Column("dial_number", "text", "variable_dial_number (the number or extension dialled)"),
    Column("cti_line_group_name", "text", "variable_cti_line_group_name (the line group used)"),
    Column("start_epoch", "int", "variable_start_epoch: channel created, Unix seconds"),
    Column("answer_epoch", "int", "variable_answer_epoch; NULL when the leg was never answered"),
    Column("end_epoch", "int", "variable_end_epoch: hangup, Unix seconds"),
    Column("duration", "int", "variable_duration: seconds from creation to hangup"),
    Column("billsec", "int", "variable_billsec: seconds from answer to hangup, 0 if unanswered"),
    Column("billmsec", "int", "variable_billmsec: milliseconds from answer to hangup, 0 if unanswered"),
    Column("start_stamp", "stamp", "variable_start_uepoch as a UTC date and time, to the millisecond"),
    Column("answer_stamp", "stamp", "variable_answer_uepoch as a UTC date and time; NULL when never answered"),
    Column("end_stamp", "stamp", "variable_end_uepoch as a UTC date and time, to the millisecond"),
    Column("hangup_cause", "short", "variable_hangup_cause, e.g. NORMAL_CLEARING, NO_ANSWER"),
    Column("switchname", "text", "FreeSWITCH-Switchname: which FreeSWITCH wrote the record"),
    Column("core_uuid", "short", "Core-UUID: that FreeSWITCH process's run"),
    Column("call_state", "short", "where the call is: completed (the hangup record), or in real-time mode "
                                  "created, ringing, early_media, answered, bridged, unbridged, held, unheld, hangup"),
    Column("event_seq", "int", "Event-Sequence of the event that wrote the row: an older update never "
                               "overwrites a newer one, and nothing overwrites a completed row but a completed one"),
)
#: Standard columns added after the first release. A table created before them (by ``fs-cdr schema``
#: of that release) lacks them and is still written to, without them, until ``fs-cdr schema --apply``
#: adds them.
ADDED_COLUMNS = frozenset({"billmsec", "start_stamp", "answer_stamp", "end_stamp"})
DETAILS = Column("details", "json", "every channel variable as a JSON object (details: true)")
STANDARD_NAMES = frozenset(column.name for column in STANDARD_COLUMNS) | {DETAILS.name}


def table_columns(config: CdrConfig) -> tuple[Column, ...]:
    """All columns a table needs for this configuration, in table order.

    A ``fields`` entry naming a standard column (the seed's own example has ``number:billsec``)
    replaces that column's source but keeps its type.
    """
    columns = list(STANDARD_COLUMNS)
    if config.details:
        columns.append(DETAILS)
    extended: frozenset[str] = frozenset()
    if config.extended:
        from .outcome import EXTENDED_COLUMNS, EXTENDED_NAMES

        columns.extend(EXTENDED_COLUMNS)
        extended = EXTENDED_NAMES
    for spec in config.fields:
        if spec.column not in STANDARD_NAMES and spec.column not in extended:
            columns.append(Column(spec.column, "number" if spec.numeric else "long", f"fields: {spec.source}"))
    return tuple(columns)


@dataclass(frozen=True)
class Index:
    """A secondary index every new table gets, for the queries operators run on a growing table.

    Chosen by measurement (bench/growth.py, docs/performance.md): each index costs every insert, and
    one whose key is random (a uuid, a phone number) costs a random page read per row once the
    table outgrows the server's memory; most are written near their end (by time) or in few
    places (per account); ``call`` (shared by the legs of a call) and ``destination`` are not."""

    #: the index is named ``<table>_<suffix>`` (PostgreSQL, SQLite and Oracle name indexes per schema)
    suffix: str
    columns: tuple[str, ...]
    queries: str
    #: columns searched by prefix (``LIKE '0044%'``): PostgreSQL indexes them with varchar_pattern_ops,
    #: without which a database whose collation is not C cannot use the index for such a search
    prefixed: tuple[str, ...] = ()

    def name(self, table: str) -> str:
        return f"{table}_{self.suffix}"[:60]


INDEXES: tuple[Index, ...] = (
    Index("account_start", ("account", "start_stamp"), "(a) one extension's or account's calls in a time range"),
    Index("call_uuid", ("call_uuid",), "(b) all legs of a call (a b-leg's call_uuid is its originator, the a-leg)"),
    # billsec: the usual report over such calls (count, minutes) is read from the index alone
    Index("destination", ("destination_number", "start_stamp", "billsec"), "(c) calls to a destination prefix in a month",
          prefixed=("destination_number",)),
    Index("start", ("start_stamp", "hangup_cause"), "(d) counts per day and hangup_cause in a month, (e) the latest calls"),
)
