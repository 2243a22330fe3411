"""A channel as FreeSWITCH describes it in an event: a flat mapping of header names to strings.

``Event.serialize('json')`` (inside FreeSWITCH), a recorded ``.jsonl`` stream and the event socket's
``text/event-json`` all give the same JSON object, so every source decodes with :func:`decode_event`.
Channel variables appear as ``variable_<name>`` headers on CHANNEL_HANGUP_COMPLETE and CHANNEL_DESTROY.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Union

try:  # orjson decodes a 7 KB hangup event several times faster than json; optional in FreeSWITCH.
    import orjson

    _loads: Callable[[Union[str, bytes]], Any] = orjson.loads
    _dumpb: Callable[[Any], bytes] = orjson.dumps
except ImportError:  # pragma: no cover - Debian's python3 without orjson
    import json

    _loads = json.loads

    def _dumpb(value: Any) -> bytes:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass")


Headers = Mapping[str, Any]

HANGUP_EVENT = "CHANNEL_HANGUP_COMPLETE"
VARIABLE_PREFIX = "variable_"


def decode_event(text: Union[str, bytes]) -> dict[str, Any]:
    """One serialized event as a dict of headers. Raises ``ValueError`` on anything but an object."""
    event = _loads(text)
    if not isinstance(event, dict):
        raise ValueError(f"an event is a JSON object, got {type(event).__name__}")
    return event


def dumpb(value: Any) -> bytes:
    """Compact JSON as UTF-8 bytes; non-ASCII kept as is (caller names are often not Latin)."""
    return _dumpb(value)


def dumps(value: Any) -> str:
    """Compact JSON text."""
    return _dumpb(value).decode("utf-8", "surrogatepass")


def loads(text: Union[str, bytes]) -> Any:
    return _loads(text)


def header(headers: Headers, name: str) -> Optional[str]:
    """A header as text; FreeSWITCH array headers (JSON lists) are joined with ``|``."""
    value = headers.get(name)
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list):
        return "|".join(str(item) for item in value)
    return str(value)


def variable(headers: Headers, name: str) -> Optional[str]:
    """A channel variable (``variable_<name>``); a plain header of that exact name as a fallback,
    so that ``fields`` can also name headers such as ``Hangup-Cause``."""
    value = header(headers, VARIABLE_PREFIX + name)
    if value is None:
        value = header(headers, name)
    return value


def variables(headers: Headers) -> dict[str, Any]:
    """Every channel variable, prefix stripped, in FreeSWITCH's order."""
    cut = len(VARIABLE_PREFIX)
    return {key[cut:]: value for key, value in headers.items() if key.startswith(VARIABLE_PREFIX)}
