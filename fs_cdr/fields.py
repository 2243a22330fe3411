"""The ``fields`` grammar of cdr.json: which channel variables become which columns.

Each entry of ``cdr.fields`` is one of::

    rtp_last_audio_codec_string        column and variable share the name
    number:billsec                     stored as a number (empty or non-numeric -> NULL)
    jsipid:sip_h_X-jssipid             column ``jsipid`` from variable ``sip_h_X-jssipid``
    caller:${caller_id_name}${caller_id_number}   a template of variables (and literal text)
    number:talk:billsec                the type prefix combined with a column name

Column names end up in SQL text, so they must match :data:`IDENTIFIER` (checked when cdr.json is
loaded; nothing a channel carries can add or rename a column); variable names never reach SQL
(values are always bound parameters) and only need to match :data:`VARIABLE`. A field may replace
the source of a standard column (the seed's ``number:billsec``) but not ``uuid`` (the key) or
``details`` (JSON the record builder writes), nor take a name PostgreSQL keeps for system columns.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Union

from .errors import ConfigError

#: What a table or column name may look like. Deliberately narrower than any SQL dialect allows,
#: so that one name is valid, unquoted-safe and the same on every database fs_cdr writes to.
IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}\Z")
#: Channel variable names: FreeSWITCH allows almost anything; we refuse only what would make the
#: grammar ambiguous (``:``, ``$``, braces) or invisible (whitespace, control characters).
VARIABLE = re.compile(r"^[A-Za-z0-9_.\-]{1,128}\Z")
_TEMPLATE_PART = re.compile(r"\$\{([^{}]*)\}")
#: Columns no ``fields`` entry may name: the record's key, the builder's own JSON, and PostgreSQL's
#: system columns (``CREATE TABLE`` refuses them there; one name must work on every database).
RESERVED_COLUMNS = {
    "uuid": "the record's key (the channel's Unique-ID)",
    "details": "written by \"details\": true",
    "call_state": "where the call is, written by fs_cdr (real-time mode)",
    "event_seq": "the ordering of real-time updates, written by fs_cdr",
    "tableoid": "a PostgreSQL system column",
    "xmin": "a PostgreSQL system column",
    "xmax": "a PostgreSQL system column",
    "cmin": "a PostgreSQL system column",
    "cmax": "a PostgreSQL system column",
    "ctid": "a PostgreSQL system column",
}
#: What a ``number:`` value must look like: plain ASCII decimal, as FreeSWITCH writes numbers.
_INTEGER = re.compile(r"[+-]?[0-9]+\Z")
_REAL = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\Z")

NUMBER_PREFIX = "number"

Value = Union[str, int, float, None]
Lookup = Callable[[str], Optional[str]]


def to_number(text: Optional[str]) -> Union[int, float, None]:
    """A channel variable as a number for a ``number:`` column; anything unusable is ``None``.

    FreeSWITCH's own modules insert ``''`` into integer columns and the row fails; an empty or
    non-numeric value here is NULL instead, so one odd variable never costs the whole record.
    Accepted (after stripping whitespace, at most 40 characters): an ASCII decimal integer within a
    signed 64-bit column (``int``), or an ASCII decimal with a fraction or exponent that is finite
    (``float``). Python's own extras (``1_000``, ``inf``, non-ASCII digits) are NULL like any other text.
    """
    if not isinstance(text, str):
        return None
    if text.isdigit() and text.isascii() and len(text) < 19:  # the common case, at C speed
        return int(text)
    text = text.strip()
    if not text or len(text) > 40:
        return None
    if _INTEGER.match(text):
        number = int(text, 10)
        # Keep integers inside a signed 64-bit column on every database.
        return number if -(2**63) <= number < 2**63 else None
    if _REAL.match(text):
        real = float(text)
        return real if math.isfinite(real) else None
    return None


@dataclass(frozen=True)
class FieldSpec:
    """One parsed ``fields`` entry: where a column's value comes from."""

    column: str
    #: The literal pieces and variable names, alternating: ``("", "a", "-", "b", "")`` for
    #: ``${a}-${b}``. A plain ``column:variable`` entry is ``("", "variable", "")``.
    parts: tuple[str, ...]
    numeric: bool = False
    source: str = ""

    @property
    def variables(self) -> tuple[str, ...]:
        return self.parts[1::2]

    @property
    def plain(self) -> Optional[str]:
        """The variable of a plain ``column:variable`` entry (or ``${variable}`` alone), else None."""
        parts = self.parts
        return parts[1] if len(parts) == 3 and not parts[0] and not parts[2] else None

    def value(self, lookup: Lookup) -> Value:
        """Evaluate against a channel: ``lookup(name)`` returns the variable or ``None``.

        A template whose variables are all unset is NULL, not the bare literal text.
        """
        parts = self.parts
        plain = self.plain
        if plain is not None:
            text = lookup(plain)
        else:
            pieces = []
            seen = False
            for index, part in enumerate(parts):
                if index % 2:
                    found = lookup(part)
                    if found is not None:
                        seen = True
                        pieces.append(found)
                else:
                    pieces.append(part)
            text = "".join(pieces) if seen else None
        if self.numeric:
            return to_number(text)
        return text


def parse_template(text: str, path: str, names: "re.Pattern[str]" = VARIABLE, what: str = "variable name",
                   need_reference: bool = True) -> tuple[str, ...]:
    """``literal${name}literal...`` as alternating literal text and names (``FieldSpec.parts``): channel
    variables in a ``fields`` template, record columns in a RabbitMQ routing key."""
    parts: list[str] = []
    position = 0
    for match in _TEMPLATE_PART.finditer(text):
        parts.append(text[position : match.start()])
        name = match.group(1)
        if not names.match(name):
            raise ConfigError(path, f"bad {what} {name!r} inside ${{}} in {text!r}")
        parts.append(name)
        position = match.end()
    parts.append(text[position:])
    if (need_reference and len(parts) < 3) or any(
        ("$" in literal or "{" in literal or "}" in literal) for literal in parts[0::2]
    ):
        raise ConfigError(path, f"unbalanced ${{...}} in {text!r}")
    return tuple(parts)


def parse_field(entry: object, path: str) -> FieldSpec:
    """Parse one ``fields`` entry; ``path`` (``cdr.fields[3]``) names it in errors."""
    if not isinstance(entry, str):
        raise ConfigError(path, f"expected a string, got {type(entry).__name__}")
    text = entry.strip()
    if not text:
        raise ConfigError(path, "empty field")
    numeric = False
    if text.startswith(NUMBER_PREFIX + ":"):
        numeric = True
        text = text[len(NUMBER_PREFIX) + 1 :]
    if "${" in text:
        column, sep, template = text.partition(":")
        if not sep or "${" in column:
            raise ConfigError(path, f"a ${{}} template needs a column: 'column:${{var}}', got {entry!r}")
        parts = parse_template(template, path)
    else:
        column, sep, variable = text.partition(":")
        if not sep:
            variable = column
        if not VARIABLE.match(variable):
            raise ConfigError(path, f"bad channel variable name {variable!r} in {entry!r}")
        parts = ("", variable, "")
    if not IDENTIFIER.match(column):
        raise ConfigError(
            path,
            f"column {column!r} must be letters, digits and _ (not starting with a digit, at most 63)",
        )
    reserved = RESERVED_COLUMNS.get(column.lower())
    if reserved:
        raise ConfigError(path, f"column {column.lower()!r} cannot come from fields: it is {reserved}")
    return FieldSpec(column=column.lower(), parts=parts, numeric=numeric, source=entry)


def parse_fields(entries: object, path: str) -> tuple[FieldSpec, ...]:
    """Parse the whole ``fields`` list; a column named twice is an error."""
    if not isinstance(entries, list):
        raise ConfigError(path, f"expected a list of strings, got {type(entries).__name__}")
    specs: list[FieldSpec] = []
    seen: dict[str, int] = {}
    for index, entry in enumerate(entries):
        spec = parse_field(entry, f"{path}[{index}]")
        if spec.column in seen:
            raise ConfigError(
                f"{path}[{index}]", f"column {spec.column!r} is already set by {path}[{seen[spec.column]}]"
            )
        seen[spec.column] = index
        specs.append(spec)
    return tuple(specs)


def lookup_in(variables: Mapping[str, str]) -> Lookup:
    """A lookup over a plain mapping of variable names (tests, imports)."""
    return variables.get
