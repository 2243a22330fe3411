"""Stop and start the machine's real database servers, for fault tests (loopback only); a RabbitMQ
exchange of a test's own."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import uuid as uuidlib
from typing import Any, Iterator


def port_open(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def wait_port(port: int, up: bool, timeout_s: float = 60.0) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if port_open(port) == up:
            return
        time.sleep(0.1)
    raise RuntimeError(f"port {port} did not go {'up' if up else 'down'}")


def _pids(name: str) -> list[int]:
    result = subprocess.run(["pidof", name], capture_output=True, text=True)
    return [int(pid) for pid in result.stdout.split()]


class Server:
    name = ""
    port = 0

    def stop(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        raise NotImplementedError


class MariaDB(Server):
    name, port = "mariadb", 3306

    def stop(self) -> None:
        for pid in _pids("mariadbd"):
            os.kill(pid, signal.SIGTERM)
        wait_port(self.port, up=False)
        deadline = time.time() + 30
        while _pids("mariadbd") and time.time() < deadline:
            time.sleep(0.1)

    def start(self) -> None:
        subprocess.run(["start-stop-daemon", "--start", "--oknodo", "--background", "--exec", "/usr/sbin/mariadbd"],
                       check=True)
        wait_port(self.port, up=True)


class PostgreSQL(Server):
    name, port = "postgresql", 5432

    def _cluster(self, action: str) -> None:
        version = sorted(os.listdir("/etc/postgresql"))[0]
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action, *(
            ["-m", "fast"] if action == "stop" else [])], check=True, capture_output=True)

    def stop(self) -> None:
        self._cluster("stop")
        wait_port(self.port, up=False)

    def start(self) -> None:
        self._cluster("start")
        wait_port(self.port, up=True)


class Redis(Server):
    """A private Redis with an fsynced append-only file, so a restart keeps what was written (the
    machine's shared Redis runs with persistence off: its restart loses data by design)."""

    name = "redis"

    def __init__(self, directory: str, port: int = 6391) -> None:
        self.directory, self.port = directory, port

    def stop(self) -> None:
        subprocess.run(["redis-cli", "-p", str(self.port), "shutdown"], capture_output=True)
        wait_port(self.port, up=False)

    def start(self) -> None:
        subprocess.run(["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "--port", str(self.port),
                        "--dir", self.directory, "--save", "", "--appendonly", "yes", "--appendfsync", "always"],
                       check=True, capture_output=True)
        wait_port(self.port, up=True)


def rabbit_exchange(prefix: str, bindings: tuple[tuple[str, str], ...]) -> Iterator[tuple[str, dict[str, str]]]:
    """A topic exchange of its own on the local RabbitMQ with a durable queue per (name, binding key),
    for a pytest fixture to yield from: (exchange, {name: queue}); all deleted afterwards."""
    import pika

    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1"))
    channel = connection.channel()
    exchange = prefix + uuidlib.uuid4().hex[:8]
    channel.exchange_declare(exchange, exchange_type="topic", durable=True)
    queues = {}
    for name, key in bindings:
        queue = f"{exchange}.{name}"
        channel.queue_declare(queue, durable=True)
        channel.queue_bind(queue, exchange, key)
        queues[name] = queue
    connection.close()
    try:
        yield exchange, queues
    finally:
        connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1"))
        channel = connection.channel()
        for queue in queues.values():
            channel.queue_delete(queue)
        channel.exchange_delete(exchange)
        connection.close()


def rabbit_drain(queue: str) -> list[tuple[Any, Any, bytes]]:
    """Every message waiting in ``queue`` of the local RabbitMQ, taken off it: (method, properties, body)."""
    import pika

    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1"))
    channel = connection.channel()
    found = []
    while True:
        method, properties, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            break
        found.append((method, properties, body))
    connection.close()
    return found
