"""A small, blocking client for FreeSWITCH's event socket (mod_event_socket, inbound mode).

Why not a library: the well-kept Python ESL clients are built on gevent (greenswitch) or asyncio
(switchio, genesis), and fs_cdr's engine is plain threads; the SWIG ``ESL`` module needs a FreeSWITCH
source tree to build. The protocol fs_cdr needs is small: header blocks ending in a blank line,
an optional body of ``Content-Length`` bytes, ``auth``, ``api`` and ``event json``.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Any, Optional
from urllib.parse import unquote

from .channel import decode_event
from .config import Section


@dataclass(frozen=True)
class EventSocketConfig:
    """Where the sidecar (``fs-cdr run``) and ``fs-cdr status`` reach FreeSWITCH's event socket."""

    host: str = "127.0.0.1"
    port: int = 8021
    password: str = field(default="ClueCon", repr=False)


def parse_event_socket(value: object, path: str) -> EventSocketConfig:
    """The ``event_socket`` object; left out, FreeSWITCH's defaults (127.0.0.1:8021, ClueCon)."""
    if value is None:
        return EventSocketConfig()
    section = Section(path, value)
    config = EventSocketConfig(
        host=section.text("host", "127.0.0.1"),
        port=section.integer("port", 8021, 1, 65535),
        password=section.text("password", "ClueCon"),
    )
    section.done()
    return config


class EslError(Exception):
    """The event socket refused a command or closed the connection."""


class EventSocket:
    def __init__(self, host: str = "127.0.0.1", port: int = 8021, password: str = "ClueCon",
                 timeout_s: float = 10.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout_s)
        self._buffer = b""
        headers, _ = self._read_message()
        if headers.get("Content-Type") != "auth/request":
            raise EslError(f"expected auth/request, got {headers.get('Content-Type')!r}")
        reply = self._command(f"auth {password}")
        if not reply.startswith("+OK"):
            raise EslError(f"authentication failed: {reply}")

    def _parse(self) -> Optional[tuple[dict[str, str], bytes]]:
        """One whole message from the buffer, or None. Nothing is consumed until a message is
        complete, so a timeout in the middle of one loses nothing."""
        head, found, rest = self._buffer.partition(b"\n\n")
        if not found:
            return None
        headers: dict[str, str] = {}
        for line in head.decode("utf-8", "replace").splitlines():
            name, _, value = line.partition(":")
            headers[name.strip()] = unquote(value.strip())
        length = int(headers.get("Content-Length", "0") or 0)
        if len(rest) < length:
            return None
        self._buffer = rest[length:]
        return headers, rest[:length]

    def _read_message(self) -> tuple[dict[str, str], bytes]:
        while True:
            message = self._parse()
            if message is not None:
                return message
            chunk = self.sock.recv(262144)
            if not chunk:
                raise EslError("the event socket closed the connection")
            self._buffer += chunk

    def _command(self, text: str) -> str:
        self.sock.sendall(text.encode() + b"\n\n")
        while True:
            headers, body = self._read_message()
            kind = headers.get("Content-Type")
            if kind == "command/reply":
                return headers.get("Reply-Text", "")
            if kind == "api/response":
                return body.decode("utf-8", "replace")
            if kind == "text/disconnect-notice":
                raise EslError("disconnected")

    def api(self, command: str) -> str:
        """Run an API command (what ``fs_cli -x`` does) and return its output."""
        return self._command(f"api {command}")

    def subscribe(self, *events: str) -> None:
        reply = self._command("event json " + " ".join(events))
        if not reply.startswith("+OK"):
            raise EslError(f"event subscription refused: {reply}")

    def next_event(self, timeout_s: Optional[float] = None) -> Optional[dict[str, Any]]:
        """The next event as a dict of headers, or None when ``timeout_s`` passes first."""
        self.sock.settimeout(timeout_s)
        try:
            while True:
                headers, body = self._read_message()
                if headers.get("Content-Type") == "text/event-json":
                    return decode_event(body)
        except socket.timeout:
            return None

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
