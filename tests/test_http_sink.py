"""The HTTP sink against a real receiver process on loopback (tests/http_receiver.py), plain and TLS,
with the faults a web service has: a failover, 5xx bursts, 429, a hang, a reset, a restart."""

from __future__ import annotations

import http.client
import json
import logging
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
import uuid as uuidlib
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import SCENARIOS, TOTAL_ROWS, hangups, make_config, scenario_events
from processes import wait_for

from fs_cdr.engine import Engine

HERE = os.path.dirname(os.path.abspath(__file__))
RECEIVER = os.path.join(HERE, "http_receiver.py")
ONE_LEG = hangups("b_bridge_null")[0]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Receiver:
    """One receiver process; ``restart`` keeps its port and its log."""

    def __init__(self, directory: Any, *options: str) -> None:
        self.port = free_port()
        self.log = str(directory / f"requests-{self.port}.jsonl")
        self.options = options
        self.tls = "--cert" in options
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}/cdr"

    def start(self) -> Receiver:
        self.process = subprocess.Popen([sys.executable, RECEIVER, "--port", str(self.port), "--log", self.log,
                                         *self.options], stdout=subprocess.PIPE)
        assert self.process.stdout is not None
        assert self.process.stdout.readline() == b"listening\n"
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None

    def plan(self, *faults: dict[str, Any]) -> None:
        if self.tls:
            connection: http.client.HTTPConnection = http.client.HTTPSConnection(
                "127.0.0.1", self.port, context=ssl._create_unverified_context(), timeout=10)
        else:
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        connection.request("POST", "/_control", json.dumps({"faults": list(faults)}))
        assert connection.getresponse().status == 200
        connection.close()

    def requests(self) -> list[dict[str, Any]]:
        if not os.path.exists(self.log):
            return []
        with open(self.log, encoding="utf-8") as handle:
            return [json.loads(line) for line in handle]

    def accepted(self) -> Counter[str]:
        """How often each uuid arrived in a request answered 2xx."""
        return Counter(uuid for entry in self.requests() if isinstance(entry["answer"], int)
                       and 200 <= entry["answer"] < 300 for uuid in entry.get("uuids", []))

    def sent(self) -> Counter[str]:
        """How often each uuid arrived at all (refused answers included): retries show here."""
        return Counter(uuid for entry in self.requests() for uuid in entry.get("uuids", []))


@pytest.fixture
def receivers(tmp_path: Any) -> Iterator[Any]:
    started: list[Receiver] = []

    def start(*options: str) -> Receiver:
        receiver = Receiver(tmp_path, *options).start()
        started.append(receiver)
        return receiver

    yield start
    for receiver in started:
        receiver.stop()


def legs(count: int) -> list[dict[str, Any]]:
    events = []
    for _ in range(count):
        call = str(uuidlib.uuid4())
        events.append(dict(ONE_LEG, **{"Unique-ID": call, "variable_uuid": call}))
    return events


def http_config(tmp_path: Any, http: dict[str, Any], **cdr: Any) -> Any:
    return make_config({"cdr": dict({"http": http}, **cdr)}, tmp_path)


def send(engine: Engine, events: list[dict[str, Any]], pause_s: float = 0.0) -> set[str]:
    for event in events:
        engine.handle(event)
        if pause_s:
            time.sleep(pause_s)
    return {event["Unique-ID"] for event in events}


def test_batches_arrive_as_ndjson_once_each_with_auth_signature_and_idempotency_key(tmp_path, receivers,
                                                                                    engines) -> None:
    receiver = receivers("--hmac-secret", "s3cret-hmac")
    engine = engines(http_config(tmp_path, {"url": receiver.url, "bearer": "tok-123", "hmac_secret": "s3cret-hmac",
                                            "headers": {"X-Switch": "fs1"}}, details=True))
    for scenario in SCENARIOS:
        for event in scenario_events(scenario):
            engine.handle(event)
    assert engine.flush(20), engine.status()
    accepted = receiver.accepted()
    assert len(accepted) == TOTAL_ROWS and set(accepted.values()) == {1}
    for entry in receiver.requests():
        headers = entry["headers"]
        assert headers["Content-Type"] == "application/x-ndjson" and headers["Authorization"] == "Bearer tok-123"
        assert headers["X-Switch"] == "fs1" and entry["signature_ok"] is True
        assert headers["Idempotency-Key"].startswith("batch-") and int(headers["X-CDR-Count"]) == len(entry["uuids"])
    status = engine.status()["sinks"][0]
    assert status["written"] == TOTAL_ROWS and status["healthy"]
    assert "tok-123" not in json.dumps(engine.status()) and "s3cret-hmac" not in json.dumps(engine.status())


def test_one_record_per_request_gzipped_with_basic_auth_and_the_uuid_as_idempotency_key(tmp_path, receivers,
                                                                                       engines) -> None:
    receiver = receivers()
    url = receiver.url.replace("http://", "http://fs:pa%3Ass@")
    engine = engines(http_config(tmp_path, {"url": url, "format": "single", "gzip": True}))
    sent = send(engine, legs(5))
    assert engine.flush(10), engine.status()
    requests = receiver.requests()
    assert len(requests) == 5 and {entry["headers"]["Idempotency-Key"] for entry in requests} == sent
    assert all(entry["headers"]["Content-Encoding"] == "gzip" for entry in requests)
    assert {entry["headers"]["Authorization"] for entry in requests} == {"Basic ZnM6cGE6c3M="}  # fs:pa:ss
    assert "pa:ss" not in json.dumps(engine.status()) and "pa%3Ass" not in json.dumps(engine.status())


def test_json_cdr_documents_look_like_mod_json_cdr_posts(tmp_path, receivers, engines) -> None:
    receiver = receivers()
    engine = engines(http_config(tmp_path, {"url": receiver.url, "format": "array", "document": "json_cdr"},
                                 details=True))
    event = dict(ONE_LEG, variable_sip_h_X_Note="a b&c")
    engine.handle(event)
    assert engine.flush(10)
    (entry,) = receiver.requests()
    assert entry["uuids"] == [ONE_LEG["Unique-ID"]] and entry["headers"]["Content-Type"] == "application/json"


def test_json_cdr_shape_and_url_encoded_values() -> None:
    from fs_cdr.config import parse_config
    from fs_cdr.record import RecordBuilder
    from fs_cdr.sinks.http import HttpEncoder

    config = parse_config({"cdr": {"details": True, "http": {"url": "http://x/", "document": "json_cdr"}}})
    record = RecordBuilder(config).build(dict(ONE_LEG, variable_note="a b&c%41"))
    assert record is not None
    uuid, document = HttpEncoder(config.sinks[0])(record)
    found = json.loads(document)
    assert uuid == ONE_LEG["Unique-ID"] and set(found) == {"core-uuid", "switchname", "channel_data", "variables"}
    assert found["core-uuid"] == ONE_LEG["Core-UUID"] and found["variables"]["uuid"] == uuid
    assert found["variables"]["note"] == "a%20b%26c%41"  # switch_url_encode: %41 already encoded, kept
    assert found["channel_data"]["state"] == "CS_REPORTING"


def test_failover_goes_to_the_next_url_in_order_and_stays_there(tmp_path, receivers, engines) -> None:
    receiver = receivers()
    dead = f"http://127.0.0.1:{free_port()}/cdr"  # nothing listens: connection refused
    engine = engines(http_config(tmp_path, {"url": [dead, receiver.url], "batch_size": 10}))
    sent = send(engine, legs(50), 0.002)
    assert engine.flush(10), engine.status()
    accepted = receiver.accepted()
    assert set(accepted) == sent and set(accepted.values()) == {1}
    assert engine.status()["sinks"][0]["retries"] == 0  # failing over is not a failed write


def test_a_burst_of_5xx_is_retried_until_every_record_is_in(tmp_path, receivers, engines) -> None:
    receiver = receivers()
    receiver.plan(*[{"status": status} for status in (500, 502, 503, 504, 503)])
    engine = engines(http_config(tmp_path, {"url": receiver.url, "batch_size": 20}))
    sent = send(engine, legs(100), 0.002)
    assert engine.flush(20), engine.status()
    accepted, arrived = receiver.accepted(), receiver.sent()
    assert set(accepted) == sent and set(accepted.values()) == {1}
    assert sum(arrived.values()) > len(sent)  # the refused batches came again: dedupe by uuid shows the retries
    assert [entry["answer"] for entry in receiver.requests()][:5] == [500, 502, 503, 504, 503]
    assert engine.status()["sinks"][0]["rejected"] == 0


@pytest.mark.parametrize("worker_process", [False, True], ids=["sink in-process", "sink in a worker"])
def test_429_retry_after_is_honoured_before_the_next_try(worker_process, tmp_path, receivers, engines) -> None:
    """Through a worker the wait crosses the pipe with the error."""
    receiver = receivers()
    receiver.plan({"status": 429, "retry_after": "2"})
    engine = engines(http_config(tmp_path, {"url": receiver.url, "worker_process": worker_process}))
    sent = send(engine, legs(3))
    assert engine.flush(20), engine.status()
    assert set(receiver.accepted()) == sent
    requests = receiver.requests()
    assert [entry["answer"] for entry in requests] == [429, 200]
    assert requests[1]["at"] - requests[0]["at"] >= 1.9, requests  # the receiver's clock, when each arrived


def test_a_receiver_that_never_answers_times_out_into_the_spool_then_all_arrive(tmp_path, receivers,
                                                                               engines) -> None:
    """Three requests in a row hang: each times out after 1 s, the sink counts as failing for longer
    than the durability window, and the records go to the spool; the fourth request takes them."""
    receiver = receivers()
    receiver.plan({"hang": True}, {"hang": True}, {"hang": True})
    engine = engines(http_config(tmp_path, {"url": receiver.url, "timeout_s": 1}, durable_window_ms=200))
    sent = send(engine, legs(40), 0.01)
    assert wait_for(lambda: engine.status()["sinks"][0]["spooled"] > 0 or engine.status()["sinks"][0]["replayed"] > 0,
                    10), engine.status()
    assert engine.flush(20), engine.status()
    accepted = receiver.accepted()
    assert set(accepted) == sent
    status = engine.status()["sinks"][0]
    assert "timed out" in status["last_error"].lower() and status["written"] >= len(sent)


def test_a_reset_mid_body_is_retried_and_nothing_is_lost(tmp_path, receivers, engines) -> None:
    receiver = receivers()
    receiver.plan({"reset": True}, {"reset": True})
    engine = engines(http_config(tmp_path, {"url": receiver.url, "batch_size": 50}, details=True))
    sent = send(engine, legs(100))
    assert engine.flush(20), engine.status()
    assert set(receiver.accepted()) == sent
    assert [entry["answer"] for entry in receiver.requests()][:2] == ["reset", "reset"]
    assert "reset" in engine.status()["sinks"][0]["last_error"].lower() or engine.status()["sinks"][0]["retries"]


@pytest.mark.parametrize("worker_process", [False, True], ids=["sink in-process", "sink in a worker"])
def test_a_receiver_restarted_mid_stream_gets_every_record_at_least_once(worker_process, tmp_path, receivers,
                                                                        engines) -> None:
    receiver = receivers()
    engine = engines(http_config(tmp_path, {"url": receiver.url, "batch_size": 20, "timeout_s": 1,
                                            "worker_process": worker_process}))
    events = legs(300)
    sent = send(engine, events[:100], 0.005)
    receiver.stop()
    sent |= send(engine, events[100:200], 0.005)
    receiver.start()
    sent |= send(engine, events[200:], 0.005)
    assert engine.flush(30), engine.status()
    accepted = receiver.accepted()
    assert set(accepted) == sent, len(sent - set(accepted))
    print(f"\nhttp receiver restart: sent {len(sent)}, arrived {len(accepted)}, "
          f"twice {sum(accepted.values()) - len(accepted)}")


def test_a_refused_record_is_set_aside_with_the_status_and_the_answer(tmp_path, receivers, engines) -> None:
    """The receiver refuses the first record each time it sees it (the batch, then the record alone,
    as the lane isolates it); the others are written."""
    receiver = receivers()
    receiver.plan(*[{"status": 422, "text": "caller_id_number: not a number"}] * 2)
    engine = engines(http_config(tmp_path, {"url": receiver.url}))
    sent = send(engine, legs(5))
    assert engine.flush(10), engine.status()
    status = engine.status()["sinks"][0]
    assert status["rejected"] == 1 and len(receiver.accepted()) == 4
    with open(tmp_path / "spool" / "http" / "rejected.jsonl", encoding="utf-8") as handle:
        (refused,) = [json.loads(line) for line in handle]
    assert "HTTP 422" in refused["error"] and "not a number" in refused["error"] and refused["record"]["uuid"] in sent


@pytest.mark.parametrize("status", [401, 403, 407, 302])
def test_auth_refusals_and_redirects_hold_the_records_and_say_so_loudly(status, tmp_path, receivers, engines,
                                                                      caplog) -> None:
    """The operator fixes these (a credential, a moved URL): nothing is set aside; the records wait."""
    receiver = receivers()
    receiver.plan(*[{"status": status, "location": "http://elsewhere/cdr?token=zzz"}] * 3)
    engine = engines(http_config(tmp_path, {"url": receiver.url, "bearer": "tok-secret", "worker_process": False}))
    with caplog.at_level(logging.ERROR, logger="fs_cdr.sinks.http"):
        sent = send(engine, legs(5))
        assert engine.flush(20), engine.status()
    status_now = engine.status()["sinks"][0]
    assert status_now["rejected"] == 0 and set(receiver.accepted()) == sent
    errors = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    assert any(f"HTTP {status}" in message for message in errors), errors
    assert "tok-secret" not in caplog.text and "zzz" not in caplog.text


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: Any) -> dict[str, str]:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate, by openssl."""
    if shutil.which("openssl") is None:
        pytest.skip("no openssl command to make the test certificates with")
    directory = tmp_path_factory.mktemp("tls")

    def run(*arguments: str) -> None:
        subprocess.run(["openssl", *arguments], cwd=directory, check=True, capture_output=True, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=fs_cdr test CA")
    for name, extension in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN={name}")
        (directory / f"{name}.ext").write_text(extension + "\n")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext")
    return {name: str(directory / name) for name in ("ca.pem", "server.pem", "server.key", "client.pem",
                                                      "client.key")}


def test_tls_with_the_ca_and_a_client_certificate(tmp_path, receivers, engines, certificates) -> None:
    receiver = receivers("--cert", certificates["server.pem"], "--key", certificates["server.key"],
                         "--client-ca", certificates["ca.pem"])
    engine = engines(http_config(tmp_path, {"url": receiver.url, "tls_ca_file": certificates["ca.pem"],
                                            "tls_cert_file": certificates["client.pem"],
                                            "tls_key_file": certificates["client.key"]}))
    sent = send(engine, legs(20))
    assert engine.flush(10), engine.status()
    assert set(receiver.accepted()) == sent


def test_tls_refuses_an_unknown_certificate_unless_told_not_to_verify(tmp_path, receivers, engines,
                                                                     certificates) -> None:
    receiver = receivers("--cert", certificates["server.pem"], "--key", certificates["server.key"])
    strict = engines(http_config(tmp_path, {"url": receiver.url, "timeout_s": 1}, durable_window_ms=100))
    send(strict, legs(5))
    assert wait_for(lambda: strict.status()["sinks"][0]["spooled"] == 5, 10), strict.status()
    assert "CERTIFICATE_VERIFY_FAILED" in strict.status()["sinks"][0]["last_error"]
    assert receiver.accepted() == Counter()
    lax = engines(http_config(tmp_path, {"url": receiver.url, "tls_verify": False},
                              spool_dir=str(tmp_path / "spool-lax")))
    sent = send(lax, legs(5))
    assert lax.flush(10), lax.status()
    assert set(receiver.accepted()) == sent


def test_gzip_body_is_what_the_signature_covers(tmp_path, receivers, engines) -> None:
    receiver = receivers("--hmac-secret", "k")
    engine = engines(http_config(tmp_path, {"url": receiver.url, "gzip": True, "hmac_secret": "k"}))
    send(engine, legs(3))
    assert engine.flush(10)
    assert [entry["signature_ok"] for entry in receiver.requests()] == [True]


def test_fs_cdr_check_connects_to_the_receiver_and_says_why_not(tmp_path, receivers, certificates) -> None:
    plain = receivers()
    tls = receivers("--cert", certificates["server.pem"], "--key", certificates["server.key"])
    dead = f"http://127.0.0.1:{free_port()}/cdr"
    answers = []
    for name, section in (("up", {"url": plain.url}), ("down", {"url": dead}),
                          ("failover", {"url": [dead, plain.url]}), ("unknown-ca", {"url": tls.url})):
        (tmp_path / f"{name}.json").write_text(json.dumps({"cdr": {"spool_dir": str(tmp_path / name),
                                                                   "http": section}}))
        result = subprocess.run([sys.executable, "-m", "fs_cdr.cli", "-c", str(tmp_path / f"{name}.json"), "check"],
                                check=False, capture_output=True, text=True, timeout=60)
        answers.append((result.returncode, result.stdout.split()[0]))
    assert answers == [(0, "OK"), (1, "FAIL"), (0, "OK"), (1, "FAIL")]
    assert plain.requests() == []  # a check connects; it posts nothing
