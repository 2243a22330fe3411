"""A small, blocking client for FreeSWITCH's event socket (mod_event_socket, inbound mode).

Why not a library: the well-kept Python ESL clients are built on gevent (greenswitch) or asyncio
(switchio, genesis), and fs_cdr's engine is plain threads; the SWIG ``ESL`` module needs a FreeSWITCH
source tree to build. The protocol fs_cdr needs is small: header blocks ending in a blank line,
an optional body of ``Content-Length`` bytes, ``auth``, ``api`` and ``event json``.
"""

from __future__ import annotations

import socket
from typing import Any, Optional
from urllib.parse import unquote

from .channel import decode_event


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

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self._buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EslError("the event socket closed the connection")
            self._buffer += chunk
        head, _, self._buffer = self._buffer.partition(marker)
        return head

    def _read_exact(self, length: int) -> bytes:
        while len(self._buffer) < length:
            chunk = self.sock.recv(max(65536, length - len(self._buffer)))
            if not chunk:
                raise EslError("the event socket closed the connection")
            self._buffer += chunk
        body, self._buffer = self._buffer[:length], self._buffer[length:]
        return body

    def _read_message(self) -> tuple[dict[str, str], bytes]:
        head = self._read_until(b"\n\n")
        headers: dict[str, str] = {}
        for line in head.decode("utf-8", "replace").splitlines():
            name, _, value = line.partition(":")
            headers[name.strip()] = unquote(value.strip())
        length = int(headers.get("Content-Length", "0") or 0)
        return headers, self._read_exact(length) if length else b""

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
