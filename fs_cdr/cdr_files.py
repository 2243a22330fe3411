"""CDR files written by FreeSWITCH's own modules, read back as channel headers for backfill.

mod_json_cdr writes ``<uuid>.cdr.json`` (``a_<uuid>.cdr.json`` for a-legs with ``prefix-a-leg``) and
mod_xml_cdr ``<uuid>.cdr.xml``. Both hold every channel variable and the caller profiles (newest first);
this module turns one into the same header mapping a CHANNEL_HANGUP_COMPLETE event carries, so the
ordinary record builder makes the record. mod_xml_cdr URL-encodes variable values; mod_json_cdr (as
configured by default) does not.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ElementTree
from typing import Any, Iterable, Iterator, Optional, Union
from urllib.parse import unquote

from .channel import loads

#: caller_profile field -> event header
_PROFILE = {
    "caller_id_name": "Caller-Caller-ID-Name",
    "caller_id_number": "Caller-Caller-ID-Number",
    "callee_id_name": "Caller-Callee-ID-Name",
    "callee_id_number": "Caller-Callee-ID-Number",
    "destination_number": "Caller-Destination-Number",
    "context": "Caller-Context",
    "chan_name": "Caller-Channel-Name",
    "uuid": "Caller-Unique-ID",
    "ani": "Caller-ANI",
    "username": "Caller-Username",
}
#: times field -> event header (microseconds)
_TIMES = {
    "created_time": "Caller-Channel-Created-Time",
    "answered_time": "Caller-Channel-Answered-Time",
    "hangup_time": "Caller-Channel-Hangup-Time",
    "bridged_time": "Caller-Channel-Bridged-Time",
}


class CdrFileError(ValueError):
    """Not a CDR file FreeSWITCH's modules write, or a damaged one."""


def _headers(core_uuid: Optional[str], switchname: Optional[str], variables: dict[str, Any],
             profile: dict[str, Any], times: dict[str, Any], direction: Optional[str]) -> dict[str, Any]:
    headers: dict[str, Any] = {"Event-Name": "CHANNEL_HANGUP_COMPLETE"}
    uuid = variables.get("uuid") or profile.get("uuid")
    if not uuid:
        raise CdrFileError("no uuid in the variables or the caller profile")
    headers["Unique-ID"] = uuid
    if core_uuid:
        headers["Core-UUID"] = core_uuid
    if switchname:
        headers["FreeSWITCH-Switchname"] = switchname
    if direction:
        headers["Call-Direction"] = direction
    if variables.get("channel_name"):
        headers["Channel-Name"] = variables["channel_name"]
    if variables.get("call_uuid"):
        headers["Channel-Call-UUID"] = variables["call_uuid"]
    for field, name in _PROFILE.items():
        value = profile.get(field)
        if isinstance(value, str) and value:
            headers[name] = value
    for field, name in _TIMES.items():
        value = times.get(field)
        if isinstance(value, str) and value:
            headers[name] = value
    if variables.get("hangup_cause"):
        headers["Hangup-Cause"] = variables["hangup_cause"]
    for name, value in variables.items():
        headers["variable_" + name] = value if isinstance(value, str) else str(value)
    return headers


def read_json_cdr(data: Union[str, bytes]) -> dict[str, Any]:
    try:
        document = loads(data)
    except ValueError as error:
        raise CdrFileError(f"not JSON: {error}") from error
    if not isinstance(document, dict) or not isinstance(document.get("variables"), dict):
        raise CdrFileError("not a mod_json_cdr document (no 'variables' object)")
    callflow = document.get("callflow") or [{}]
    newest = callflow[0] if isinstance(callflow, list) else callflow
    channel = document.get("channel_data") or {}
    return _headers(document.get("core-uuid"), document.get("switchname"), document["variables"],
                    newest.get("caller_profile") or {}, newest.get("times") or {}, channel.get("direction"))


def read_xml_cdr(data: Union[str, bytes]) -> dict[str, Any]:
    try:
        root = ElementTree.fromstring(data)
    except ElementTree.ParseError as error:
        raise CdrFileError(f"not XML: {error}") from error
    variables_node = root.find("variables")
    if root.tag != "cdr" or variables_node is None:
        raise CdrFileError("not a mod_xml_cdr document (no <cdr><variables>)")
    variables = {child.tag: unquote(child.text or "") for child in variables_node}
    callflow = root.find("callflow")
    profile: dict[str, Any] = {}
    times: dict[str, Any] = {}
    if callflow is not None:
        profile_node = callflow.find("caller_profile")
        if profile_node is not None:
            profile = {child.tag: child.text or "" for child in profile_node if len(child) == 0}
        times_node = callflow.find("times")
        if times_node is not None:
            times = {child.tag: child.text or "" for child in times_node}
    direction_node = root.find("channel_data/direction")
    return _headers(root.get("core-uuid"), root.get("switchname"), variables, profile, times,
                    direction_node.text if direction_node is not None else None)


def read_cdr_file(path: str) -> dict[str, Any]:
    """One mod_json_cdr or mod_xml_cdr file as channel headers; ``CdrFileError`` says why not."""
    with open(path, "rb") as handle:
        data = handle.read()
    start = data.lstrip()[:1]
    if start in (b"{", b"["):
        return read_json_cdr(data)
    if start == b"<":
        return read_xml_cdr(data)
    raise CdrFileError("neither JSON nor XML")


def cdr_paths(paths: Iterable[str]) -> Iterator[str]:
    """Files named, and the ``*.json``/``*.xml`` files of directories named, walked in sorted order."""
    for path in paths:
        if os.path.isdir(path):
            for directory, folders, files in os.walk(path):
                folders.sort()
                for name in sorted(files):
                    if name.endswith((".json", ".xml")):
                        yield os.path.join(directory, name)
        else:
            yield path
