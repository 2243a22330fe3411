"""A stand-in for FreeSWITCH's event socket that speaks the real protocol (auth/request, command/reply,
api/response, text/event-json with Content-Length), for the sidecar and CLI tests without FreeSWITCH."""

from __future__ import annotations

import json
import socket
import threading
from typing import Callable, Optional


class EslStandIn:
    def __init__(self, password: str = "ClueCon", api: Optional[Callable[[str], str]] = None) -> None:
        self.password = password
        self.api = api or (lambda command: "-ERR no reply\n")
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(4)
        self.port = self.listener.getsockname()[1]
        self.subscribed = threading.Event()
        self.connections = 0
        self.commands: list[str] = []
        self._client: Optional[socket.socket] = None
        self._lock = threading.Lock()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._session, args=(client,), daemon=True).start()

    def _session(self, client: socket.socket) -> None:
        with self._lock:
            self.connections += 1
        client.sendall(b"Content-Type: auth/request\n\n")
        buffer = b""
        try:
            while True:
                while b"\n\n" not in buffer:
                    chunk = client.recv(4096)
                    if not chunk:
                        return
                    buffer += chunk
                command, _, buffer = buffer.partition(b"\n\n")
                text = command.decode()
                self.commands.append(text)
                if text.startswith("auth "):
                    ok = text[5:] == self.password
                    client.sendall(b"Content-Type: command/reply\nReply-Text: "
                                   + (b"+OK accepted" if ok else b"-ERR invalid") + b"\n\n")
                    if not ok:
                        client.close()
                        return
                elif text.startswith("event json"):
                    client.sendall(b"Content-Type: command/reply\nReply-Text: +OK event listener enabled json\n\n")
                    self._client = client
                    self.subscribed.set()
                elif text.startswith("api "):
                    body = self.api(text[4:]).encode()
                    client.sendall(b"Content-Type: api/response\nContent-Length: %d\n\n" % len(body) + body)
        except OSError:
            return

    def send_event(self, headers: dict) -> None:
        body = json.dumps(headers).encode()
        assert self._client is not None
        self._client.sendall(b"Content-Length: %d\nContent-Type: text/event-json\n\n" % len(body) + body)

    def drop(self) -> None:
        """The switch restarts: the connection goes away."""
        self.subscribed.clear()
        client, self._client = self._client, None
        if client is not None:
            client.shutdown(socket.SHUT_RDWR)
            client.close()

    def close(self) -> None:
        self.drop()
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
        except OSError:
            pass
        self.listener.close()
