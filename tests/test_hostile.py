"""A hostile corpus through every real sink (SQLite, MariaDB, PostgreSQL, Redis), read back.

Each event travels the way it does inside FreeSWITCH: its headers are serialized by (an exact model
of) FreeSWITCH's cJSON printer, which copies bytes that are not UTF-8 as they are, handed to Python
as mod_python3 does (a ``surrogateescape`` str), decoded by ``decode_event`` and given to the engine.
Every value must come back byte-exact, or changed in exactly one of the ways docs/hostile-input.md
documents — and each such change must have left a log line.
"""

from __future__ import annotations

import json
import logging
import os
import uuid as uuidlib
from typing import Any, Union

import pytest

from conftest import cjson_object, connect, database_entry, drop_table, hangups, make_config, rows
from fs_cdr.channel import DECODE_NOTICES, decode_event, dumps
from fs_cdr.engine import Engine
from fs_cdr.record import MASK

MIB = 1 << 20
#: 16 UTF-8 bytes of everything awkward at once; 65,536 of them are exactly 1 MiB.
ONE_MIB = "'\"\\😀\u202e%s\x01abc" * (MIB // 16)
assert len(ONE_MIB.encode()) == MIB

#: name -> (the header's bytes as FreeSWITCH holds them, or str for valid text; what is stored)
CORPUS: dict[str, tuple[Union[bytes, str], str]] = {
    "quotes": ("O'Brien \"Bob\" `x` '' \"\"", "O'Brien \"Bob\" `x` '' \"\""),
    "backslashes": ("\\ \\\\ \\' \\\" C:\\temp\\new \\x00 \\u0000 \\n", "\\ \\\\ \\' \\\" C:\\temp\\new \\x00 \\u0000 \\n"),
    "sql_drop": ("'); DROP TABLE cdr; DELETE FROM cdr; --", "'); DROP TABLE cdr; DELETE FROM cdr; --"),
    "sql_or": ("1' OR '1'='1' /*!50000 UNION SELECT 1 */ #", "1' OR '1'='1' /*!50000 UNION SELECT 1 */ #"),
    "sql_pg": ("$$; SELECT pg_sleep(5); $$ E'\\x41' U&'\\0041'", "$$; SELECT pg_sleep(5); $$ E'\\x41' U&'\\0041'"),
    "placeholders": ("%s %(uuid)s %% ? ?1 :1 :uuid $1 {0} {uuid}", "%s %(uuid)s %% ? ?1 :1 :uuid $1 {0} {uuid}"),
    "nul": ("a\x00b\x00", "a\ufffdb\ufffd"),  # NUL: U+FFFD (PostgreSQL text cannot hold it)
    "invalid_utf8": (b"caller \xff\xfe \xc3( \xe2\x82 end", "caller \ufffd\ufffd \ufffd( \ufffd end"),
    "surrogate_bytes": (b"\xed\xa0\x80x", "\ufffd\ufffd\ufffdx"),
    "overlong": (b"\xc0\xaf/\xe0\x80\xaf", "\ufffd\ufffd/\ufffd\ufffd\ufffd"),
    "beyond_unicode": (b"\xf4\x90\x80\x80!", "\ufffd\ufffd\ufffd\ufffd!"),
    "cut_emoji": (b"smile \xf0\x9f\x98", "smile \ufffd"),
    "percent": ("%00%27%22%5C%E2%80%AE%FF%F0%9F%98%80 %%", "%00%27%22%5C%E2%80%AE%FF%F0%9F%98%80 %%"),
    "emoji": ("😀👨\u200d👩\u200d👧\u200d👦🇺🇸🏳️\u200d🌈", "😀👨\u200d👩\u200d👧\u200d👦🇺🇸🏳️\u200d🌈"),
    "cjk": ("张伟 𠜎𠜱𡃁 山田太郎 김민준", "张伟 𠜎𠜱𡃁 山田太郎 김민준"),
    "rtl": ("\u202eexe.txt\u202c \u200f\u200e \u2066x\u2069 مرحبا שלום", "\u202eexe.txt\u202c \u200f\u200e \u2066x\u2069 مرحبا שלום"),
    # PostgreSQL's COPY text format: its NULL marker and end-of-data line, as whole values
    "copy_null": ("\\N", "\\N"),
    "copy_end": ("\\.\n\\.", "\\.\n\\."),
    "controls": ("\t\n\r\x01\x1b[31m\x1f\x7f\u0085\u2028\u2029", "\t\n\r\x01\x1b[31m\x1f\x7f\u0085\u2028\u2029"),
    "invisible": ("\ufeff\u200b\u200d\u00ad", "\ufeff\u200b\u200d\u00ad"),
    "noncharacters": ("\ufffe\uffff\U0010ffff\U000e0001", "\ufffe\uffff\U0010ffff\U000e0001"),
    "json_like": ('","uuid":"x","details":{"a":1},"', '","uuid":"x","details":{"a":1},"'),
    "markup": ("<script>alert(1)</script>&amp;]]>", "<script>alert(1)</script>&amp;]]>"),
    "padded": ("  padded  ", "  padded  "),
    "wide_300": ("é" * 300, "é" * 300),
    "emoji_at_255": ("a" * 254 + "😀b", "a" * 254 + "😀b"),
    "one_mib": (ONE_MIB, ONE_MIB),
}
#: Keys of hostile events, and the key each is stored under (cut to 64, NUL and bad bytes replaced).
HOSTILE_KEYS: dict[str, tuple[Union[bytes, str], str]] = {
    "sql": ("'); DROP TABLE cdr; --", "'); DROP TABLE cdr; --"),
    "emoji": ("😀-\u202e-uuid", "😀-\u202e-uuid"),
    "long": ("u" * 100, "u" * 64),
    "nul": ("k\x00ey", "k\ufffdey"),
    "bytes": (b"\xff\xfe-uuid", "\ufffd\ufffd-uuid"),
}
#: Channel variables named like columns, SQL, or the builder's own keys.
COLUMN_LIKE_NAMES = ["uuid", "leg", "details", "billsec", "duration", "caller_id_name", "hostile", "select", "order",
                     "Unique-ID", "UUID", "'); DROP TABLE cdr; --", 'caller_id_name"', "`uuid`", "[uuid]", "%s",
                     'details":{"a":1},"x', "variable_uuid", "", " "]
FIELDS = ["hostile:sip_h_X-Hostile", "order:sip_user_agent", "select:${sip_h_X-Hostile}|${sip_user_agent}",
          "number:n:sip_h_X-Hostile"]
SECRET = "Hunter2-s3cret"


#: The corpus as FreeSWITCH hands it to fs_cdr: ``Event.serialize('json')`` as mod_python3's str.
SERIALIZED: list[str] = []


def as_freeswitch_sends(headers: dict[Union[str, bytes], Any]) -> dict[str, Any]:
    """Serialize like ``Event.serialize('json')``, hand over like mod_python3, decode like fs_cdr."""
    def raw(value: Union[str, bytes]) -> bytes:
        return value if isinstance(value, bytes) else value.encode()

    data = cjson_object([(raw(name), raw(value)) for name, value in headers.items()])
    SERIALIZED.append(data.decode("utf-8", "surrogateescape"))
    return decode_event(SERIALIZED[-1])


def base_event(key: Union[str, bytes]) -> dict[Union[str, bytes], Any]:
    event: dict[Union[str, bytes], Any] = dict(hangups("a_single_null")[0])
    event["Unique-ID"] = key
    return event


def corpus_events() -> list[dict[str, Any]]:
    events = []
    for name, (value, _) in CORPUS.items():
        event = base_event(f"hostile-{name}")
        event.update({"Caller-Caller-ID-Name": value, "variable_sip_h_X-Hostile": value,
                      "variable_sip_user_agent": value, b"variable_bad\xffname": value})
        events.append(as_freeswitch_sends(event))
    for name, (key, _) in HOSTILE_KEYS.items():
        events.append(as_freeswitch_sends(dict(base_event(key), **{"variable_sip_h_X-Hostile": f"key-{name}"})))
    columns = base_event("hostile-column-like-names")
    columns.update({f"variable_{name}": f"value of {name!r}: '); DROP TABLE cdr; --" for name in COLUMN_LIKE_NAMES})
    columns["variable_sip_h_X-Hostile"] = "the real hostile column"
    events.append(as_freeswitch_sends(columns))
    many = base_event("hostile-ten-thousand-variables")
    many.update({f"variable_v{index:05d}": f"{index}: '\"\\😀\u202e" for index in range(10_000)})
    many["variable_" + "n" * 1000] = "a 1000-character name"
    events.append(as_freeswitch_sends(many))
    secrets = base_event("hostile-secrets")
    secrets.update({
        "variable_sip_auth_password": SECRET,
        "variable_last_arg": f"sip_auth_password={SECRET}",
        "variable_current_application_data": f"{{sip_auth_username=1000,sip_auth_password={SECRET}}}sofia/gw/x/1",
        "Caller-Destination-Number": f"[sip_auth_password='{SECRET}']1234",
        "variable_sip_h_X-Hostile": f"x_token={SECRET};ok=1",
    })
    events.append(as_freeswitch_sends(secrets))
    return events


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _decoded_with_log() -> tuple[list[dict[str, Any]], str]:
    """The corpus, decoded once, with what decoding it logged."""
    lines = _Lines()
    DECODE_NOTICES.reset()
    channel_log = logging.getLogger("fs_cdr.channel")
    channel_log.addHandler(lines)
    try:
        return corpus_events(), "\n".join(lines.lines)
    finally:
        channel_log.removeHandler(lines)


EVENTS, DECODE_LOG = _decoded_with_log()


def details_of(row: dict[str, Any]) -> dict[str, Any]:
    details = row["details"]
    return details if isinstance(details, dict) else json.loads(details)


def check(found: dict[str, dict[str, Any]], log_text: str) -> None:
    """What the corpus must look like when read back from any sink."""
    assert len(found) == len(EVENTS)
    for name, (_, stored) in CORPUS.items():
        row = found[f"hostile-{name}"]
        assert row["caller_id_name"] == stored[:255], name
        assert row["hostile"] == stored, name
        assert row["order"] == stored, name
        assert row["select"] == f"{stored}|{stored}", name
        assert row["n"] is None, name
        details = details_of(row)
        assert details["sip_h_X-Hostile"] == stored and details["sip_user_agent"] == stored, name
        assert details["bad\ufffdname"] == stored, name
        recorded = hangups("a_single_null")[0]
        for variable, value in details.items():  # every other variable exactly as FreeSWITCH sent it
            if variable not in ("sip_h_X-Hostile", "sip_user_agent", "bad\ufffdname"):
                assert value == recorded["variable_" + variable], (name, variable)
    for name, (_, stored) in HOSTILE_KEYS.items():
        assert found[stored]["hostile"] == f"key-{name}"
    row = found["hostile-column-like-names"]
    assert row["hostile"] == "the real hostile column" and row["leg"] == "a"
    assert isinstance(row["billsec"], int) and isinstance(row["duration"], int)
    details = details_of(row)
    for name in COLUMN_LIKE_NAMES:
        assert details[name] == f"value of {name!r}: '); DROP TABLE cdr; --", name
    details = details_of(found["hostile-ten-thousand-variables"])
    assert all(details[f"v{index:05d}"] == f"{index}: '\"\\😀\u202e" for index in range(10_000))
    assert details["n" * 1000] == "a 1000-character name"
    row = found["hostile-secrets"]
    assert SECRET not in json.dumps(row, ensure_ascii=False, default=str)
    assert details_of(row)["sip_auth_password"] == MASK
    assert details_of(row)["last_arg"] == f"sip_auth_password={MASK}"
    assert row["destination_number"] == f"[sip_auth_password={MASK}]1234"
    assert row["hostile"] == f"x_token={MASK};ok=1"
    # Each documented change left a line; no secret ever did.
    assert "caller_id_name was 300 characters, stored the first 255" in log_text
    assert "held NUL or lone surrogates, stored as U+FFFD" in log_text
    assert "decoded with U+FFFD for each ill-formed byte sequence" in log_text
    assert SECRET not in log_text


def feed(engine, events) -> None:
    """The corpus as text, the way the FreeSWITCH consumer hands it over (Engine.handle_serialized):
    what the compiled split takes and what it leaves to Python meet in the same sink."""
    assert len(SERIALIZED) == len(events)
    for text in SERIALIZED:
        assert engine.handle_serialized(text) is not None
    assert engine.flush(60), engine.status()
    fast = engine.status()["fast_path"]
    if fast["compiled"]:
        assert fast["split"] > 0 and fast["decoded"] > 0 and fast["built_in_c"] > 0, fast


def test_the_hostile_corpus_round_trips_through_every_sql_sink(sql_kind, table_name, tmp_path, engines,
                                                              caplog) -> None:
    config = make_config({"cdr": {"details": True, "fields": FIELDS,
                                  "database": database_entry(sql_kind, table_name, tmp_path)}}, tmp_path)
    engine = engines(config)
    feed(engine, EVENTS)
    status = engine.status()
    assert status["malformed"] == 0
    sink = status["sinks"][0]
    assert (sink["received"], sink["written"], sink["rejected"]) == (len(EVENTS), len(EVENTS), 0), sink
    found = {row["uuid"]: row for row in rows(sql_kind, tmp_path, table_name)}
    check(found, caplog.text + DECODE_LOG)
    assert SECRET not in dumps(status)
    # The table is still there with all its columns: nothing a value held was run as SQL.
    assert set(found["hostile-quotes"]) >= {"uuid", "caller_id_name", "details", "hostile", "order", "select", "n"}


def test_the_hostile_corpus_round_trips_through_redis(tmp_path, engines, caplog) -> None:
    import redis

    key = f"fs_cdr_test:hostile:{uuidlib.uuid4().hex[:12]}"
    client = redis.Redis(host="127.0.0.1", port=6379)
    try:
        engine = engines(make_config({"cdr": {"details": True, "fields": FIELDS, "redis": {"list": key}}}, tmp_path))
        feed(engine, EVENTS)
        documents = [json.loads(item) for item in client.lrange(key, 0, -1)]
    finally:
        client.delete(key)
        client.close()
    status = engine.status()
    assert status["sinks"][0]["written"] == len(EVENTS) and status["sinks"][0]["rejected"] == 0
    check({document["uuid"]: document for document in documents}, caplog.text + DECODE_LOG)


def test_a_hostile_record_logged_is_one_printable_line_that_reads_back(tmp_path, caplog) -> None:
    """``"log": true``: the CDR line in FreeSWITCH's log holds the record as JSON in which every control,
    separator, bidirectional or invisible character is escaped: a caller name can neither break the
    line nor reorder what it shows, and the JSON still reads back as the record."""
    value = "".join(CORPUS[name][1] for name in ("controls", "rtl", "invisible", "noncharacters", "cjk", "emoji"))
    event = dict(hangups("a_single_null")[0], **{"Caller-Caller-ID-Name": value, "variable_x\u202ey": value})
    engine = Engine(make_config({"cdr": {"log": True, "details": True}}, tmp_path), lane_factory=lambda config: [])
    with caplog.at_level(logging.INFO, logger="fs_cdr"):
        record = engine.handle(event)
    lines = [entry.getMessage() for entry in caplog.records if entry.getMessage().startswith("CDR ")]
    assert record is not None and len(lines) == 1
    assert lines[0].isprintable() and "\u202e" not in lines[0] and "\u2028" not in lines[0]
    assert json.loads(lines[0][len("CDR "):]) == record
    assert "张伟" in lines[0]  # what is printable stays as it is


def _max_allowed_packet() -> int:
    connection = connect("mysql", None)
    try:
        cursor = connection.cursor()
        cursor.execute("SELECT @@max_allowed_packet")
        return int(cursor.fetchone()[0])
    finally:
        connection.close()


def test_a_row_too_big_for_mariadb_is_set_aside_and_the_rest_are_written(table_name, tmp_path, engines) -> None:
    """A statement over max_allowed_packet makes MariaDB drop the connection; the sink refuses such a
    row before sending it, so only that record is set aside, and one just under the limit is stored."""
    limit = _max_allowed_packet()
    if limit > 64 * MIB:
        pytest.skip(f"max_allowed_packet is {limit} bytes: too big to exceed in a test")
    quotes_over = "'" * (limit // 2 + 4096)  # each quote is escaped to two bytes
    quotes_under = "'" * (limit // 2 - 64 * 1024)
    try:
        config = make_config({"cdr": {"fields": ["hostile:sip_h_X-Hostile"],
                                      "database": database_entry("mysql", table_name, tmp_path)}}, tmp_path)
        engine = engines(config)
        values = {"before": "small", "too-big": quotes_over, "just-fits": quotes_under, "after": "small"}
        for name, value in values.items():
            engine.handle(dict(hangups("a_single_null")[0], **{"Unique-ID": f"big-{name}",
                                                               "variable_sip_h_X-Hostile": value}))
        assert engine.flush(60), engine.status()
        engine.handle(dict(hangups("a_single_null")[0], **{"Unique-ID": "big-later"}))
        assert engine.flush(30), engine.status()
        sink = engine.status()["sinks"][0]
        assert (sink["written"], sink["rejected"]) == (4, 1), sink
        found = {row["uuid"]: row["hostile"] for row in rows("mysql", tmp_path, table_name, "uuid, hostile")}
        assert set(found) == {"big-before", "big-just-fits", "big-after", "big-later"}
        assert found["big-just-fits"] == quotes_under
        with open(os.path.join(config.spool_dir, "mysql", "rejected.jsonl"), "rb") as handle:
            (line,) = handle.read().splitlines()
        rejected = json.loads(line)
        assert rejected["record"]["uuid"] == "big-too-big" and "max_allowed_packet" in rejected["error"]
    finally:
        drop_table("mysql", tmp_path, table_name)
