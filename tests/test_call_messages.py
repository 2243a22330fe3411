"""Call messages on Redis and RabbitMQ (``"calls": {...}`` in their sections): one message per call
each time a batch touches it, the call as every leg sent so far makes it (fs_cdr/calls.py
CallBook), so the newest message of a call is its row in a database's call table, whatever the
order its legs came in and however often one was replayed. Real Redis and RabbitMQ."""

from __future__ import annotations

import json
import os
import tempfile
import uuid as uuidlib
from pathlib import Path
from typing import Any

import pytest
from conftest import hangups, make_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from servers import rabbit_drain, rabbit_exchange
from test_call_center import EXPECTED_CALLS, MANY, RECORDED, SCENARIOS, call_of, legs_of

from fs_cdr.calls import CallBook, calls_of
from fs_cdr.errors import ConfigError, RetriableError
from fs_cdr.sinks import targets

redis = pytest.importorskip("redis")


@pytest.fixture
def keys():
    name = "fs_cdr_calls_" + uuidlib.uuid4().hex[:8]
    client = redis.Redis()
    yield name
    for key in client.keys(name + "*"):
        client.delete(key)


def latest(documents: list[bytes]) -> dict[str, dict[str, Any]]:
    """The newest message of each call, from the oldest first."""
    found: dict[str, dict[str, Any]] = {}
    for document in documents:
        row = json.loads(document)
        found[row["uuid"]] = row
    return found


def redis_calls(key: str) -> dict[str, dict[str, Any]]:
    return latest(list(reversed(redis.Redis().lrange(key, 0, -1))))  # LPUSH: the newest first


def redis_sink(directory: Path, key: str, **calls: Any) -> Any:
    config = make_config({"cdr": {"columns": "extended", "redis": {
        "list": key, "calls": dict({"list": key + "_call"}, **calls)}}}, directory)
    (target,) = targets(config)
    sink = target.open_sink()
    sink.open()
    return sink


def test_each_recorded_call_reaches_redis_as_its_call_row(keys, tmp_path, engines) -> None:
    engine = engines(make_config({"cdr": {"columns": "extended", "redis": {
        "list": keys, "stream": keys + "_s", "calls": {"list": keys + "_call", "stream": keys + "_call_s"}}}},
        tmp_path))
    for scenario in RECORDED:
        for event in hangups(scenario):
            engine.handle(dict(event))
    assert engine.flush(30), engine.status()
    found = redis_calls(keys + "_call")
    for scenario in RECORDED:
        expected = call_of(scenario)
        if expected is not None:
            assert found[expected["uuid"]] == expected, scenario
            _, columns = SCENARIOS[scenario]
            assert {name: found[expected["uuid"]][name] for name in columns} == columns
    # the call stream carries the same messages, each with its call's uuid as a field
    entries = redis.Redis().xrange(keys + "_call_s")
    assert latest([fields[b"record"] for _, fields in entries]) == found
    assert all(fields[b"uuid"].decode() == json.loads(fields[b"record"])["uuid"] for _, fields in entries)
    assert len(redis.Redis().lrange(keys, 0, -1)) == engine.status()["records"]  # every leg, once
    assert engine.status()["sinks"][0]["written"] == engine.status()["records"]


@st.composite
def arrivals(draw: st.DrawFn) -> tuple[list[int], list[int]]:
    """Every leg at least once, in any order, some replayed, in batches of any size."""
    order = draw(st.permutations(range(len(MANY))))
    for index in draw(st.lists(st.integers(0, len(MANY) - 1), max_size=6)):
        order.insert(draw(st.integers(0, len(order))), index)
    cuts = draw(st.lists(st.integers(0, len(order)), max_size=5))
    return order, cuts


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(arrival=arrivals())
def test_the_newest_call_message_is_the_same_in_any_order_and_with_replays(keys, arrival) -> None:
    order, cuts = arrival
    key = f"{keys}_{uuidlib.uuid4().hex[:6]}"
    sequence = [MANY[index] for index in order]
    bounds = sorted({0, len(sequence), *(cut % (len(sequence) + 1) for cut in cuts)})
    with tempfile.TemporaryDirectory() as directory:
        # a new sink (a restart) at every batch: the legs kept before are in the book on disk
        for start, end in zip(bounds, bounds[1:]):
            sink = redis_sink(Path(directory), key)
            try:
                sink.write(sequence[start:end])
            finally:
                sink.close()
    assert redis_calls(key + "_call") == EXPECTED_CALLS


def test_a_call_message_waits_for_its_originating_leg(keys, tmp_path) -> None:
    sink = redis_sink(tmp_path, keys)
    try:
        sink.write([leg for leg in MANY if leg["call_key"] != leg["uuid"]])
        assert redis_calls(keys + "_call") == {}
        sink.write([leg for leg in MANY if leg["call_key"] == leg["uuid"]])  # the originating legs
    finally:
        sink.close()
    assert redis_calls(keys + "_call") == EXPECTED_CALLS


def test_real_time_updates_make_no_call_messages(keys, tmp_path) -> None:
    sink = redis_sink(tmp_path, keys)
    try:
        sink.write([dict(leg, call_state="answered") for leg in MANY])
        assert redis_calls(keys + "_call") == {}
    finally:
        sink.close()


def test_a_book_that_cannot_be_written_fails_the_batch_so_it_is_retried(keys, tmp_path) -> None:
    if os.geteuid() == 0:
        blocker = tmp_path / "spool" / "redis" / "calls.sqlite"
        blocker.mkdir(parents=True)  # a directory where the book's file goes: even root cannot open it
    sink = redis_sink(tmp_path, keys)
    try:
        with pytest.raises(RetriableError, match="call book .*calls.sqlite"):
            sink.write(MANY[:3])
        assert redis.Redis().llen(keys) == 0  # nothing of the batch went out: it is retried whole
    finally:
        sink.close()


def test_the_book_forgets_legs_it_took_longer_ago_than_keep_hours(tmp_path) -> None:
    book = CallBook(str(tmp_path / "calls.sqlite"), keep_s=3600)
    b_legs = [leg for leg in MANY if leg["call_key"] != leg["uuid"]]
    a_legs = [leg for leg in MANY if leg["call_key"] == leg["uuid"]]  # the originating legs
    try:
        book.add(b_legs, now=1_000_000)  # legs recorded days ago, replayed now: kept from now on
        assert all(row["legs"] > 1 or row["uuid"] not in {leg["call_key"] for leg in b_legs}
                   for row in book.add(a_legs, now=1_000_000 + 3000))
        book.add(a_legs, now=1_000_000 + 7300)  # an hour and more later: the b-legs are gone
        assert {row["legs"] for row in book.add(a_legs, now=1_000_000 + 7400)} == {1}
    finally:
        book.close()


@pytest.mark.parametrize("section, error", [
    ({"list": "x", "calls": {"list": "y"}}, 'cdr.redis.calls: call messages are made from the extended columns'),
    ({"list": "x", "calls": {}}, "cdr.redis.calls: say where call messages go: 'list' and/or 'channel' and/or"),
    ({"list": "x", "calls": {"list": "y", "keep_hours": 0}}, "cdr.redis.calls.keep_hours"),
    ({"list": "x", "calls": {"lists": "y"}}, "cdr.redis.calls"),
])
def test_call_message_settings_are_checked(tmp_path, section, error) -> None:
    columns = {} if "extended" in error else {"columns": "extended"}
    with pytest.raises(ConfigError, match=error.replace("(", r"\(")):
        make_config({"cdr": dict(columns, redis=section)}, tmp_path)


def test_a_sink_with_call_messages_has_one_writer(tmp_path) -> None:
    config = make_config({"cdr": {"columns": "extended", "redis": {"list": "x", "workers": 4,
                                                                   "calls": {"list": "y"}}}}, tmp_path)
    assert targets(config)[0].batch.workers == 1


# -- RabbitMQ ---------------------------------------------------------------------------------------
@pytest.fixture
def rabbit_calls():
    pytest.importorskip("pika")
    yield from rabbit_exchange("fs_cdr_calls_", (("legs", "cdr.#"), ("calls", "call.#")))


def test_each_recorded_call_reaches_rabbitmq_with_its_own_routing_key(rabbit_calls, tmp_path, engines) -> None:
    exchange, queues = rabbit_calls
    engine = engines(make_config({"cdr": {"columns": "extended", "rabbitmq": {
        "exchange": exchange, "routing_key": "cdr.${direction}",
        "calls": {"routing_key": "call.${outcome}"}}}}, tmp_path))
    # legs in reverse order, the first half again (a replay)
    events = [event for scenario in RECORDED for event in hangups(scenario)][::-1]
    for event in events + events[: len(events) // 2]:
        engine.handle(dict(event))
    assert engine.flush(30), engine.status()
    calls = rabbit_drain(queues["calls"])
    assert calls and all(properties.type == "call" and properties.delivery_mode == 2 for _, properties, _ in calls)
    assert all(method.routing_key == f"call.{json.loads(body)['outcome'] or ''}" for method, _, body in calls)
    assert all(properties.message_id == json.loads(body)["uuid"] for _, properties, body in calls)
    found = latest([body for _, _, body in calls])
    assert found == calls_of([leg for scenario in RECORDED for leg in legs_of(scenario)])
    legs = rabbit_drain(queues["legs"])
    assert all(properties.type is None for _, properties, _ in legs)
    assert len({json.loads(body)["uuid"] for _, _, body in legs}) == len(MANY)
