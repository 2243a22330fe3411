"""A CDR receiver for the HTTP sink's tests and benchmark: a real HTTP/1.1 server process (keep-alive,
optionally TLS) built on the standard library, recording every request it answers.

    python tests/http_receiver.py --port 8080 --log requests.jsonl [--cert C --key K [--client-ca CA]]

Each request to any path but ``/_control`` is parsed as fs_cdr sends it (NDJSON, a JSON array or one
document; gzip when ``Content-Encoding`` says so) and logged as one JSON line: the answer given, the
request's headers and the uuid of every record in it (``uuid``, or ``variables.uuid`` of a json_cdr
document). Faults are planned by POSTing ``{"faults": [...]}`` to ``/_control``; each fault is used by
the next request, in order:

    {"status": 503}                       answer that status (with ``"retry_after": "1"``: that header)
    {"hang": true}                        read the request, never answer (until the client goes away)
    {"reset": true}                       read half of the body, then reset the connection (RST)

``GET /_control`` answers how many records were accepted (2xx) so far.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import hmac
import json
import socket
import ssl
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

try:
    from orjson import loads
except ImportError:  # the standard library's is slower, not different
    from json import loads  # type: ignore[assignment]


class Receiver(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], log_path: str, quiet: bool, hmac_secret: str) -> None:
        super().__init__(address, Handler)
        self.hmac_secret = hmac_secret.encode()
        self.log_path = log_path
        self.quiet = quiet
        self.lock = threading.Lock()
        self.faults: list[dict[str, Any]] = []
        self.accepted = 0
        self.log = open(log_path, "a", encoding="utf-8") if log_path else None  # noqa: SIM115 - the server's life

    def next_fault(self) -> dict[str, Any]:
        with self.lock:
            return self.faults.pop(0) if self.faults else {}

    def record(self, entry: dict[str, Any], accepted: int) -> None:
        with self.lock:
            self.accepted += accepted
            if self.log is not None:
                self.log.write(json.dumps(entry) + "\n")
                self.log.flush()


def uuids(body: bytes, content_type: str) -> list[str]:
    if not body.strip():
        return []
    if "ndjson" in content_type:
        documents = [loads(line) for line in body.splitlines() if line.strip()]
    else:
        found = loads(body)
        documents = found if isinstance(found, list) else [found]
    return [document.get("uuid") or document.get("variables", {}).get("uuid") for document in documents]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Receiver

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def answer(self, status: int, text: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(text)))
        self.end_headers()
        self.wfile.write(text)

    def do_GET(self) -> None:
        self.answer(200, json.dumps({"accepted": self.server.accepted}).encode())

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if self.path == "/_control":
            plan = json.loads(self.rfile.read(length))
            with self.server.lock:
                self.server.faults.extend(plan.get("faults", []))
            self.answer(200, b"{}")
            return
        fault = self.server.next_fault()
        if fault.get("reset"):
            self.rfile.read(length // 2)
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
            self.server.record({"answer": "reset", "headers": dict(self.headers)}, 0)
            return
        body = self.rfile.read(length)
        if fault.get("hang"):
            self.server.record({"answer": "hang", "headers": dict(self.headers)}, 0)
            self.connection.settimeout(60)
            try:
                while self.connection.recv(1 << 16):  # until the client gives up and closes
                    pass
            except OSError:
                pass
            self.close_connection = True
            return
        status = int(fault.get("status", 200))
        entry: dict[str, Any] = {"answer": status, "at": time.time(), "path": self.path, "headers": dict(self.headers),
                                 "body_bytes": len(body)}
        if self.server.hmac_secret:
            stamp = self.headers.get("X-CDR-Timestamp", "")
            expected = hmac.new(self.server.hmac_secret, stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
            entry["signature_ok"] = hmac.compare_digest(self.headers.get("X-CDR-Signature", ""), "sha256=" + expected)
        if not self.server.quiet:
            raw = gzip.decompress(body) if self.headers.get("Content-Encoding") == "gzip" else body
            entry["uuids"] = uuids(raw, self.headers.get("Content-Type", ""))
            count = len(entry["uuids"])
        else:
            count = int(self.headers.get("X-CDR-Count") or 0)
        headers = {"Retry-After": str(fault["retry_after"])} if "retry_after" in fault else {}
        if "location" in fault:
            headers["Location"] = fault["location"]
        self.server.record(entry, count if 200 <= status < 300 else 0)
        self.answer(status, fault.get("text", "ok" if status < 300 else "no").encode(), headers)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", default="")
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--client-ca", help="ask for a client certificate signed by this CA")
    parser.add_argument("--hmac-secret", default="", help="check X-CDR-Signature with this shared secret")
    parser.add_argument("--quiet", action="store_true", help="count records by X-CDR-Count, parse nothing")
    args = parser.parse_args()
    server = Receiver(("127.0.0.1", args.port), args.log, args.quiet, args.hmac_secret)
    if args.cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.cert, args.key)
        if args.client_ca:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(args.client_ca)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    print("listening", flush=True)
    server.serve_forever(poll_interval=0.05)


if __name__ == "__main__":
    main()
