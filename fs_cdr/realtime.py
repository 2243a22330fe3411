"""Real-time mode (``"real": true``): a row per live channel, updated as the call moves.

Each channel event below becomes an *update*: the same record the builder makes, from what the event
knows so far, with ``call_state`` saying where the call is and without ``details`` (the hangup record
has them). CHANNEL_HANGUP_COMPLETE still writes the final record, identical to hangup-only mode.
Updates and the final record of one uuid go through the same writer thread, in FreeSWITCH's order;
every upsert carries ``event_seq`` and the table keeps the newest (see ``Dialect.fresher``), so a
replayed or late update never rolls a row back, and a completed row is never overwritten by an update.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Optional

from .channel import Headers, clean_text, header
from .schema import SHORT_LIMIT
from .config import CdrConfig
from .fields import to_number
from .record import CallRecord, RecordBuilder

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
    "cti_line_group_name", "start_epoch", "answer_epoch", "process_cdr",
)


def sequence(headers: Headers) -> Optional[int]:
    value = to_number(header(headers, "Event-Sequence"))
    return value if isinstance(value, int) else None


def header_names(config: CdrConfig) -> tuple[str, ...]:
    """Every header an update for this configuration may read (fields' variables included)."""
    names = set(VARIABLES) | {config.skip_variable}
    for spec in config.fields:
        names.update(spec.variables)
    return HEADERS + tuple(sorted("variable_" + name for name in names if name))


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
            record["hangup_cause"] = None
        if name == "CHANNEL_BRIDGE" and not record.get("bridge_uuid"):
            other = header(headers, "Other-Leg-Unique-ID")
            # the same treatment the builder gives every short column
            record["bridge_uuid"] = clean_text(other)[:SHORT_LIMIT] if other else None
        return record
