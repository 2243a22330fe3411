"""Recorded FreeSWITCH events through the real engine into real SQLite, MariaDB, PostgreSQL and Redis."""

from __future__ import annotations

import json
import threading
import time

import pytest

from conftest import EXPECTED_ROWS, SCENARIOS, SEED_FIELDS, TOTAL_ROWS, assert_a_missing_column_is_named, connect, database_entry, drop_table, hangups, make_config, rows, scenario_events
from fs_cdr.engine import Engine, probe_config
from fs_cdr.source import play
from fs_cdr.errors import RetriableError
from fs_cdr.sinks.redis import RedisSink, payload
from processes import wait_for


def feed(engine: Engine, scenarios) -> None:
    for scenario in scenarios:
        for event in scenario_events(scenario):
            engine.handle(event)
    assert engine.flush(20), engine.status()


def test_every_recorded_scenario_gives_one_row_per_leg(sql_kind, table_name, tmp_path, engines) -> None:
    config = make_config({"cdr": {"database": database_entry(sql_kind, table_name, tmp_path)}}, tmp_path)
    engine = engines(config)
    for scenario in SCENARIOS:
        before = len(rows(sql_kind, tmp_path, table_name, "uuid")) if scenario != SCENARIOS[0] else 0
        feed(engine, [scenario])
        after = len(rows(sql_kind, tmp_path, table_name, "uuid"))
        assert after - before == EXPECTED_ROWS[scenario], scenario
    found = {row["uuid"]: row for row in rows(sql_kind, tmp_path, table_name)}
    a, b = found["0c9f051d-1620-4ce1-9fcf-241ca4a161e8"], found["30f4df84-36a1-4a07-83b1-8bb47b9b481f"]
    assert (a["leg"], b["leg"], b["originator"], a["bridge_uuid"], b["bridge_uuid"]) == (
        "a", "b", a["uuid"], b["uuid"], a["uuid"])
    assert a["originator"] is None
    assert (a["billsec"], a["duration"], a["answer_epoch"]) == (3, 3, 1795746290)
    assert isinstance(a["billsec"], int) and isinstance(a["end_epoch"], int)
    unanswered = found["2a35fbcc-e508-4a8f-bd49-70a163df798e"]
    assert (unanswered["billsec"], unanswered["answer_epoch"], unanswered["hangup_cause"]) == (0, None, "NO_ANSWER")
    status = engine.status()["sinks"][0]
    assert status["received"] == status["written"] == TOTAL_ROWS and status["healthy"]


def test_writing_the_same_calls_again_leaves_one_row_per_leg(sql_kind, table_name, tmp_path, engines) -> None:
    config = make_config({"cdr": {"database": database_entry(sql_kind, table_name, tmp_path)}}, tmp_path)
    engine = engines(config)
    feed(engine, SCENARIOS)
    feed(engine, SCENARIOS)
    assert len(rows(sql_kind, tmp_path, table_name, "uuid")) == TOTAL_ROWS
    assert engine.status()["sinks"][0]["written"] == 2 * TOTAL_ROWS


def test_fields_and_details_round_trip(sql_kind, table_name, tmp_path, engines) -> None:
    fields = SEED_FIELDS + ["queue_name", "caller:${caller_id_name}|${caller_id_number}", "number:q:queue_size"]
    config = make_config(
        {"cdr": {"details": True, "fields": fields, "database": database_entry(sql_kind, table_name, tmp_path)}},
        tmp_path,
    )
    engine = engines(config)
    event = dict(
        hangups("b_bridge_null")[1],
        variable_rtp_last_audio_codec_string="PCMA@8000h@20i",
        variable_queue_name="support",
        variable_caller_id_name="Zoë 张",
        variable_caller_id_number="1001",
        variable_queue_size="",
        **{"variable_sip_h_X-jssipid": "js-1"},
    )
    engine.handle(event)
    assert engine.flush(10)
    (row,) = rows(sql_kind, tmp_path, table_name)
    assert row["rtp_last_audio_codec_string"] == "PCMA@8000h@20i"
    assert row["jsipid"] == "js-1" and row["queue_name"] == "support"
    assert row["caller"] == "Zoë 张|1001"
    assert row["q"] is None  # empty number: NULL, never a failed insert
    assert row["record_filename"] is None
    details = row["details"] if isinstance(row["details"], dict) else json.loads(row["details"])
    expected = {key[len("variable_"):]: value for key, value in event.items() if key.startswith("variable_")}
    assert details == expected


@pytest.mark.parametrize("worker_process", [True, False], ids=["sink in a worker", "sink in-process"])
def test_a_configured_field_without_a_column_is_an_error_naming_it(worker_process, sql_kind, table_name,
                                                                   tmp_path) -> None:
    """Through a worker the error comes back over the pipe with its key path intact."""
    assert_a_missing_column_is_named(dict(database_entry(sql_kind, table_name, tmp_path),
                                          worker_process=worker_process), tmp_path)


def test_a_table_created_meanwhile_by_another_writer_is_taken_as_it_is(sql_kind, table_name, tmp_path) -> None:
    """The check said the table was missing, but by the time CREATE TABLE runs another writer (or
    another switch) has made it: the CREATE fails, and the sink opens all the same."""
    from fs_cdr.record import RecordBuilder
    from fs_cdr.schema import table_columns
    from fs_cdr.sinks.sql import SqlSink, dialect_for

    config = make_config({"cdr": {"database": database_entry(sql_kind, table_name, tmp_path)}}, tmp_path)
    probe_config(config)  # the other writer's table
    database = config.databases[0]
    sink = SqlSink(dialect_for(database.dbtype, database), database, table_columns(config))
    looked = []

    def existing_columns() -> set:
        looked.append(True)
        return set() if len(looked) == 1 else SqlSink.existing_columns(sink)

    sink.existing_columns = existing_columns  # the first look misses it, as a race would
    sink.open()
    try:
        assert len(looked) >= 2
        record = RecordBuilder(config).build(hangups("b_bridge_null")[0])
        sink.write([dict(record, uuid="meanwhile-1")])
    finally:
        sink.close()
    assert [row["uuid"] for row in rows(sql_kind, tmp_path, table_name, "uuid")] == ["meanwhile-1"]


def test_writers_that_create_the_table_at_the_same_moment_all_open(table_name, tmp_path) -> None:
    """Two default writers per database server open at once on a fresh database; PostgreSQL fails the
    loser's CREATE TABLE with a unique violation in pg_type."""
    from fs_cdr.schema import table_columns
    from fs_cdr.sinks.sql import SqlSink, dialect_for

    for attempt in range(3):
        table = f"{table_name}_{attempt}"
        config = make_config({"cdr": {"database": database_entry("postgresql", table, tmp_path)}}, tmp_path)
        database = config.databases[0]
        start = threading.Barrier(6)
        errors: list[BaseException] = []

        def open_one() -> None:
            sink = SqlSink(dialect_for(database.dbtype, database), database, table_columns(config))
            start.wait()
            try:
                sink.open()
            except BaseException as error:  # noqa: BLE001 - collected for the assertion
                errors.append(error)
            finally:
                sink.close()

        threads = [threading.Thread(target=open_one) for _ in range(6)]
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
            assert errors == []
        finally:
            drop_table("postgresql", tmp_path, table)


def test_schema_ddl_creates_a_table_the_engine_accepts(sql_kind, table_name, tmp_path) -> None:
    from fs_cdr.schema import table_columns
    from fs_cdr.sinks.sql import dialect_for

    config = make_config({"cdr": {"details": True, "fields": ["queue_name", "number:score"],
                                  "database": database_entry(sql_kind, table_name, tmp_path)}}, tmp_path)
    dialect = dialect_for(config.databases[0].dbtype)
    connection = connect(sql_kind, tmp_path)
    cursor = connection.cursor()
    cursor.execute(dialect.create_table(table_name, table_columns(config)))
    connection.commit()
    connection.close()
    probe_config(config)


# -- Redis --------------------------------------------------------------------------------------

@pytest.fixture
def redis_client():
    import redis

    client = redis.Redis(host="127.0.0.1", port=6379)
    yield client
    client.close()


@pytest.fixture(params=[True, False], ids=["direct socket", "through redis-py"])
def redis_path(request, monkeypatch):
    """Both ways a batch reaches Redis: sendmsg and hiredis on the connection's socket (plain TCP),
    and redis-py's send_packed_command and read_response (TLS, or no hiredis). In-process sinks only:
    a worker process imports its own module."""
    from fs_cdr.sinks import redis as redis_sink

    monkeypatch.setattr(redis_sink, "DIRECT_SOCKET", request.param)
    real, calls = redis_sink._read_replies, []
    monkeypatch.setattr(redis_sink, "_read_replies", lambda *args: calls.append(args) or real(*args))
    yield request.param
    assert bool(calls) == request.param  # the path named is the path taken


def test_redis_list_and_channel_carry_one_json_document_per_record(redis_client, tmp_path, engines, table_name,
                                                                   redis_path) -> None:
    key = f"fs_cdr_test:{table_name}"
    pubsub = redis_client.pubsub()
    pubsub.subscribe(key)
    assert pubsub.get_message(timeout=2)["type"] == "subscribe"
    received: list[dict] = []

    def listen() -> None:
        deadline = time.time() + 10
        while len(received) < TOTAL_ROWS and time.time() < deadline:
            message = pubsub.get_message(timeout=0.5)
            if message and message["type"] == "message":
                received.append(json.loads(message["data"]))

    listener = threading.Thread(target=listen)
    listener.start()
    try:
        config = make_config({"cdr": {"details": True, "fields": ["number:billsec"],
                                      "redis": {"list": key, "channel": key, "worker_process": False}}}, tmp_path)
        engine = engines(config)
        feed(engine, SCENARIOS)
        listener.join(15)
        listed = [json.loads(item) for item in redis_client.lrange(key, 0, -1)]
    finally:
        redis_client.delete(key)
        pubsub.close()
    assert len(listed) == TOTAL_ROWS and len(received) == TOTAL_ROWS
    assert {record["uuid"] for record in listed} == {record["uuid"] for record in received}
    first_hangup = hangups(SCENARIOS[0])[0]["Unique-ID"]
    assert listed[-1]["uuid"] == first_hangup  # LPUSH: the oldest record is at the tail, for BRPOP
    record = next(item for item in received if item["uuid"] == "30f4df84-36a1-4a07-83b1-8bb47b9b481f")
    assert record["leg"] == "b" and record["originator"] == "0c9f051d-1620-4ce1-9fcf-241ca4a161e8"
    assert record["billsec"] == 3 and isinstance(record["details"], dict)
    assert record["details"]["originator"] == record["originator"]


def test_an_error_reply_mid_batch_keeps_records_waiting_then_each_arrives_once_in_order(
        redis_client, tmp_path, engines, table_name) -> None:
    """The list key holds a string: Redis answers LPUSH with WRONGTYPE while the commands packed behind
    it (PUBLISH, XADD) succeed. The batch is retried whole (on a fresh connection: replies left unread on the
    old one must never be taken for the next batch's), spooled past the window, and once the key is
    fixed every record is listed exactly once, oldest at the tail."""
    key = f"fs_cdr_test:{table_name}"
    redis_client.set(key, "not a list")
    config = make_config({"cdr": {"durable_window_ms": 200, "redis": {
        "list": key, "channel": key, "stream": key + ":s"}}}, tmp_path)
    engine = engines(config)
    try:
        uuids = []
        for scenario in SCENARIOS:
            for event in scenario_events(scenario):
                record = engine.handle(event)
                if record is not None:
                    uuids.append(record["uuid"])
        lane = engine.lanes[0]
        assert wait_for(lambda: lane.spool.pending == TOTAL_ROWS, 15), engine.status()
        status = engine.status()["sinks"][0]
        assert "WRONGTYPE" in status["last_error"] and status["written"] == 0, status
        redis_client.delete(key)
        engine.replay()
        assert engine.flush(30), engine.status()
        listed = [json.loads(item)["uuid"] for item in redis_client.lrange(key, 0, -1)]
        assert listed == list(reversed(uuids))
        # XADD succeeded in the failed attempts too: a stream is at least once, and its entries carry
        # the uuid so that consumers drop what a retry adds again
        streamed = [fields[b"uuid"].decode() for _, fields in redis_client.xrange(key + ":s")]
        assert list(dict.fromkeys(streamed)) == uuids
    finally:
        redis_client.delete(key, key + ":s")


def test_after_an_error_reply_the_next_command_gets_its_own_reply(redis_client, tmp_path, table_name,
                                                                  redis_path) -> None:
    """A batch is packed as one packet and fails at its first error reply, with the rest unread: that
    connection must not serve again, or every later command would read an earlier one's answer."""
    key = f"fs_cdr_test:{table_name}"
    redis_client.set(key, "not a list")
    sink = RedisSink(make_config({"cdr": {"redis": {"list": key, "channel": key}}}, tmp_path).redis)
    sink.open()
    try:
        with pytest.raises(RetriableError, match="WRONGTYPE"):
            sink.write([{"uuid": f"u{index}", "billsec": index, "details": "{}"} for index in range(5)])
        assert sink._client.ping() is True  # not the "0 subscribers" of a PUBLISH left unread
        assert sink._client.get(key) == b"not a list"
    finally:
        sink.close()
        redis_client.delete(key)


def test_redis_payload_keeps_details_exact() -> None:
    details = json.dumps({"caller": "\"quoted\" \\ 名前 \u202e", "n": "1"}, ensure_ascii=False)
    document = json.loads(payload({"uuid": "u1", "billsec": 0, "details": details}))
    assert document == {"uuid": "u1", "billsec": 0, "details": json.loads(details)}


def test_several_sinks_at_once_get_every_record(tmp_path, engines, table_name, redis_client) -> None:
    key = f"fs_cdr_test:{table_name}"
    config = make_config({"cdr": {"database": [database_entry("sqlite", table_name, tmp_path),
                                               dict(database_entry("postgresql", table_name, tmp_path), name="pg")],
                                  "redis": {"list": key}}}, tmp_path)
    try:
        engine = engines(config)
        feed(engine, SCENARIOS)
        assert len(rows("sqlite", tmp_path, table_name)) == TOTAL_ROWS
        assert len(rows("postgresql", tmp_path, table_name)) == TOTAL_ROWS
        assert redis_client.llen(key) == TOTAL_ROWS
    finally:
        redis_client.delete(key)
        from conftest import drop_table

        drop_table("postgresql", tmp_path, table_name)


# -- PostgreSQL: new rows by COPY, the upsert for the rest ---------------------------------------

def _pg_sink(table_name, tmp_path, real=False, details=False):
    """A PostgreSQL sink whose bulk inserts (COPY) are counted: how many were tried."""
    from fs_cdr.schema import table_columns
    from fs_cdr.sinks.sql import SqlSink, dialect_for

    config = make_config({"cdr": {"details": details, "database": dict(
        database_entry("postgresql", table_name, tmp_path), real=real)}}, tmp_path)
    database = config.databases[0]
    dialect = dialect_for(database.dbtype, database)
    tried = []
    copy = dialect.insert_in_bulk

    def counted(*args):
        tried.append(len(args[2]))
        return copy(*args)

    dialect.insert_in_bulk = counted
    sink = SqlSink(dialect, database, table_columns(config))
    sink.open()
    return config, sink, tried


def _calls(config, count, prefix):
    from fs_cdr.record import RecordBuilder

    record = RecordBuilder(config).build(hangups("b_bridge_null")[0])
    return [dict(record, uuid=f"{prefix}-{index}", call_state="completed", event_seq=1) for index in range(count)]


def test_postgresql_writes_new_batches_by_copy_and_upserts_a_batch_that_meets_a_stored_row(table_name, tmp_path,
                                                                                            monkeypatch) -> None:
    """A replay after a crash, or an import run twice, sends rows the table has: COPY then writes
    nothing, the batch is upserted (the stored row takes the new values), and the next batches are
    upserted until the pause is over."""
    import fs_cdr.sinks.sql as sql

    monkeypatch.setattr(sql, "BULK_PAUSE_S", 1.0)
    config, sink, tried = _pg_sink(table_name, tmp_path)
    try:
        sink.write(_calls(config, 3, "first"))
        assert tried == [3]
        again = _calls(config, 2, "second") + [dict(_calls(config, 1, "first")[0], hangup_cause="USER_BUSY")]
        sink.write(again)
        assert tried == [3, 3]  # tried, met first-0, upserted
        sink.write(_calls(config, 2, "third"))
        assert tried == [3, 3]  # paused: upserted without trying
        time.sleep(1.1)
        sink.write(_calls(config, 2, "fourth"))
        assert tried == [3, 3, 2]
        found = {row["uuid"]: row for row in rows("postgresql", tmp_path, table_name)}
        assert sorted(found) == ["first-0", "first-1", "first-2", "fourth-0", "fourth-1", "second-0", "second-1",
                                 "third-0", "third-1"]
        assert found["first-0"]["hangup_cause"] == "USER_BUSY" and found["first-1"]["hangup_cause"] != "USER_BUSY"
    finally:
        sink.close()
        drop_table("postgresql", tmp_path, table_name)


def test_postgresql_copy_and_upsert_store_the_same_row(table_name, tmp_path) -> None:
    config, sink, tried = _pg_sink(table_name, tmp_path)
    try:
        (record,) = _calls(config, 1, "same")
        awkward = "tab\there \\N \\. \\\\ line\nbreak\r \u202e 😀 'quote' \"dq\" %s $1"
        record.update(caller_id_name=awkward, channel_name="\\N", billsec=None, duration=2**63 - 1)
        sink.write([record])
        by_copy = rows("postgresql", tmp_path, table_name)
        sink.write([record])  # already there: upserted
        assert tried == [1, 1]
        assert rows("postgresql", tmp_path, table_name) == by_copy
        assert by_copy[0]["caller_id_name"] == awkward and by_copy[0]["channel_name"] == "\\N"
        assert by_copy[0]["billsec"] is None and by_copy[0]["duration"] == 2**63 - 1
    finally:
        sink.close()
        drop_table("postgresql", tmp_path, table_name)


def test_postgresql_upserts_rows_with_details(table_name, tmp_path) -> None:
    """With 10 KB of details a row, COPY costs the server as much as the upsert or more (bench/run.py):
    such a table is always upserted."""
    config, sink, tried = _pg_sink(table_name, tmp_path, details=True)
    try:
        sink.write(_calls(config, 2, "detailed"))
        assert tried == []
        assert all(row["details"]["uuid"] for row in rows("postgresql", tmp_path, table_name))
    finally:
        sink.close()
        drop_table("postgresql", tmp_path, table_name)


def test_postgresql_real_time_rows_are_never_copied(table_name, tmp_path) -> None:
    """In real-time mode a row is there from the channel's start; only the guarded upsert may touch it
    (an older update never overwrites a newer one), so nothing is tried by COPY."""
    config, sink, tried = _pg_sink(table_name, tmp_path, real=True)
    try:
        sink.write(_calls(config, 2, "live"))
        assert tried == [] and len(rows("postgresql", tmp_path, table_name, "uuid")) == 2
    finally:
        sink.close()
        drop_table("postgresql", tmp_path, table_name)
