"""The NATS JetStream sink against a private nats-server started here (never the shared one on
4222): exactly once in the stream across a server restart, records held while no stream takes them."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import time
import uuid as uuidlib
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import hangups, make_config
from processes import wait_for
from servers import wait_port

NATS_SERVER = "/usr/sbin/nats-server"
ONE_LEG = hangups("b_bridge_null")[0]

pytestmark = pytest.mark.skipif(not os.path.exists(NATS_SERVER), reason=f"no {NATS_SERVER} on this machine")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class NatsServer:
    """A private JetStream server on loopback; its store survives ``restart``."""

    def __init__(self, directory: Any, *options: str) -> None:
        self.port = free_port()
        self.directory = str(directory)
        self.options = options
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> NatsServer:
        self.process = subprocess.Popen([NATS_SERVER, "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd",
                                         self.directory, *self.options], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        wait_port(self.port, up=True, timeout_s=20)
        return self

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None


@pytest.fixture
def nats_server(tmp_path: Any) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "jetstream").start()
    yield server
    server.kill()


def legs(count: int) -> list[dict[str, Any]]:
    events = []
    for index in range(count):
        call = str(uuidlib.uuid4())
        events.append(dict(ONE_LEG, **{"Unique-ID": call, "variable_uuid": call,
                                       "variable_direction": "inbound" if index % 2 else "outbound"}))
    return events


async def read_stream(url: str, stream: str, **connect: Any) -> list[tuple[str, str]]:
    """Every message of the stream, through a consumer: (subject, the record's uuid)."""
    import nats

    client = await nats.connect(url, **connect)
    try:
        jetstream = client.jetstream()
        info = await jetstream.stream_info(stream)
        subscription = await jetstream.pull_subscribe("", stream=stream)
        found: list[tuple[str, str]] = []
        while len(found) < info.state.messages:
            for message in await subscription.fetch(500, timeout=5):
                found.append((message.subject, json.loads(message.data)["uuid"]))
                await message.ack()
        return found
    finally:
        await client.close()


def read(url: str, stream: str, **connect: Any) -> list[tuple[str, str]]:
    return asyncio.run(read_stream(url, stream, **connect))


def test_a_thousand_records_across_a_server_restart_are_in_the_stream_exactly_once(tmp_path, nats_server,
                                                                                  engines) -> None:
    engine = engines(make_config({"cdr": {"durable_window_ms": 200, "nats": {
        "servers": [nats_server.url], "subject": "cdr.${switchname}.${direction}", "stream": "CDR",
        "create_stream": True, "batch_size": 50, "timeout_s": 1}}}, tmp_path))
    events = legs(1000)
    for index, event in enumerate(events):
        engine.handle(event)
        time.sleep(0.01 if 400 <= index < 600 else 0.002)  # down for 2 s: longer than a batch's timeout
        if index == 400:
            nats_server.kill()
        if index == 600:
            nats_server.start()
    assert engine.flush(60), engine.status()
    found = read(nats_server.url, "CDR")
    counts = Counter(uuid for _, uuid in found)
    assert set(counts) == {event["Unique-ID"] for event in events}
    assert set(counts.values()) == {1}, [uuid for uuid, count in counts.items() if count > 1][:5]
    switch = ONE_LEG["FreeSWITCH-Switchname"].replace(".", "_")
    assert {subject for subject, _ in found} == {f"cdr.{switch}.inbound", f"cdr.{switch}.outbound"}
    status = engine.status()["sinks"][0]
    assert status["retries"] > 0  # the restart was felt, and retried
    print(f"\nnats restart: sent 1000, in the stream {len(counts)}, twice {sum(counts.values()) - len(counts)}, "
          f"retries {status['retries']}, replayed {status['replayed']}")


def test_the_same_records_sent_again_are_dropped_by_the_stream_as_duplicates(tmp_path, nats_server, engines) -> None:
    engine = engines(make_config({"cdr": {"nats": {"servers": [nats_server.url], "subject": "cdr.${direction}",
                                                   "stream": "CDR", "create_stream": True}}}, tmp_path))
    events = legs(50)
    for event in events + events:
        engine.handle(event)
    assert engine.flush(20), engine.status()
    assert engine.status()["sinks"][0]["written"] == 100
    assert sorted(uuid for _, uuid in read(nats_server.url, "CDR")) == sorted(event["Unique-ID"] for event in events)


def test_records_wait_in_the_spool_until_a_stream_takes_their_subject(tmp_path, nats_server, engines) -> None:
    engine = engines(make_config({"cdr": {"durable_window_ms": 100, "nats": {
        "servers": [nats_server.url], "subject": "cdr.${direction}", "stream": "CDR", "timeout_s": 1}}}, tmp_path))
    events = legs(20)
    for event in events:
        engine.handle(event)
    assert wait_for(lambda: engine.status()["sinks"][0]["spooled"] == 20, 15), engine.status()
    assert not engine.status()["sinks"][0]["healthy"]

    async def create() -> None:
        import nats

        client = await nats.connect(nats_server.url)
        await client.jetstream().add_stream(name="CDR", subjects=["cdr.*"])
        await client.close()

    asyncio.run(create())
    engine.replay()
    assert engine.flush(20), engine.status()
    assert sorted(uuid for _, uuid in read(nats_server.url, "CDR")) == sorted(event["Unique-ID"] for event in events)


def test_a_token_server_takes_the_right_token_and_no_status_shows_it(tmp_path, engines) -> None:
    server = NatsServer(tmp_path / "js-auth", "--auth", "tok-s3cret").start()
    try:
        wrong = engines(make_config({"cdr": {"spool_dir": str(tmp_path / "spool-wrong"), "durable_window_ms": 100,
                                             "nats": {"servers": [server.url], "token": "tok-wrong",
                                                      "stream": "CDR", "create_stream": True, "timeout_s": 1}}},
                                    tmp_path))
        wrong.handle(legs(1)[0])
        assert wait_for(lambda: wrong.status()["sinks"][0]["spooled"] == 1, 15), wrong.status()
        assert "tok-wrong" not in json.dumps(wrong.status())
        right = engines(make_config({"cdr": {"nats": {"servers": [server.url], "token": "tok-s3cret",
                                                      "stream": "CDR", "create_stream": True}}}, tmp_path))
        event = legs(1)[0]
        right.handle(event)
        assert right.flush(20), right.status()
        assert "tok-s3cret" not in json.dumps(right.status())
        assert [uuid for _, uuid in read(server.url, "CDR", token="tok-s3cret")] == [event["Unique-ID"]]
    finally:
        server.kill()


def test_a_user_and_password_in_the_server_url_log_in_and_stay_out_of_status(tmp_path, engines) -> None:
    server = NatsServer(tmp_path / "js-user", "--user", "fs", "--pass", "pw-s3cret").start()
    try:
        engine = engines(make_config({"cdr": {"nats": {
            "servers": [f"nats://fs:pw-s3cret@127.0.0.1:{server.port}"], "stream": "CDR", "create_stream": True}}},
            tmp_path))
        event = legs(1)[0]
        engine.handle(event)
        assert engine.flush(20), engine.status()
        assert "pw-s3cret" not in json.dumps(engine.status())
        assert [uuid for _, uuid in read(server.url, "CDR", user="fs", password="pw-s3cret")] == [event["Unique-ID"]]
    finally:
        server.kill()
