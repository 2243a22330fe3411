"""The record builder: one channel's hangup event in, one call detail record out.

A record is a plain ``dict`` of column name to value (``str``, ``int``, ``float`` or ``None``), with
``details`` already serialized to JSON text so that every sink shares one serialization. It is built
once on the source thread and handed, unchanged, to every sink.

Every value comes from the network, so the builder guarantees what each sink relies on, the same way
for every sink (docs/hostile-input.md lists these changes; each is logged, at most once per 10 s per
kind and column, with a count of the ones in between):

- text is storable everywhere: NUL and lone surrogates become U+FFFD (PostgreSQL text cannot hold
  NUL; no driver encodes a lone surrogate);
- standard text columns fit their column: cut to ``TEXT_LIMIT`` / ``SHORT_LIMIT`` characters;
- integers fit a signed 64-bit column, floats are finite;
- secrets are masked: variables named like ``secret_variables`` are ``***`` in ``details`` and in
  ``fields``, and so is the value of ``name=value`` inside any value when ``name`` is one of them
  (dial strings such as ``{sip_auth_password=...}sofia/...``).
"""

from __future__ import annotations

import datetime
import fnmatch
import importlib
import logging
import operator
import re
import sys
from typing import Any, Optional, Union

from .channel import (
    UNSTORABLE,
    VARIABLE_PREFIX,
    Headers,
    Notices,
    as_text,
    clean_text,
    dumpb,
    dumpb_line,
    dumps,
    header,
    loads,
    shown,
    variable,
)
from .config import CdrConfig
from .fields import FieldSpec, Value, to_number
from .outcome import EXTENDED_COLUMNS, leg_columns
from .schema import SHORT_LIMIT, STANDARD_COLUMNS, TEXT_LIMIT

_hangup: Any
_Fragment: Any
try:  # the compiled fast path (setup.py); without it every event is decoded in Python
    _hangup = importlib.import_module("fs_cdr._hangup")
except ImportError:  # pragma: no cover - installed without a C compiler
    _hangup = None

try:  # pre-made JSON that orjson copies in as it is (record_json); without orjson, the splice
    from orjson import Fragment as _Fragment
except ImportError:  # pragma: no cover - Debian's python3 without orjson
    _Fragment = None

log = logging.getLogger("fs_cdr.record")

CallRecord = dict[str, Value]
_NOT_VARIABLE = object()

_TRUE = frozenset(("true", "yes", "on", "1", "t", "y", "enabled", "active", "allow"))
_KINDS = {column.name: column.kind for column in STANDARD_COLUMNS}
#: The longest text each bounded standard (or extended) column holds (the rest, fields and details,
#: are unbounded).
_LIMITS = {
    column.name: TEXT_LIMIT if column.kind == "text" else SHORT_LIMIT
    for column in STANDARD_COLUMNS + EXTENDED_COLUMNS
    if column.kind in ("text", "short", "key")
}
_INT64_MIN, _INT64_END = -(2**63), 2**63
#: ``name=value`` inside a value (dial strings, SIP parameters, URL queries); a quoted value runs to
#: its closing quote, any other to the next separator.
_ASSIGNMENT = re.compile(r"""([A-Za-z0-9_.\-]+)=('[^']*'?|"[^"]*"?|[^,;}\]>|&\s'"]*)""")
MASK = "***"
#: At most one warning per kind of change and column in this many seconds.
NOTICE_INTERVAL_S = 10.0


def compiled_split() -> bool:
    """Whether the compiled fast path (fs_cdr._hangup) is here."""
    return _hangup is not None


def is_true(value: Optional[str]) -> bool:
    """FreeSWITCH's ``switch_true``: the spellings it accepts as true."""
    return value is not None and value.strip().lower() in _TRUE


def _int64(value: Optional[int]) -> Optional[int]:
    return value if value is None or _INT64_MIN <= value < _INT64_END else None


def _seconds(headers: Headers, microseconds_header: str) -> Optional[int]:
    micro = to_number(header(headers, microseconds_header))
    return micro // 1_000_000 if isinstance(micro, int) else None


def _epoch(headers: Headers, name: str, microseconds_header: str) -> Optional[int]:
    """A ``*_epoch`` variable, else the caller profile's microsecond time header."""
    seconds = to_number(variable(headers, name))
    return seconds if isinstance(seconds, int) else _seconds(headers, microseconds_header)


#: The latest time a stamp column takes (SQL Server's, MySQL's and Oracle's datetimes end with 9999).
_STAMP_END_US = 253_402_300_800_000_000
_EPOCH = datetime.datetime(1970, 1, 1)


def _micro(headers: Headers, name: str, microseconds_header: str, seconds: Optional[int]) -> Optional[int]:
    """A ``*_uepoch`` variable (microseconds), else the caller profile's microsecond header, else the
    record's whole seconds; ``None`` for none of them or 0 (FreeSWITCH's "never": answer_uepoch of
    an unanswered leg)."""
    micro = to_number(variable(headers, name))
    if not isinstance(micro, int):
        micro = to_number(header(headers, microseconds_header))
        if not isinstance(micro, int):
            micro = seconds * 1_000_000 if isinstance(seconds, int) else None
    return micro if micro and 0 < micro < _STAMP_END_US else None


_MINUTES: dict[int, str] = {}


def stamp(micro: Optional[int]) -> Optional[str]:
    """Unix microseconds as the UTC date and time, to the millisecond, that every SQL dialect's datetime
    column takes as text: ``2026-12-03 09:51:15.123``. The date and minute are made once a minute
    (datetime's own formatting costs more than the rest of a record's columns, three stamps a
    record, on the source thread)."""
    if micro is None:
        return None
    minute, milliseconds = divmod(micro // 1000, 60_000)
    head = _MINUTES.get(minute)
    if head is None:
        if len(_MINUTES) >= 4096:
            _MINUTES.clear()
        head = _MINUTES[minute] = (_EPOCH + datetime.timedelta(minutes=minute)).isoformat(" ", "minutes") + ":"
    return f"{head}{milliseconds // 1000:02d}.{milliseconds % 1000:03d}"


def times(headers: Headers, record: CallRecord, overridden: frozenset[str] = frozenset()) -> None:
    """The millisecond columns: ``billmsec`` and the UTC ``start_stamp``, ``answer_stamp`` and
    ``end_stamp``, from FreeSWITCH's ``*_uepoch`` variables (the same for the compiled path and
    Python's, so both add them here). A ``fields`` entry naming one of them (``overridden``) wins."""
    get = headers.get
    texts = (get("variable_start_uepoch"), get("variable_answer_uepoch"), get("variable_end_uepoch"),
             get("variable_billmsec"))
    if all(text.__class__ is str and text.isdigit() and text.isascii() for text in texts):
        # a hangup from FreeSWITCH: all four are there, as digits
        start, answer, end, billmsec = (int(text) for text in texts)  # type: ignore[arg-type]
        found = {"billmsec": _int64(billmsec), "start_stamp": stamp(start if 0 < start < _STAMP_END_US else None),
                 "answer_stamp": stamp(answer if 0 < answer < _STAMP_END_US else None),
                 "end_stamp": stamp(end if 0 < end < _STAMP_END_US else None)}
        if overridden:
            for name in overridden:
                found.pop(name, None)
        record.update(found)
        return
    started = _micro(headers, "start_uepoch", "Caller-Channel-Created-Time", _int_or_none(record.get("start_epoch")))
    answered = _micro(headers, "answer_uepoch", "Caller-Channel-Answered-Time",
                      _int_or_none(record.get("answer_epoch")))
    ended = _micro(headers, "end_uepoch", "Caller-Channel-Hangup-Time", None)
    if ended is None:
        ended = _micro(headers, "end_uepoch", "Event-Date-Timestamp", _int_or_none(record.get("end_epoch")))
    measured = to_number(variable(headers, "billmsec"))
    billed = measured if isinstance(measured, int) else (
        (ended - answered) // 1000 if ended and answered and ended >= answered else 0)
    found = {"billmsec": _int64(billed), "start_stamp": stamp(started), "answer_stamp": stamp(answered),
             "end_stamp": stamp(ended)}
    if overridden:
        for name in overridden:
            found.pop(name, None)
    record.update(found)


def _int_or_none(value: Value) -> Optional[int]:
    return value if isinstance(value, int) else None


def _account(headers: Headers, b_leg: bool) -> Optional[str]:
    """The extension or line a leg belongs to: ``account`` when the dialplan set it, else the gateway
    a b-leg went out through, else the dialled user (b-leg) or the authenticated user (a-leg).
    FreeSWITCH copies ``dialed_user`` onto the caller's channel too, hence the order by leg; and a
    b-leg that dialled out itself (an agent's attended transfer: ``originated_legs``) has the last
    user it dialled there, so its own comes from ``presence_id`` (user@domain, set when it was
    dialled). ``b_leg``: dialled by the switch (an inbound leg that uuid_bridge later joined to
    another has an originator, but is the caller's own)."""
    found = variable(headers, "account") or variable(headers, "sip_gateway_name")
    if found:
        return found
    originated, presence = variable(headers, "originated_legs"), variable(headers, "presence_id")
    if b_leg and originated and presence and "@" in presence:
        return presence.partition("@")[0]
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


def _as_kind(value: Value, kind: str) -> Value:
    """A ``fields`` value for a standard column, in that column's type: a whole number (cut toward
    zero) in an integer column, text in a text column."""
    if kind == "int":
        if isinstance(value, str):
            value = to_number(value)
        if isinstance(value, float):
            value = int(value)
        return _int64(value) if isinstance(value, int) else None
    if isinstance(value, (int, float)):
        return str(value)
    return value


def _secret_hints(patterns: list[str]) -> Optional[tuple[str, ...]]:
    """What a value must contain (lowercased) before it is searched for ``secret=value``: the
    longest literal part of some pattern, before its first ``[`` (a class may hold ``*``, ``]``...).
    ``None`` (search every value with ``=``) when a pattern has no such part."""
    pieces = set()
    for pattern in patterns:
        literal = max(re.split(r"[*?]", pattern.split("[", 1)[0]), key=len)
        if not literal:
            return None
        pieces.add(literal)
    return tuple(sorted(pieces))


class _Probe(dict):
    """An event that notes every channel variable, and every other header, looked up in it."""

    def __init__(self, headers: dict[str, str]) -> None:
        super().__init__(headers)
        self.read: set[str] = set()
        self.headers_read: set[str] = set()

    def get(self, key: Any, default: Any = None) -> Any:
        if isinstance(key, str):
            if key.startswith(VARIABLE_PREFIX):
                self.read.add(key[len(VARIABLE_PREFIX):])
            else:
                self.headers_read.add(key)
        return super().get(key, default)


#: Headers the engine reads of a hangup besides what build() reads (see Engine._take and _record),
#: and what names an event that cannot be keyed (RecordBuilder._describe).
ENGINE_HEADERS = frozenset({
    "Event-Name", "Unique-ID", "Event-Sequence",
    "Channel-Call-UUID", "Channel-Name", "Caller-Caller-ID-Number", "Caller-Destination-Number",
    "Event-Date-Timestamp",
})


class RecordBuilder:
    """Turns hangup events into records for one configuration (built again on reload)."""

    def __init__(self, config: CdrConfig, compiled: bool = True) -> None:
        """``compiled``: use fs_cdr._hangup where it is built (False: the Python reference, for tests)."""
        self.config = config
        self.fields = config.fields
        patterns = [pattern.lower() for pattern in config.secret_variables]
        self._secret = re.compile("|".join(fnmatch.translate(pattern) for pattern in patterns)) if patterns else None
        self._hints = _secret_hints(patterns) if patterns else None
        self._secret_names: dict[str, bool] = {}
        self._detail_names: dict[str, Any] = {}
        self._plans: dict[tuple[str, ...], Any] = {}
        #: The compiled split's plans, by the hash of a header layout (see _split_plan).
        self._split_plans: dict[int, tuple[bytes, Optional[bytes], Optional[tuple[str, ...]]]] = {}
        self._split_hints = self._ascii_hints()
        #: Per ``fields`` entry: (column, its standard column's kind or None, the spec, and for a plain
        #: ``column:variable`` entry the variable's key, its name and whether it is a secret).
        self._field_plan: tuple[tuple[str, Optional[str], FieldSpec, Optional[str], Optional[str], bool], ...] = tuple(
            (spec.column, _KINDS.get(spec.column), spec, VARIABLE_PREFIX + spec.plain, spec.plain,
             self.is_secret(spec.plain)) if spec.plain is not None
            else (spec.column, _KINDS.get(spec.column), spec, None, None, False)
            for spec in self.fields
        )
        #: The millisecond columns a ``fields`` entry names, which times() then leaves alone.
        self._overridden = frozenset(spec.column for spec in self.fields) & frozenset(
            ("billmsec", "start_stamp", "answer_stamp", "end_stamp"))
        #: What fs_cdr._hangup.columns needs to do _columns' work in C (None: _columns does it), and the
        #: template fields it leaves to Python.
        self._compiled = self._columns_plan() if compiled and hasattr(_hangup, "columns") else None
        #: "columns": "extended": fs_cdr/outcome.py's columns, but those a ``fields`` entry names
        self._extended = config.extended
        self._field_columns = frozenset(spec.column for spec in self.fields)
        #: Records whose columns fs_cdr._hangup built (the rest: _columns).
        self.built_in_c = 0
        self._templates = tuple((column, kind, spec) for column, kind, spec, key, _, _ in self._field_plan
                                if key is None)
        #: The channel variables and the other headers build() reads: the split makes Python strings
        #: of these alone (a hangup has ~100 other headers and ~200 variables; details are text).
        self.reads, self.headers_read = self._read_variables()
        self.notices = Notices(log, NOTICE_INTERVAL_S)
        #: Values cut to their column, values with characters replaced by U+FFFD, secrets masked.
        self.truncated = 0
        self.replaced = 0
        self.masked = 0
        for spec in self.fields:
            for name in spec.variables:
                if self.is_secret(name):
                    log.warning("fields entry %r names %s, a secret variable: its value is stored as %s",
                                spec.source, name, MASK)

    def is_secret(self, name: str) -> bool:
        """Whether a variable of this name holds a credential (``secret_variables``)."""
        known = self._secret_names.get(name)
        if known is None:
            known = self._secret is not None and self._secret.match(name.lower()) is not None
            if len(self._secret_names) >= 4096:  # variable names are the channel's to choose
                self._secret_names.clear()
            self._secret_names[name] = known
        return known

    def mask_assignments(self, text: str) -> str:
        """``text`` with the value of each ``secret=value`` inside it replaced by ``***``."""
        if "=" not in text or self._secret is None:
            return text
        hints = self._hints
        if hints is not None:
            lowered = text.lower()
            for hint in hints:
                if hint in lowered:
                    break
            else:
                return text
        return _ASSIGNMENT.sub(self._mask_assignment, text)

    def _mask_assignment(self, match: "re.Match[str]") -> str:
        if self.is_secret(match.group(1)):
            return f"{match.group(1)}={MASK}"
        return match.group(0)

    def split(self, text: Union[str, bytes]) -> Optional[tuple[Headers, Optional[str]]]:
        """The compiled fast path for a serialized hangup: the headers :meth:`build` and the engine
        read (``reads``, ``headers_read``) and ``details`` as JSON text, equal to
        what decoding the whole event and :meth:`build` give. ``None``: decode the event in Python
        (no compiled module, or an event it leaves to Python: see fs_cdr/_hangup.c)."""
        if _hangup is None:
            return None
        plans, hints, details = self._split_plans, self._split_hints, self.config.details
        found = _hangup.split(text, plans, hints, details)
        if found is not None and found[0] is None:  # a header layout not seen before
            if len(plans) >= 256:  # layouts are FreeSWITCH's, but bounded all the same
                plans.clear()
            plans[found[2]] = self._split_plan(found[1])
            found = _hangup.split(text, plans, hints, details)
        if found is None or found[0] is None:
            return None
        return found[0], found[2]

    def _split_plan(self, layout: bytes) -> tuple[bytes, Optional[bytes], Optional[tuple[str, ...]]]:
        """What the split needs of a header layout (each key after a '"'): a flag byte per header (1:
        a secret variable, 2: read by build() or the engine) and the keys as str, made once. No flags
        (the Python path) when a variable's name repeats: JSON's last-wins would reorder ``details``."""
        keys = layout.decode("utf-8").split('"')[1:]
        names = [key[len(VARIABLE_PREFIX):] for key in keys if key.startswith(VARIABLE_PREFIX)]
        if len(set(names)) != len(names):
            return layout, None, None
        reads, headers_read, flags = self.reads, self.headers_read, bytearray()
        for key in keys:
            if key.startswith(VARIABLE_PREFIX):
                name = key[len(VARIABLE_PREFIX):]
                flags.append((1 if self.is_secret(name) else 0) | (2 if name in reads else 0))
            else:
                flags.append(2 if key in headers_read else 0)
        return layout, bytes(flags), tuple(sys.intern(key) for key in keys)

    def _ascii_hints(self) -> Optional[tuple[bytes, ...]]:
        """The secret hints as the split takes them. Only an ASCII name can be masked inside a value
        (``_ASSIGNMENT``), so a hint that is not ASCII can never matter there."""
        if self._secret is None:
            return ()
        if self._hints is None:
            return None
        return tuple(hint.encode("ascii") for hint in self._hints if hint.isascii())

    def _read_variables(self) -> tuple[frozenset[str], frozenset[str]]:
        """Every channel variable, and every other header, :meth:`build` may read for this
        configuration, found by running its lookups on an event that has none (so every ``or``
        alternative is tried; a lookup that only happens once another found a value would be missed,
        so none is written that way); the other headers with those the engine reads (``ENGINE_HEADERS``)."""
        probe = _Probe({"Unique-ID": "probe"})
        wanted(probe, self.config.process_cdr, self.config.skip_variable)
        leg_of(probe)
        record, _, _ = self._columns(probe, "probe")
        times(probe, record)
        if self._extended:
            leg_columns(probe, "probe", None)
        # "uuid": read only when Unique-ID is missing
        return frozenset(probe.read | {"uuid"}), frozenset(probe.headers_read | ENGINE_HEADERS)

    def build(self, headers: Headers, details: Optional[str] = None) -> Optional[CallRecord]:
        """The record for one CHANNEL_HANGUP_COMPLETE (or an imported CDR), or ``None`` to skip it.
        ``details``: the JSON text :meth:`split` made with ``headers`` (which then lack most
        variables).

        A missing header is a NULL column, never an exception; missing times are logged. A channel
        without any uuid cannot be keyed and is refused with a ``ValueError`` naming what the event
        does say (call uuid, channel, numbers, time), which the caller logs.
        """
        uuid = header(headers, "Unique-ID") or variable(headers, "uuid")
        if not uuid:
            raise ValueError(f"event has no Unique-ID: cannot key a record ({self._describe(headers)})")
        if not wanted(headers, self.config.process_cdr, self.config.skip_variable):
            return None
        found = _hangup.columns(headers, uuid, self._compiled) \
            if self._compiled is not None and headers.__class__ is dict else None
        if found is None:
            record, start, end = self._columns(headers, uuid)
            self._finish(record)
        else:  # the same, in C; template fields are evaluated here
            record, start, end, masked, plain = found
            self.built_in_c += 1
            self.masked += masked
            if self._templates:
                lookup = self._lookup(headers)
                for column, kind, spec in self._templates:
                    value = spec.value(lookup)
                    record[column] = _as_kind(value, kind) if kind else value
                plain = False
            if not plain:
                self._finish(record)
        times(headers, record, self._overridden)
        if self._extended:
            self._extend(headers, record)
        if start is None or end is None:
            missing = " and ".join(name for name, value in (("start", start), ("end", end)) if value is None)
            self.notices.warn("times", "channel %s: the event has no %s time; stored NULL", shown(record["uuid"]),
                              missing)
        if self.config.details:
            record["details"] = details if details is not None else self._details(headers, record["uuid"])
        return record

    def _extend(self, headers: Headers, record: CallRecord) -> None:
        """The extended columns (fs_cdr/outcome.py), made storable like the standard ones."""
        originator = record.get("originator")
        extra = leg_columns(headers, str(record["uuid"]), originator if isinstance(originator, str) else None)
        if self._field_columns:
            for name in self._field_columns.intersection(extra):
                del extra[name]  # a fields entry names it: its value stands, as for a standard column
        extra["uuid"] = record["uuid"]  # already storable; _finish names the channel by it
        self._finish(extra)
        record.update(extra)

    def _columns(self, headers: Headers, uuid: str) -> tuple[CallRecord, Optional[int], Optional[int]]:
        """The standard columns and ``fields``, as found (not yet made storable); the start and end
        times found."""
        start = _epoch(headers, "start_epoch", "Caller-Channel-Created-Time")
        answer = _epoch(headers, "answer_epoch", "Caller-Channel-Answered-Time") or None
        end = _epoch(headers, "end_epoch", "Caller-Channel-Hangup-Time")
        if not end:
            end = _seconds(headers, "Event-Date-Timestamp")
        duration = to_number(variable(headers, "duration"))
        if not isinstance(duration, int):
            duration = _int64(end - start) if end and start else None
        billsec = to_number(variable(headers, "billsec"))
        if not isinstance(billsec, int):
            billsec = _int64(end - answer) if end and answer else 0
        originator = variable(headers, "originator")
        if not originator:
            # both looked up before either is tested: _read_variables finds what build() reads by
            # running it on an event with nothing in it, so a lookup must not wait on a value found
            other_type, other_leg = header(headers, "Other-Type"), header(headers, "Other-Leg-Unique-ID")
            if other_type == "originator":
                originator = other_leg
        record: CallRecord = {
            "uuid": uuid,
            "leg": "b" if originator else "a",
            "call_uuid": header(headers, "Channel-Call-UUID") or variable(headers, "call_uuid"),
            "direction": (direction := variable(headers, "direction") or header(headers, "Call-Direction")),
            "account": _account(headers, bool(originator) and direction != "inbound"),
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
        if self.fields:
            get, lookup = headers.get, None
            for column, kind, spec, key, name, secret in self._field_plan:
                if key is None:  # a template: FieldSpec.value does the work
                    if lookup is None:
                        lookup = self._lookup(headers)
                    value = spec.value(lookup)
                else:  # column:variable, what _lookup and FieldSpec.value do, without their calls
                    value = get(key)
                    if value is None and name is not None:
                        value = get(name)
                    if value is not None:
                        if secret:
                            self.masked += 1
                            value = MASK
                        elif value.__class__ is not str:
                            value = as_text(value)
                    if spec.numeric:
                        value = to_number(value)
                record[column] = _as_kind(value, kind) if kind else value
        return record, start, end

    def _columns_plan(self) -> tuple[Any, tuple[tuple[Any, ...], ...]]:
        """What fs_cdr._hangup.columns takes: ``to_number`` (for any number but plain digits) and per
        ``fields`` entry (column, kind: 0 not a standard column / 1 integer / 2 text, key and name of
        a plain entry's variable or None for a template, whether it is a secret, whether numeric)."""
        fields = tuple(
            (column, 0 if kind is None else 1 if kind == "int" else 2, key, name, secret, spec.numeric)
            for column, kind, spec, key, name, secret in self._field_plan
        )
        return to_number, fields

    def _describe(self, headers: Headers) -> str:
        """What identifies an event that cannot be keyed, for the log line that refuses it."""
        known = []
        for label, name in (
            ("event", "Event-Name"),
            ("call", "Channel-Call-UUID"),
            ("channel", "Channel-Name"),
            ("caller", "Caller-Caller-ID-Number"),
            ("destination", "Caller-Destination-Number"),
            ("at", "Event-Date-Timestamp"),
        ):
            value = header(headers, name)
            if value:
                known.append(f"{label} {shown(self.mask_assignments(value))}")
        return ", ".join(known) or "no identifying header"

    def _lookup(self, headers: Headers):  # noqa: ANN202 - a Lookup
        def lookup(name: str) -> Optional[str]:
            value = variable(headers, name)
            if value is not None and self.is_secret(name):
                self.masked += 1
                return MASK
            return value

        return lookup

    def _finish(self, record: CallRecord) -> None:
        """Make every text value storable and masked, and cut bounded columns to their size."""
        texts = [value for value in record.values() if type(value) is str]
        joined = "".join(texts)
        if joined.isascii() and "\x00" not in joined and "=" not in joined and \
                max(map(len, texts), default=0) <= SHORT_LIMIT:
            return  # the usual hangup: nothing to replace, mask or cut, found in a few C-speed passes
        uuid = self.mask_assignments(clean_text(str(record["uuid"])))  # as log lines show it
        limits = _LIMITS
        for name, value in record.items():
            if type(value) is not str:
                continue
            text = value
            if "\x00" in text or (not text.isascii() and UNSTORABLE.search(text) is not None):
                text = clean_text(text)
                self.replaced += 1
                self.notices.warn("replaced:" + name, "channel %s: %s held NUL or lone surrogates, stored as U+FFFD",
                                  shown(uuid), name)
            if "=" in text:
                masked = self.mask_assignments(text)
                if masked != text:
                    text = masked
                    self.masked += 1
            limit = limits.get(name)
            if limit is not None and len(text) > limit:
                self.truncated += 1
                self.notices.warn("truncated:" + name, "channel %s: %s was %d characters, stored the first %d",
                                  shown(uuid), name, len(text), limit)
                text = text[:limit]
            if text is not value:
                record[name] = text

    def _details(self, headers: Headers, uuid: Value) -> str:
        """Every channel variable as JSON text, secrets masked. Header names repeat from call to
        call, so what each one means (not a variable / a variable / a secret) is worked out once:
        this is the hot loop of the source thread (200 variables a hangup)."""
        found = self._details_fast(headers)
        if found is None:
            found = self._details_slow(headers)
        try:
            text = dumps(found)
        except (TypeError, ValueError):  # a lone surrogate: only a hand-made event holds one
            text = ""
        if not text or "\\u0000" in text:
            cleaned = {
                clean_text(name): clean_text(value) if isinstance(value, str)
                else [clean_text(item) for item in value] if isinstance(value, list) else value
                for name, value in found.items()
            }
            if cleaned != found:
                self.replaced += 1
                self.notices.warn("replaced:details", "channel %s: details held NUL or lone surrogates, stored as U+FFFD",
                                  shown(uuid))
            text = dumps(cleaned)
        return text

    def _details_fast(self, headers: Headers) -> Optional[dict[str, Any]]:
        """The common case in C-speed steps: events of one kind from one switch have the same headers
        in the same order, so the plan (which headers are variables, under what name, which are secret)
        is kept per header layout; values are fetched at once and searched for ``secret=`` in one
        joined string. ``None`` sends an unusual event (a non-text value, a hint of a secret inside a
        value) to the slow path."""
        layout = tuple(headers)
        plan = self._plans.get(layout)
        if plan is None:
            if len(self._plans) >= 256:  # layouts are FreeSWITCH's, but bounded all the same
                self._plans.clear()
            keys: list[str] = []
            found: list[str] = []
            hidden: list[str] = []
            for key in layout:
                meaning = self._meaning(key)
                if meaning is not _NOT_VARIABLE:
                    keys.append(key)
                    found.append(meaning[0])
                    if meaning[1]:
                        hidden.append(meaning[0])
            fetch = operator.itemgetter(*keys) if len(keys) > 1 else None
            plan = self._plans[layout] = (fetch, tuple(found), tuple(hidden))
        fetch, names, secrets = plan
        if fetch is None:
            return None
        values = fetch(headers)
        try:
            joined = "".join(values)
        except TypeError:  # a list or a number among the values
            return None
        if "=" in joined and self._secret is not None:
            hints = self._hints
            if hints is None:
                return None
            lowered = joined.lower()
            if any(hint in lowered for hint in hints):
                return None
        variables = dict(zip(names, values))
        for name in secrets:
            variables[name] = MASK
        return variables

    def _details_slow(self, headers: Headers) -> dict[str, Any]:
        known = self._detail_names
        if len(known) > 100_000:  # hostile, ever-new variable names must not grow it forever
            known.clear()
        found: dict[str, Any] = {}
        # locals: this loop runs ~250 times a hangup
        known_get, not_variable, mask, text_type = known.get, _NOT_VARIABLE, self.mask_assignments, str
        for key, value in headers.items():
            meaning = known_get(key)
            if meaning is None:
                meaning = known[key] = self._meaning(key)
            if meaning is not_variable:
                continue
            name, secret = meaning
            if value.__class__ is text_type and not secret:
                found[name] = mask(value) if "=" in value else value
                continue
            if secret:
                value = MASK
            elif isinstance(value, list):
                value = [self.mask_assignments(item) if isinstance(item, str) else as_text(item) for item in value]
            elif value is not None:
                value = as_text(value)
            found[name] = value
        return found

    def _meaning(self, key: Any) -> Any:
        if type(key) is not str or not key.startswith(VARIABLE_PREFIX):
            return _NOT_VARIABLE
        name = key[len(VARIABLE_PREFIX):]
        return (name, self.is_secret(name))


def record_json(record: CallRecord, newline: bool = False) -> bytes:
    """A record as one JSON document with ``details`` as a nested object: what Redis carries and
    what the spool stores. ``details`` is already JSON text, so it is spliced in, not escaped again
    (it is the builder's own JSON: no ``fields`` entry may name the ``details`` column).
    ``newline``: ending in one (a JSON-lines file's line), made in the same pass, so that a 9 KB
    document is not copied again to add one byte."""
    dump = dumpb_line if newline else dumpb
    details = record.get("details")
    if not isinstance(details, str):
        return dump(record)
    if _Fragment is not None:
        try:  # orjson copies the text in as it is: one pass, a third of the time of the splice below
            return dump(dict(record, details=_Fragment(details)))
        except TypeError:  # a lone surrogate in details (it came from bytes that were not UTF-8)
            pass
    head = dumpb({name: value for name, value in record.items() if name != "details"})
    return head[:-1] + b',"details":' + details.encode("utf-8", "surrogatepass") + (b"}\n" if newline else b"}")


def record_from_json(text: bytes) -> CallRecord:
    """The inverse of :func:`record_json`: ``details`` back to the same JSON text."""
    record = loads(text)
    details = record.get("details")
    if isinstance(details, (dict, list)):
        record["details"] = dumps(details)
    return record
