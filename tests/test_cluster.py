"""Beyond one switch: RabbitMQ with publisher confirms, Redis Streams with consumer groups, and several
engines (switches) writing into one MariaDB / PostgreSQL table at once. Real servers only."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections import Counter

import pytest
from conftest import database_entry, drop_table, hangups, make_config, rows
from servers import rabbit_drain, rabbit_exchange

from fs_cdr.engine import Engine

TEMPLATE = hangups("b_bridge_null")[1]


def event(tag: str, index: int, switch: str = "sw1", direction: str = "inbound") -> dict:
    return dict(TEMPLATE, **{"Unique-ID": f"{tag}-{index:05d}", "FreeSWITCH-Switchname": switch,
                             "variable_direction": direction})


@pytest.fixture
def rabbit():
    pytest.importorskip("pika")
    yield from rabbit_exchange("fs_cdr_test_", (("inbound", "cdr.inbound.#"), ("outbound", "cdr.outbound.#")))


def drain(queue: str) -> list[dict]:
    found = []
    for _, properties, body in rabbit_drain(queue):
        assert properties.delivery_mode == 2 and properties.message_id
        found.append(json.loads(body))
    return found


def test_rabbitmq_routes_by_field_and_confirms(rabbit, tmp_path, engines) -> None:
    exchange, queues = rabbit
    engine = engines(make_config({"cdr": {"details": True, "rabbitmq": {
        "exchange": exchange, "routing_key": "cdr.${direction}.${switchname}"}}}, tmp_path))
    for index in range(300):
        engine.handle(event("rmq", index, direction="inbound" if index % 3 else "outbound"))
    assert engine.flush(30), engine.status()
    inbound, outbound = drain(queues["inbound"]), drain(queues["outbound"])
    assert len(inbound) == 200 and len(outbound) == 100
    assert all(record["direction"] == "inbound" for record in inbound)
    assert isinstance(inbound[0]["details"], dict)
    assert engine.status()["sinks"][0]["written"] == 300


def test_rabbitmq_unroutable_records_wait_in_the_spool_until_a_queue_is_bound(rabbit, tmp_path, engines) -> None:
    import pika

    exchange, queues = rabbit
    engine = engines(make_config({"cdr": {"rabbitmq": {"exchange": exchange, "routing_key": "nowhere.${uuid}",
                                                       "timeout_s": 2}}}, tmp_path))
    for index in range(20):
        engine.handle(event("unrouted", index))
    deadline = time.time() + 10
    while engine.status()["sinks"][0]["spooled"] < 20 and time.time() < deadline:
        time.sleep(0.05)
    status = engine.status()["sinks"][0]
    assert status["spooled"] == 20 and not status["healthy"] and "Unroutable" in status["last_error"]
    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1"))
    connection.channel().queue_bind(queues["inbound"], exchange, "nowhere.#")
    connection.close()
    engine.replay()
    assert engine.flush(30)
    assert sorted(record["uuid"] for record in drain(queues["inbound"])) == [f"unrouted-{i:05d}" for i in range(20)]


def test_rabbitmq_broker_restart_mid_stream_loses_nothing(rabbit, tmp_path, engines) -> None:
    exchange, queues = rabbit
    engine = engines(make_config({"cdr": {"rabbitmq": {"exchange": exchange, "routing_key": "cdr.${direction}",
                                                       "timeout_s": 2}}}, tmp_path))

    def feed() -> None:
        for index in range(400):
            engine.handle(event("restart", index))
            time.sleep(1 / 100)

    feeder = threading.Thread(target=feed)
    feeder.start()
    time.sleep(1)
    subprocess.run(["rabbitmqctl", "stop_app"], check=True, capture_output=True, timeout=60)
    try:
        time.sleep(2)
    finally:
        subprocess.run(["rabbitmqctl", "start_app"], check=True, capture_output=True, timeout=120)
    feeder.join()
    assert engine.flush(90), engine.status()
    arrived = Counter(record["uuid"] for record in drain(queues["inbound"]))
    print(f"\nrabbitmq restart: sent 400, arrived {len(arrived)}, duplicated {sum(arrived.values()) - len(arrived)}")
    assert set(arrived) == {f"restart-{i:05d}" for i in range(400)}


def test_redis_stream_consumer_group_reads_every_record_once(tmp_path, engines, table_name) -> None:
    import redis

    client = redis.Redis()
    stream = f"fs_cdr_test:{{{table_name}}}:stream"  # the hash tag keeps one switch's keys in one slot
    client.xgroup_create(stream, "billing", id="0", mkstream=True)
    try:
        engine = engines(make_config({"cdr": {"redis": {"stream": stream, "stream_maxlen": 10000}}}, tmp_path))
        for index in range(250):
            engine.handle(event("stream", index))
        assert engine.flush(20)
        seen = Counter()
        for consumer in ("c1", "c2"):  # two consumers of one group share the work
            while True:
                batch = client.xreadgroup("billing", consumer, {stream: ">"}, count=40)
                if not batch:
                    break
                for entry_id, fields in batch[0][1]:
                    record = json.loads(fields[b"record"])
                    assert record["uuid"] == fields[b"uuid"].decode()
                    seen[record["uuid"]] += 1
                    client.xack(stream, "billing", entry_id)
        assert len(seen) == 250 and set(seen.values()) == {1}
        assert client.xpending(stream, "billing")["pending"] == 0
    finally:
        client.delete(stream)


@pytest.mark.parametrize("kind", ["mysql", "postgresql"])
def test_several_switches_write_one_table_at_once(kind, tmp_path, table_name) -> None:
    """Four engines (four switches) upsert into one table concurrently; each also re-sends the same
    200 shared records (as replays after a failover would), so upserts collide on the same keys."""
    engines_ = []
    for number in range(4):
        config = make_config({"cdr": {"database": dict(database_entry(kind, table_name, tmp_path), batch_size=100),
                                      "spool_dir": str(tmp_path / f"spool{number}")}}, tmp_path)
        engines_.append(Engine(config).start())
    try:
        def feed(number: int, engine: Engine) -> None:
            for index in range(1500):
                engine.handle(event(f"sw{number}", index, switch=f"sw{number}"))
                if index % 7 == 0:
                    engine.handle(event("shared", index // 7, switch="shared"))

        threads = [threading.Thread(target=feed, args=(number, engine)) for number, engine in enumerate(engines_)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for engine in engines_:
            assert engine.flush(120), engine.status()
        found = rows(kind, tmp_path, table_name, "uuid, switchname")
        assert len(found) == 4 * 1500 + 215
        assert Counter(row["switchname"] for row in found) == {"sw0": 1500, "sw1": 1500, "sw2": 1500, "sw3": 1500,
                                                                "shared": 215}
        assert sum(engine.status()["sinks"][0]["rejected"] for engine in engines_) == 0
    finally:
        for engine in engines_:
            engine.stop()
        drop_table(kind, tmp_path, table_name)


def _start_redis(directory, port: int, *extra: str) -> None:
    subprocess.run(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
                    "--save", "", "--appendonly", "no", "--daemonize", "yes",
                    "--logfile", str(directory / f"{port}.log"), *extra], check=True, capture_output=True)


@pytest.fixture
def redis_cluster(tmp_path):
    """A private three-node Redis Cluster on loopback."""
    ports = (7101, 7102, 7103)
    for port in ports:
        (tmp_path / str(port)).mkdir()
        _start_redis(tmp_path / str(port), port, "--cluster-enabled", "yes",
                     "--cluster-config-file", str(tmp_path / str(port) / "nodes.conf"))
    time.sleep(0.5)
    subprocess.run(["redis-cli", "--cluster", "create", *(f"127.0.0.1:{port}" for port in ports),
                    "--cluster-replicas", "0", "--cluster-yes"], check=True, capture_output=True, timeout=60)
    import redis

    deadline = time.time() + 20
    while redis.Redis(port=ports[0]).cluster("info").get("cluster_state") != "ok" and time.time() < deadline:
        time.sleep(0.2)
    yield ports[0]
    for port in ports:
        subprocess.run(["redis-cli", "-p", str(port), "shutdown", "nosave"], capture_output=True)


def test_redis_cluster_list_stream_and_channel_with_hash_tags(redis_cluster, tmp_path, engines) -> None:
    from redis.cluster import RedisCluster

    client = RedisCluster(host="127.0.0.1", port=redis_cluster)
    pubsub = client.pubsub()
    pubsub.subscribe("cdr:{fs1}")
    time.sleep(0.2)
    engine = engines(make_config({"cdr": {"redis": {
        "host": "127.0.0.1", "port": redis_cluster, "cluster": True,
        "list": "cdr:{fs1}:list", "stream": "cdr:{fs1}:stream", "channel": "cdr:{fs1}"}}}, tmp_path))
    for index in range(100):
        engine.handle(event("cluster", index))
    assert engine.flush(20), engine.status()
    assert client.llen("cdr:{fs1}:list") == 100 and client.xlen("cdr:{fs1}:stream") == 100
    received = 0
    deadline = time.time() + 5
    while received < 100 and time.time() < deadline:
        message = pubsub.get_message(timeout=0.5)
        if message and message["type"] == "message":
            received += 1
    assert received == 100
    pubsub.close()


def test_redis_behind_sentinel(tmp_path, engines) -> None:
    import redis

    _start_redis(tmp_path, 7201)
    sentinel_conf = tmp_path / "sentinel.conf"
    sentinel_conf.write_text("port 26391\nbind 127.0.0.1\nsentinel monitor fs_cdr_test 127.0.0.1 7201 1\n")
    subprocess.run(["redis-server", str(sentinel_conf), "--sentinel", "--daemonize", "yes",
                    "--logfile", str(tmp_path / "sentinel.log")], check=True, capture_output=True)
    try:
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                if redis.Redis(port=26391).sentinel_master("fs_cdr_test"):
                    break
            except redis.RedisError:
                time.sleep(0.2)
        engine = engines(make_config({"cdr": {"redis": {
            "sentinels": [["127.0.0.1", 26391]], "service_name": "fs_cdr_test", "list": "cdr"}}}, tmp_path))
        for index in range(20):
            engine.handle(event("sentinel", index))
        assert engine.flush(20), engine.status()
        assert redis.Redis(port=7201).llen("cdr") == 20
    finally:
        subprocess.run(["redis-cli", "-p", "26391", "shutdown", "nosave"], capture_output=True)
        subprocess.run(["redis-cli", "-p", "7201", "shutdown", "nosave"], capture_output=True)
