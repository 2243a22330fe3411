"""The record builder: one channel's hangup event in, one call detail record out.

A record is a plain ``dict`` of column name to value (``str``, ``int``, ``float`` or ``None``), with
``details`` already serialized to JSON text so that every sink shares one serialization. It is built
once on the source thread and handed, unchanged, to every sink.
"""

from __future__ import annotations

import fnmatch
import logging
import re
from typing import Any, Optional

from .channel import VARIABLE_PREFIX, Headers, dumpb, dumps, header, loads, variable
from .config import CdrConfig
from .fields import Value, to_number
from .schema import SHORT_LIMIT, STANDARD_COLUMNS, TEXT_LIMIT

log = logging.getLogger("fs_cdr.record")

CallRecord = dict[str, Value]
_NOT_VARIABLE = object()

_TRUE = frozenset(("true", "yes", "on", "1", "t", "y", "enabled", "active", "allow"))
_TEXT_COLUMNS = tuple(column.name for column in STANDARD_COLUMNS if column.kind == "text")
_SHORT_COLUMNS = tuple(column.name for column in STANDARD_COLUMNS if column.kind in ("short", "key"))


def is_true(value: Optional[str]) -> bool:
    """FreeSWITCH's ``switch_true``: the spellings it accepts as true."""
    return value is not None and value.strip().lower() in _TRUE


def _seconds(headers: Headers, microseconds_header: str) -> Optional[int]:
    micro = to_number(header(headers, microseconds_header))
    return micro // 1_000_000 if isinstance(micro, int) else None


def _epoch(headers: Headers, name: str, microseconds_header: str) -> Optional[int]:
    """A ``*_epoch`` variable, else the caller profile's microsecond time header."""
    seconds = to_number(variable(headers, name))
    return seconds if isinstance(seconds, int) else _seconds(headers, microseconds_header)


def _account(headers: Headers, b_leg: bool) -> Optional[str]:
    """The extension or line a leg belongs to: ``account`` when the dialplan set it, else the gateway
    a b-leg went out through, else the dialled user (b-leg) or the authenticated user (a-leg).
    FreeSWITCH copies ``dialed_user`` onto the caller's channel too, hence the order by leg."""
    found = variable(headers, "account") or variable(headers, "sip_gateway_name")
    if found:
        return found
    first, second = ("dialed_user", "user_name") if b_leg else ("user_name", "dialed_user")
    return variable(headers, first) or variable(headers, second)


def leg_of(headers: Headers) -> str:
    """'b' when the channel has an originator (FreeSWITCH's own rule since FS-8044), else 'a'."""
    if variable(headers, "originator") or header(headers, "Other-Type") == "originator":
        return "b"
    return "a"


def wanted(headers: Headers, default_process_cdr: str, skip_variable: str) -> bool:
    """Whether this channel gets a record: ``process_cdr`` (false, a_only, b_only) and the skip variable."""
    if skip_variable and is_true(variable(headers, skip_variable)):
        return False
    mode = (variable(headers, "process_cdr") or default_process_cdr).strip().lower()
    if mode == "a_only":
        return leg_of(headers) == "a"
    if mode == "b_only":
        return leg_of(headers) == "b"
    return mode not in ("false", "no", "off", "0")


class RecordBuilder:
    """Turns hangup events into records for one configuration (built again on reload)."""

    def __init__(self, config: CdrConfig) -> None:
        self.config = config
        self.fields = config.fields
        self._secret = (
            re.compile("|".join(fnmatch.translate(pattern.lower()) for pattern in config.secret_variables))
            if config.secret_variables
            else None
        )
        self.truncated = 0
        self._detail_names: dict[str, Any] = {}

    def build(self, headers: Headers) -> Optional[CallRecord]:
        """The record for one CHANNEL_HANGUP_COMPLETE (or an imported CDR), or ``None`` to skip it.

        A missing header is a NULL column, never an exception. A channel without any uuid cannot
        be keyed and is refused with a ``ValueError`` the caller logs.
        """
        uuid = header(headers, "Unique-ID") or variable(headers, "uuid")
        if not uuid:
            raise ValueError("event has no Unique-ID: cannot key a record")
        if not wanted(headers, self.config.process_cdr, self.config.skip_variable):
            return None
        start = _epoch(headers, "start_epoch", "Caller-Channel-Created-Time")
        answer = _epoch(headers, "answer_epoch", "Caller-Channel-Answered-Time") or None
        end = _epoch(headers, "end_epoch", "Caller-Channel-Hangup-Time")
        if not end:
            end = _seconds(headers, "Event-Date-Timestamp")
        duration = to_number(variable(headers, "duration"))
        if not isinstance(duration, int):
            duration = end - start if end and start else None
        billsec = to_number(variable(headers, "billsec"))
        if not isinstance(billsec, int):
            billsec = end - answer if end and answer else 0
        originator = variable(headers, "originator")
        if not originator and header(headers, "Other-Type") == "originator":
            originator = header(headers, "Other-Leg-Unique-ID")
        record: CallRecord = {
            "uuid": uuid,
            "leg": "b" if originator else "a",
            "call_uuid": header(headers, "Channel-Call-UUID") or variable(headers, "call_uuid"),
            "direction": variable(headers, "direction") or header(headers, "Call-Direction"),
            "account": _account(headers, bool(originator)),
            "caller_id_name": header(headers, "Caller-Caller-ID-Name") or variable(headers, "caller_id_name"),
            "caller_id_number": header(headers, "Caller-Caller-ID-Number")
            or variable(headers, "caller_id_number"),
            "callee_id_number": header(headers, "Caller-Callee-ID-Number")
            or variable(headers, "callee_id_number"),
            "destination_number": header(headers, "Caller-Destination-Number")
            or variable(headers, "destination_number"),
            "context": header(headers, "Caller-Context") or variable(headers, "context"),
            "channel_name": header(headers, "Channel-Name") or variable(headers, "channel_name"),
            "originator": originator or None,
            "bridge_uuid": variable(headers, "bridge_uuid") or variable(headers, "last_bridge_to"),
            "call_source": variable(headers, "call_source"),
            "source_name": variable(headers, "source_name"),
            "source_number": variable(headers, "source_number"),
            "dial_number": variable(headers, "dial_number"),
            "cti_line_group_name": variable(headers, "cti_line_group_name"),
            "start_epoch": start,
            "answer_epoch": answer,
            "end_epoch": end,
            "duration": duration,
            "billsec": billsec,
            "hangup_cause": variable(headers, "hangup_cause") or header(headers, "Hangup-Cause"),
            "switchname": header(headers, "FreeSWITCH-Switchname") or header(headers, "FreeSWITCH-Hostname"),
            "core_uuid": header(headers, "Core-UUID"),
        }
        self._limit(record, _TEXT_COLUMNS, TEXT_LIMIT)
        self._limit(record, _SHORT_COLUMNS, SHORT_LIMIT)
        if self.config.details:
            record["details"] = dumps(self._details(headers))
        if self.fields:
            lookup = lambda name: variable(headers, name)  # noqa: E731
            for spec in self.fields:
                record[spec.column] = spec.value(lookup)
        return record

    def _limit(self, record: CallRecord, columns: tuple[str, ...], limit: int) -> None:
        for name in columns:
            value = record[name]
            if isinstance(value, str) and len(value) > limit:
                record[name] = value[:limit]
                self.truncated += 1
                log.warning(
                    "channel %s: %s was %d characters, stored the first %d",
                    str(record["uuid"])[:64], name, len(value), limit,
                )

    def _details(self, headers: Headers) -> dict[str, Any]:
        """Every channel variable, prefix stripped, secrets masked. Header names repeat from call to
        call, so what each one means (not a variable / a variable / a secret) is worked out once:
        this is the hot loop of the source thread (200 variables a hangup)."""
        known = self._detail_names
        if len(known) > 100_000:  # hostile, ever-new variable names must not grow it forever
            known.clear()
        found: dict[str, Any] = {}
        for key, value in headers.items():
            meaning = known.get(key)
            if meaning is None:
                meaning = known[key] = self._meaning(key)
            if meaning is not _NOT_VARIABLE:
                name, secret = meaning
                found[name] = "***" if secret else value
        return found

    def _meaning(self, key: str) -> Any:
        if not key.startswith(VARIABLE_PREFIX):
            return _NOT_VARIABLE
        name = key[len(VARIABLE_PREFIX):]
        return (name, bool(self._secret is not None and self._secret.match(name.lower())))


def record_json(record: CallRecord) -> bytes:
    """A record as one JSON document with ``details`` as a nested object: what Redis carries and
    what the spool stores. ``details`` is already JSON text, so it is spliced in, not escaped again."""
    details = record.get("details")
    if not isinstance(details, str):
        return dumpb(record)
    head = dumpb({name: value for name, value in record.items() if name != "details"})
    return head[:-1] + b',"details":' + details.encode("utf-8", "surrogatepass") + b"}"


def record_from_json(text: bytes) -> CallRecord:
    """The inverse of :func:`record_json`: ``details`` back to the same JSON text."""
    record = loads(text)
    details = record.get("details")
    if isinstance(details, (dict, list)):
        record["details"] = dumps(details)
    return record
