"""The compiled fast path (fs_cdr/_hangup.c) against the Python path it stands in for.

``RecordBuilder.split`` turns a serialized hangup into only the headers the builder reads plus
``details`` as JSON text; for any event it takes, the record must be exactly the one that decoding the
whole event in Python gives, and any event it does not fully understand it must leave to Python
(``None``). Every test here compares the two on the same text: recorded FreeSWITCH events, events
changed by hand in the ways the C code treats specially, and generated hostile events (hypothesis).
"""

from __future__ import annotations

import collections
import json
import os
import random
import weakref
from typing import Any, Union

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import EVENTS_DIR, SCENARIOS, SEED_FIELDS, cjson_string
from fs_cdr import record as record_module
from fs_cdr.channel import decode_event
from fs_cdr.config import parse_config
from fs_cdr.engine import Engine
from fs_cdr.record import MASK, RecordBuilder

pytestmark = pytest.mark.skipif(record_module._hangup is None,
                                reason="fs_cdr._hangup is not built (pip install -e . builds it)")

FIELDS = SEED_FIELDS + ["hostile:sip_h_X-Hostile", "both:${sip_h_X-Hostile}|${caller_id_name}",
                        "number:n:sip_h_X-Hostile", "dial_number:${sip_h_X-Hostile}"]


def builder(**cdr: Any) -> RecordBuilder:
    return RecordBuilder(parse_config({"cdr": dict({"log": True, "details": True, "fields": FIELDS}, **cdr)}))


#: Plain fields only (no template): the compiled columns then also decide that _finish has nothing to do.
PLAIN_FIELDS = SEED_FIELDS + ["hostile:sip_h_X-Hostile", "number:n:sip_h_X-Hostile", "dial_number:sip_h_X-Hostile",
                              "number:source_number:sip_h_X-Hostile", "secretfield:sip_auth_password"]


#: Configurations whose differences reach the split or the columns: details on/off, no secrets, a
#: secret pattern without a literal hint, a hint that is not ASCII, a_only (the leg rule reads more
#: variables), plain fields only, no fields.
BUILDERS = {
    "default": builder(),
    "no_details": builder(details=False),
    "no_secrets": builder(secret_variables=[]),
    "class_pattern": builder(secret_variables=["*pass[wW]ord*"]),
    "non_ascii_hint": builder(secret_variables=["*pässword*", "*token*"]),
    "a_only": builder(process_cdr="a_only", skip_variable="fs_cdr_skip"),
    "plain_fields": builder(fields=PLAIN_FIELDS),
    # the seed's number:billsec and number:duration replace those columns' own sources; without
    # fields the record shows them (billsec 0 and duration NULL when the times are missing)
    "no_fields": builder(fields=[]),
}
#: The Python reference of each builder: no compiled columns (python_path decodes the event in Python too).
REFERENCES: "weakref.WeakKeyDictionary[RecordBuilder, RecordBuilder]" = weakref.WeakKeyDictionary()


def reference(builder: RecordBuilder) -> RecordBuilder:
    found = REFERENCES.get(builder)
    if found is None:
        found = REFERENCES[builder] = RecordBuilder(builder.config, compiled=False)
    return found

#: Every hangup line of every recording, as FreeSWITCH serialized it.
RECORDED = [line.rstrip(b"\n") for name in SCENARIOS
            for line in open(os.path.join(EVENTS_DIR, f"{name}.jsonl"), "rb")
            if b'"Event-Name":"CHANNEL_HANGUP_COMPLETE"' in line]


def python_path(builder: RecordBuilder, text: Union[str, bytes]) -> Any:
    try:
        return reference(builder).build(decode_event(text))
    except ValueError as error:
        return ValueError(str(error))


#: What fast_path gives when the split leaves the event to Python.
DECLINED = "declined"
#: Generated events, and how many of them the split took (the last test checks it took many).
GENERATED = collections.Counter()


def fast_path(builder: RecordBuilder, text: Union[str, bytes]) -> Any:
    """The record (or None: no record) from the split, or DECLINED when the split leaves the event
    to Python."""
    split = builder.split(text)
    if split is None:
        return DECLINED
    try:
        return builder.build(*split)
    except ValueError as error:
        return ValueError(str(error))


def same(a: Any, b: Any) -> bool:
    """Equal records: the same columns in the same order, each of the same type (1 == 1.0 == True)."""
    if isinstance(a, ValueError) or isinstance(b, ValueError):
        return type(a) is type(b) and str(a) == str(b)
    if isinstance(a, dict) and isinstance(b, dict):
        return [(name, type(value), value) for name, value in a.items()] == \
            [(name, type(value), value) for name, value in b.items()]
    return a == b


#: A recorded hangup that gives a record (some legs of the recordings are skipped on purpose).
#: A plain bridged b-leg (not one of the rare hangups the compiled columns leave to Python, such as
#: an agent's leg that dialled an attended transfer itself)
LINE = next(line for line in RECORDED if isinstance(python_path(BUILDERS["default"], line), dict)
            and b'"variable_originated_legs"' not in line)


def swig_str(data: bytes) -> str:
    """What mod_python3 hands Python for a C string."""
    return data.decode("utf-8", "surrogateescape")


def headers_of(line: bytes) -> list[tuple[bytes, Any]]:
    """A recorded hangup as FreeSWITCH's (name, value) pairs, in order; an array header's value is
    a list."""
    return [(name.encode(), [item.encode() for item in value] if isinstance(value, list) else value.encode())
            for name, value in json.loads(line).items()]


def serialized(pairs: list[tuple[bytes, Any]]) -> bytes:
    """``Event.serialize('json')`` (cJSON, unformatted), array headers as arrays of strings."""
    def value(item: Any) -> bytes:
        if isinstance(item, list):
            return b"[" + b",".join(cjson_string(part) for part in item) + b"]"
        return cjson_string(item)

    return b"{" + b",".join(cjson_string(name) + b":" + value(item) for name, item in pairs) + b"}"


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_every_recorded_hangup_takes_the_fast_path_and_gives_the_python_record(name: str) -> None:
    builder = BUILDERS[name]
    for line in RECORDED:
        for text in (line, swig_str(line)):
            fast = fast_path(builder, text)
            assert fast is not DECLINED, f"{name}: the split left a recorded event to Python: {line[:120]!r}"
            assert same(fast, python_path(builder, text))
    if name != "no_details":
        assert all(isinstance(record["details"], str) for record in map(lambda line: fast_path(builder, line), RECORDED)
                   if record is not None)


def test_the_split_keeps_only_what_the_builder_reads() -> None:
    builder = BUILDERS["default"]
    headers, details = builder.split(LINE)
    full = decode_event(LINE)
    variables = [name for name in full if name.startswith("variable_")]
    kept = [name for name in headers if name.startswith("variable_")]
    assert len(kept) < len(variables) / 2  # the point of it: most variables are never Python strings
    others = {name for name in full if not name.startswith("variable_")}
    kept_others = others & set(headers)
    assert len(kept_others) < len(others) / 2  # nor most other headers
    # ... but every one that build() or the engine reads is there, with its value
    assert {"Event-Name", "Unique-ID", "Event-Sequence", "Caller-Caller-ID-Number", "Core-UUID"} <= kept_others
    assert kept_others == others & builder.headers_read
    assert all(headers[name] == full[name] for name in headers)
    assert json.loads(details) == {name[len("variable_"):]: full[name] if not builder.is_secret(name[9:]) else MASK
                                   for name in variables}


def change(line: bytes, name: bytes, value: bytes, where: str = "end") -> bytes:
    pairs = headers_of(line)
    if where == "replace":
        pairs = [(key, value if key == name else old) for key, old in pairs]
    else:
        pairs.append((name, value))
    return serialized(pairs)


@pytest.mark.parametrize("value, taken", [
    (b"plain", True),
    (b'quote " and \\ backslash', True),
    (b"tab\tnew\nline\rcr", True),
    (b"\x01 a control character", False),  # cJSON writes \u0001: the Python path
    (b"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80", True),
    (b"not utf-8 \xff\xfe", False),
    (b"surrogate \xed\xa0\x80", False),
    (b"overlong \xc0\xaf", False),
    (b"sofia/gw/1234;transport=tcp", True),  # '=' with no secret hint
    (b"{sip_auth_password=hunter2}sofia/gw/1234", False),  # masked by the Python path
    (b"{SIP_AUTH_PASSWORD=hunter2}sofia/gw/1234", False),
    (b"x" * 100_000, True),
])
def test_values_the_c_code_treats_specially(value: bytes, taken: bool) -> None:
    builder = BUILDERS["default"]
    line = change(LINE, b"variable_sip_h_X-Hostile", value)
    for text in (line, swig_str(line)):
        fast = fast_path(builder, text)
        assert (fast is not DECLINED) == taken, value[:40]
        slow = python_path(builder, text)
        if fast is not DECLINED:
            assert same(fast, slow)
    if b"hunter2" in value:
        assert "hunter2" not in json.dumps(python_path(builder, line))


#: Bytes the scanner must stop at, and bytes it must not: the quote and backslash of escapes, control
#: characters cJSON escapes, the lowest and highest byte of each UTF-8 length, and their neighbours.
SPECIALS = [b'\\"', b"\\\\", b"\\n", b"\\t", b"\\u0001", b"\x7f", b" ", b"!", b"#", b"[", b"]", b"\xc2\x80",
            b"\xdf\xbf", b"\xe0\xa0\x80", b"\xef\xbf\xbd", b"\xf0\x90\x80\x80", b"\xf4\x8f\xbf\xbf", b"\x80", b"\xff"]


@pytest.mark.parametrize("special", SPECIALS)
def test_each_special_byte_at_each_place_of_a_scanned_block(special: bytes) -> None:
    """The split scans 16 bytes at a time (SSE2), then 8, then one: a byte that needs a look must be
    found wherever it falls, in a value of any length, and give the Python path's record."""
    builder = BUILDERS["default"]
    taken = 0
    for length in range(0, 48):
        for place in range(0, length + 1, 3 if length > 36 else 1):
            value = b"v" * place + special + b"w" * (length - place)
            line = LINE[:-1] + b',"variable_sip_h_X-Scan":"' + value + b'"}'
            fast = fast_path(builder, line)
            slow = python_path(builder, line)
            if fast is not DECLINED:
                taken += 1
                assert same(fast, slow), (special, length, place)
                assert json.loads(fast["details"])["sip_h_X-Scan"] == json.loads(b'"' + value + b'"')
    # only a raw control character, a \u escape and bytes that are not UTF-8 go to Python
    assert (taken == 0) == (special in (b"\\u0001", b"\x80", b"\xff"))


@pytest.mark.parametrize("text", [
    b"", b"{}", b"[]", b"null", b'{"a":1}', b'{"a":["x"]}', b'{"a":{"b":"c"}}', b'{"a":"b"', b'{"a":"b"}x',
    b'{"a":"\\u0041"}', b'{"a":"\\/"}', b'{"a\\n":"b"}', b'{"a":"b",}', b' {"Unique-ID" : "u" , "b":"c"} ',
    b'{"Unique-ID":"u","variable_x":"1","variable_x":"2"}', b'{"Unique-ID":"u","Unique-ID":"v"}',
    b'{"Unique-ID":"u","variable_":"empty name"}', "{\"Unique-ID\":\"\udcff\"}",
])
def test_odd_json_is_refused_or_equal(text: Union[str, bytes]) -> None:
    for builder in BUILDERS.values():
        fast = fast_path(builder, text)
        if fast is not DECLINED:
            assert same(fast, python_path(builder, text))


def test_a_repeated_variable_name_is_left_to_python() -> None:
    line = change(LINE, b"variable_uuid", b"other")
    assert BUILDERS["default"].split(line) is None
    assert python_path(BUILDERS["default"], line)["details"].count('"uuid":') == 1


def test_a_layout_behind_another_layouts_hash_is_planned_again() -> None:
    """The plans are found by a 64-bit hash of the header names; a different layout behind the same
    hash (forged here) is checked name by name, planned again, and the record is still right."""
    builder = RecordBuilder(BUILDERS["default"].config)
    _, layout, layout_hash = record_module._hangup.split(LINE, {}, (), True)
    builder.split(LINE)
    real = builder._split_plans[layout_hash]
    assert real[0] == layout
    builder._split_plans[layout_hash] = (b'"Event-Name"other', real[1], real[2])
    assert same(fast_path(builder, LINE), python_path(builder, LINE))
    assert builder._split_plans[layout_hash][0] == layout


def test_the_engine_takes_serialized_events_and_never_raises() -> None:
    engine = Engine(parse_config({"cdr": {"log": True, "details": True, "fields": FIELDS}}), lane_factory=lambda config: [])
    for line in RECORDED:
        engine.handle_serialized(line)
    assert engine.handle_serialized(b"not json") is None
    assert engine.handle_serialized(b'{"Event-Name":"CHANNEL_HANGUP_COMPLETE"}') is None
    expected = sum(1 for line in RECORDED if isinstance(python_path(engine.builder, line), dict))
    assert engine.malformed == 2 and engine.records == expected and engine.skipped == len(RECORDED) - expected


def test_a_reload_between_split_and_build_uses_one_configuration() -> None:
    """handle_serialized builds with the builder that split: a reload turning details on in between
    must not build details from the split's reduced headers."""
    engine = Engine(parse_config({"cdr": {"log": True, "details": False}}), lane_factory=lambda config: [])
    original = engine.builder.split

    def split_then_reload(text):
        found = original(text)
        engine.builder = builder(details=True)  # what reload() swaps in, mid-event
        return found

    engine.builder.split = split_then_reload  # type: ignore[method-assign]
    record = engine.handle_serialized(LINE)
    assert record is not None and "details" not in record


# -- generated events -----------------------------------------------------------------------------

hostile_bytes = st.one_of(
    st.binary(max_size=40),
    st.text(max_size=40).map(lambda text: text.encode("utf-8", "surrogatepass")),
    st.sampled_from([b"=", b"password=", b"PassWord=x", b"sip_auth_password=s3cr3t", b"token=abc;", b"\\", b'"',
                     b"\xc3", b"\xed\xa0\x80", b"\x00", b"\t", b"\xe2\x80\xae", b"variable_", b"a=b,c=d"]),
)
header_names = st.one_of(
    st.sampled_from([b"Unique-ID", b"Event-Name", b"variable_uuid", b"variable_originator", b"variable_billsec",
                     b"variable_sip_auth_password", b"variable_api_token", b"variable_sip_h_X-Hostile",
                     b"variable_caller_id_name", b"variable_fs_cdr_skip", b"variable_process_cdr", b"Other-Type",
                     b"variable_", b"variable_x", b"Caller-Caller-ID-Name", b"variable_last_arg"]),
    st.binary(min_size=1, max_size=20),
    st.binary(max_size=12).map(lambda name: b"variable_" + name),
)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                    HealthCheck.data_too_large])
@given(st.sampled_from(range(len(RECORDED))),
       st.lists(st.tuples(st.sampled_from(["append", "replace", "drop"]), header_names, st.lists(hostile_bytes,
                max_size=4).map(b"".join)), max_size=6),
       st.sampled_from(["cjson", "json_ascii", "json_spaced"]), st.booleans(), st.sampled_from(sorted(BUILDERS)))
def test_generated_events_give_the_python_record_or_take_the_python_path(index, changes, form, as_swig, name):
    pairs = headers_of(RECORDED[index])
    for kind, header_name, value in changes:
        if kind == "append":
            pairs.append((header_name, value))
        elif kind == "replace":
            pairs = [(key, value if key == header_name else old) for key, old in pairs]
        else:
            pairs = [(key, old) for key, old in pairs if key != header_name]
    if form == "cjson":
        text = serialized(pairs)
    else:  # the event socket's and other producers' forms: \u escapes, whitespace
        document = {key.decode("utf-8", "replace"): [part.decode("utf-8", "replace") for part in value]
                    if isinstance(value, list) else value.decode("utf-8", "replace") for key, value in pairs}
        text = json.dumps(document, ensure_ascii=form == "json_ascii",
                          indent=1 if form == "json_spaced" else None).encode("utf-8")
    if as_swig:
        text = swig_str(text)
    builder = BUILDERS[name]
    fast = fast_path(builder, text)
    GENERATED["events"] += 1
    if fast is not DECLINED:
        GENERATED["split"] += 1
        assert same(fast, python_path(builder, text))


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(range(len(RECORDED))), st.integers(0, 1 << 20), st.binary(min_size=1, max_size=8),
       st.sampled_from(["insert", "overwrite", "truncate"]))
def test_damaged_lines_never_crash_the_split(index, position, damage, kind) -> None:
    """Bytes damaged anywhere (inside an escape, a UTF-8 sequence, the structure): the split answers
    with a record equal to Python's or leaves the line to Python; it never reads past the text."""
    data = bytearray(RECORDED[index])
    at = position % (len(data) + 1)
    if kind == "insert":
        data[at:at] = damage
    elif kind == "overwrite":
        data[at:at + len(damage)] = damage
    else:
        del data[at:]
    text = bytes(data)
    for builder in (BUILDERS["default"], BUILDERS["no_details"]):
        fast = fast_path(builder, text)
        if fast is not DECLINED:
            assert same(fast, python_path(builder, text))


def test_random_bytes_never_crash_the_split() -> None:
    generator = random.Random(7)
    builder = BUILDERS["default"]
    for _ in range(3000):
        text = bytes(generator.getrandbits(8) for _ in range(generator.randrange(0, 64)))
        fast = fast_path(builder, b'{"Unique-ID":"' + text + b'"}')
        if fast is not DECLINED:
            assert same(fast, python_path(builder, b'{"Unique-ID":"' + text + b'"}'))


def test_the_generated_events_did_exercise_the_split() -> None:
    """Most generated events are hostile in a way the split leaves to Python; enough must not be, or
    the comparison above compares nothing."""
    if GENERATED["events"] < 1000:
        pytest.skip("run with the generated-events test")
    assert GENERATED["split"] > GENERATED["events"] * 0.2, GENERATED


# -- the compiled columns on any headers ----------------------------------------------------------

def _keys_read(builder: RecordBuilder) -> list[str]:
    names = sorted(builder.reads)
    return sorted(builder.headers_read) + [f"variable_{name}" for name in names] + names


#: Values that reach each branch of the columns: empty and missing, every form of number to_number
#: takes or refuses, a 64-bit overflow, the text the leg rule compares, what _finish must change.
column_values = st.one_of(
    st.none(),
    st.sampled_from(["", "0", "7", "007", "-5", "+5", " 12 ", "1e3", "1.5", "-1.5e300", "12x", "1_000", "١٢",
                     "999999999999999999", "9223372036854775807", "9223372036854775808", "-9223372036854775808",
                     "99999999999999999999999999", "1795746290", "1795746290000000", "originator", "Originator",
                     "a=b", "x\x00y", "é", "\ud800", "sip_auth_password=s3cret", "y" * 64, "y" * 65, "z" * 300]),
    st.text(max_size=6),
)
#: What only the Python path takes: array headers, values a hand-made event may hold.
odd_values = st.one_of(st.lists(st.sampled_from(["a", "", "b=c"]), max_size=2), st.integers(-3, 3))
COMPILED = collections.Counter()


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(BUILDERS)), st.data())
def test_the_compiled_columns_give_the_python_record_for_any_headers(name: str, data: Any) -> None:
    """fs_cdr._hangup.columns against RecordBuilder._columns and _finish, on headers (a decoded
    event, not only the split's) holding any mix of the values each column treats differently."""
    builder = BUILDERS[name]
    python = reference(builder)
    keys = _keys_read(python)
    headers = data.draw(st.dictionaries(st.sampled_from(keys), column_values, max_size=len(keys)))
    headers.update(data.draw(st.dictionaries(st.sampled_from(keys), odd_values, max_size=1)))
    headers.setdefault("Unique-ID", data.draw(st.sampled_from(["u-1", "", "é=1"])))
    COMPILED["events"] += 1
    if record_module._hangup.columns(headers, "u", builder._compiled) is not None:
        COMPILED["compiled"] += 1
    counts = [(found.masked, found.truncated, found.replaced) for found in (builder, python)]
    def built(found: RecordBuilder) -> Any:
        try:
            return found.build(headers)
        except ValueError as error:
            return ValueError(str(error))

    fast, slow = built(builder), built(python)
    assert same(fast, slow)
    changed = [(found.masked - masked, found.truncated - truncated, found.replaced - replaced)
               for found, (masked, truncated, replaced) in zip((builder, python), counts)]
    assert changed[0] == changed[1]


def test_the_compiled_columns_take_the_usual_hangup_and_leave_odd_values_to_python() -> None:
    """The recorded hangups are built in C (and a test above finds them equal); a value that is not
    text among those read sends the event to _columns."""
    builder = BUILDERS["plain_fields"]
    event = decode_event(LINE)
    uuid = event["Unique-ID"]
    found = record_module._hangup.columns(event, uuid, builder._compiled)
    assert found is not None and found[0]["uuid"] == uuid and found[4] is True
    assert record_module._hangup.columns(dict(event, **{"Channel-Name": ["a", "b"]}), uuid, builder._compiled) is None
    record = builder.build(dict(event, **{"Channel-Name": ["a", "b"]}))
    assert record is not None and record["channel_name"] == "a|b"


def test_the_generated_headers_did_exercise_the_compiled_columns() -> None:
    if COMPILED["events"] < 1000:
        pytest.skip("run with the generated-headers test")
    assert COMPILED["compiled"] > COMPILED["events"] * 0.3, COMPILED


def test_a_compiled_module_without_columns_leaves_the_columns_to_python(monkeypatch) -> None:
    """fs_cdr's Python files upgraded over an fs_cdr._hangup built before columns() (a copy, not a
    pip install): every record is still built, by _columns."""
    class OldModule:
        split = staticmethod(record_module._hangup.split)

    monkeypatch.setattr(record_module, "_hangup", OldModule)
    old = RecordBuilder(BUILDERS["plain_fields"].config)
    record = old.build(*old.split(LINE))
    assert same(record, python_path(BUILDERS["plain_fields"], LINE)) and old.built_in_c == 0


def test_a_header_key_whose_comparison_raises_is_an_error_not_a_crash() -> None:
    """A hand-made event (never one FreeSWITCH sends) whose key compares with a str by raising: the
    compiled columns raise that error as _columns does, and the engine logs the event as malformed."""
    class Hostile:
        def __hash__(self) -> int:
            return hash("Caller-Context")

        def __eq__(self, other: object) -> bool:
            raise RuntimeError("no comparing me")

    event = dict(decode_event(LINE))
    del event["Caller-Context"]
    event[Hostile()] = "x"
    for found in (BUILDERS["plain_fields"], reference(BUILDERS["plain_fields"])):
        with pytest.raises(RuntimeError, match="no comparing me"):
            found.build(event)
    engine = Engine(BUILDERS["plain_fields"].config, lane_factory=lambda config: [])
    assert engine.handle(event) is None and engine.malformed == 1
