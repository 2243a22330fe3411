"""A channel as FreeSWITCH describes it in an event: a flat mapping of header names to strings.

``Event.serialize('json')`` (inside FreeSWITCH), a recorded ``.jsonl`` stream and the event socket's
``text/event-json`` all give the same JSON object, so every source decodes with :func:`decode_event`.
Channel variables appear as ``variable_<name>`` headers on CHANNEL_HANGUP_COMPLETE and CHANNEL_DESTROY.

Header values come from the network (caller names, SIP headers, user agents, dialled digits), and
FreeSWITCH passes their bytes through as they came: its JSON printer (cJSON's ``print_string_ptr``)
escapes only ``"``, ``\\`` and control characters and copies every byte >= 0x80 as is, so one header
that is not UTF-8 makes the whole event invalid UTF-8; mod_python3's SWIG wrapper then hands Python a
``str`` decoded with ``surrogateescape`` (each such byte a lone surrogate U+DC80..U+DCFF), which
orjson refuses. :func:`decode_event` keeps such an event: each ill-formed byte sequence becomes one
U+FFFD, and every other header is exactly what FreeSWITCH sent (see docs/hostile-input.md).
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any, Callable, Mapping, Optional, Union, cast

log = logging.getLogger("fs_cdr.channel")

try:  # orjson decodes a 7 KB hangup event several times faster than json; optional in FreeSWITCH.
    import orjson

    _loads: Callable[[Union[str, bytes]], Any] = orjson.loads
    _dumpb: Callable[[Any], bytes] = orjson.dumps

    def _dumpb_line(value: Any) -> bytes:
        return orjson.dumps(value, option=orjson.OPT_APPEND_NEWLINE)
    #: orjson refuses invalid UTF-8, lone surrogates and raw control characters, so what it decodes
    #: needs no second look.
    _STRICT = True
except ImportError:  # pragma: no cover - Debian's python3 without orjson
    _loads = json.loads
    _STRICT = False

    def _dumpb(value: Any) -> bytes:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass")

    def _dumpb_line(value: Any) -> bytes:
        return _dumpb(value) + b"\n"


Headers = Mapping[str, Any]

HANGUP_EVENT = "CHANNEL_HANGUP_COMPLETE"
VARIABLE_PREFIX = "variable_"

#: What replaces a character no sink can store: U+FFFD REPLACEMENT CHARACTER.
REPLACEMENT = "\ufffd"
#: NUL (PostgreSQL text cannot hold it; SQLite's own string functions stop at it) and lone
#: surrogates (not Unicode scalar values: no UTF-8 encoder, hence no driver, accepts them).
UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_SURROGATES = re.compile("[\ud800-\udfff]")


def clean_text(text: str) -> str:
    """``text`` with NUL and lone surrogates replaced by U+FFFD, one for one; anything else as is."""
    if text.isascii():  # O(1): CPython knows
        return text.replace("\x00", REPLACEMENT) if "\x00" in text else text
    return UNSTORABLE.sub(REPLACEMENT, text)


def decode_event(text: Union[str, bytes, bytearray, memoryview]) -> dict[str, Any]:
    """One serialized event as a dict of headers. Raises ``ValueError`` on anything but a JSON object.

    Every string in the result is Unicode text any encoder takes: a header that was not UTF-8 is
    decoded with each ill-formed byte sequence replaced by U+FFFD (Python's ``errors='replace'``, the
    Unicode standard's "maximal subpart" practice), and a lone surrogate escape (``\\ud800``) becomes
    U+FFFD too. Both forms FreeSWITCH's bytes reach Python in — raw ``bytes`` (a recording, the event
    socket) and a ``surrogateescape`` ``str`` (mod_python3) — decode to the same event. NUL
    (``\\u0000``, which FreeSWITCH's C strings cannot hold) is kept here; the record builder replaces
    it in what is stored.
    """
    if isinstance(text, memoryview):
        text = text.tobytes()
    elif not isinstance(text, (str, bytes, bytearray)):
        raise ValueError(f"an event is JSON text, got {type(text).__name__}")
    try:
        if not _STRICT and isinstance(text, str):
            text.encode("utf-8")  # without orjson: surrogateescape bytes take the slow path too
        event = _loads(cast(Union[str, bytes], text))  # bytearray too: both decoders take it
    except (ValueError, RecursionError) as error:  # orjson.JSONDecodeError is a ValueError
        event = _decode_leniently(text, error)
    else:
        if not _STRICT:  # json.loads takes lone surrogate escapes
            event = _clean_event(event)
    if not isinstance(event, dict):
        raise ValueError(f"an event is a JSON object, got {type(event).__name__}")
    return event


class Notices:
    """Warnings about values changed on their way in: at most one line per key every ``interval_s``
    (a hostile caller at call rate must not flood FreeSWITCH's log); the lines in between are
    counted, and the count is reported with the next line."""

    def __init__(self, logger: logging.Logger, interval_s: float = 10.0) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._quiet: dict[str, int] = {}

    def warn(self, key: str, message: str, *args: Any) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._quiet[key] = self._quiet.get(key, 0) + 1
            return
        self._last[key] = now
        quiet = self._quiet.pop(key, 0)
        if quiet:
            message += " (and %d more like it since the last such line)"
            args += (quiet,)
        self.logger.warning(message, *args)

    def reset(self) -> None:
        """Forget what was said: the next line of each kind is logged."""
        self._last.clear()
        self._quiet.clear()


#: The decoder's warnings (one line per 10 s at most).
DECODE_NOTICES = Notices(log)


def _decode_leniently(text: Union[str, bytes, bytearray], error: BaseException) -> Any:
    """The slow path, for text orjson refused: recover FreeSWITCH's bytes, decode them with U+FFFD for
    what is not UTF-8, parse with the standard library (which also takes raw control characters and
    lone surrogate escapes), then clean every string."""
    if isinstance(text, str):
        try:  # mod_python3's str: surrogateescape gives back exactly the bytes FreeSWITCH sent
            decoded = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        except UnicodeEncodeError:  # other lone surrogates: replaced one for one by _clean_event
            decoded = text
    else:
        decoded = bytes(text).decode("utf-8", "replace")
    try:
        event = json.loads(decoded, strict=False)
    except (ValueError, RecursionError) as second:
        raise ValueError(f"not a JSON event: {second}") from None
    if isinstance(event, dict):
        event = _clean_event(event)
        DECODE_NOTICES.warn(
            "lenient", "event %s: not strict UTF-8 JSON (%s); decoded with U+FFFD for each ill-formed byte sequence",
            shown(header(event, "Unique-ID")), str(error)[:120],
        )
    return event


def _unicode(text: str) -> str:
    """``text`` with each lone surrogate replaced by U+FFFD."""
    return text if text.isascii() else _SURROGATES.sub(REPLACEMENT, text)


def _clean_value(value: Any) -> Any:
    if isinstance(value, str):
        return _unicode(value)
    if isinstance(value, list):
        return [_unicode(item) if isinstance(item, str) else item for item in value]
    return value


def _clean_event(event: Any) -> Any:
    """Every lone surrogate in a header name or string value (or string array item) replaced by
    U+FFFD. Two names that differ only in what was replaced become one; the later header wins, as
    with duplicate names in JSON."""
    if not isinstance(event, dict):
        return event
    return {_unicode(name) if isinstance(name, str) else name: _clean_value(value) for name, value in event.items()}


def shown(value: Any, limit: int = 64) -> str:
    """A value from the network as it may appear in a log line: quoted, cut, every control or
    invisible character escaped (a caller name cannot forge a log line or reorder one)."""
    if value is None:
        return "None"
    text = value if isinstance(value, str) else str(value)
    return repr(text[:limit]) + ("..." if len(text) > limit else "")


def dumpb(value: Any) -> bytes:
    """Compact JSON as UTF-8 bytes; non-ASCII kept as is (caller names are often not Latin)."""
    return _dumpb(value)


def dumpb_line(value: Any) -> bytes:
    """:func:`dumpb` with a newline at the end, in one pass (a JSON-lines file's line)."""
    return _dumpb_line(value)


def dumps(value: Any) -> str:
    """Compact JSON text."""
    return _dumpb(value).decode("utf-8", "surrogatepass")


def log_json(value: Any) -> str:
    """:func:`dumps` for a log line: every character that is not printable (a control, a line or
    paragraph separator, a bidirectional override, an invisible one) escaped the way JSON does, so a
    channel variable can neither break the line nor reorder what it shows; the text still reads back
    as ``value``."""
    text = dumps(value)
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else json.dumps(char)[1:-1] for char in text)


def loads(text: Union[str, bytes]) -> Any:
    return _loads(text)


def as_text(value: Any) -> str:
    """A header value that is not a string, as text: FreeSWITCH's array headers (JSON lists of
    strings) joined with ``|``; anything else (only a hand-made event holds one) as compact JSON."""
    if isinstance(value, list):
        return "|".join(item if isinstance(item, str) else _json_text(item) for item in value)
    return _json_text(value)


def _json_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return _unicode(dumps(value))
    except (TypeError, ValueError, RecursionError):
        pass
    try:  # integers beyond 64 bits, nesting deeper than orjson's 255 levels
        return _unicode(json.dumps(value, ensure_ascii=False, separators=(",", ":")))
    except (TypeError, ValueError, RecursionError):
        return ""


def header(headers: Headers, name: str) -> Optional[str]:
    """A header as text; FreeSWITCH array headers (JSON lists) are joined with ``|``."""
    value = headers.get(name)
    if value is None or isinstance(value, str):
        return value
    return as_text(value)


#: ``variable_<name>`` for each name looked up so far, made (and hashed) once: the record builder asks
#: for the same few dozen variables on every hangup. Names come from the code and cdr.json only.
_VARIABLE_KEYS: dict[str, str] = {}


def variable(headers: Headers, name: str) -> Optional[str]:
    """A channel variable (``variable_<name>``); a plain header of that exact name as a fallback,
    so that ``fields`` can also name headers such as ``Hangup-Cause``."""
    key = _VARIABLE_KEYS.get(name)
    if key is None:
        key = VARIABLE_PREFIX + name
        if len(_VARIABLE_KEYS) < 4096:
            _VARIABLE_KEYS[name] = key
    value = headers.get(key)
    if value is None:
        value = headers.get(name)
    if value is None or isinstance(value, str):
        return value
    return as_text(value)
