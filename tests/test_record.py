"""The record builder on events recorded from a real FreeSWITCH, and the ``fields`` grammar."""

from __future__ import annotations

import json

import pytest

from conftest import SEED_FIELDS, hangups
from fs_cdr.config import parse_config
from fs_cdr.fields import lookup_in, parse_field, to_number
from fs_cdr.record import RecordBuilder


#: Whether builder() makes a builder with the compiled columns (fs_cdr._hangup) or the Python ones.
COMPILED = [True]


@pytest.fixture(autouse=True, params=["compiled", "python"])
def columns_path(request: pytest.FixtureRequest) -> None:
    """Every test here runs against both ways of building the columns (the compiled one is used
    where fs_cdr._hangup is built; the Python one everywhere else and for any odd value)."""
    COMPILED[0] = request.param == "compiled"


def builder(**cdr) -> RecordBuilder:
    cdr.setdefault("log", True)
    return RecordBuilder(parse_config({"cdr": cdr}), compiled=COMPILED[0])


def records(scenario: str, **cdr) -> dict[str, dict]:
    build = builder(**cdr)
    built = [build.build(event) for event in hangups(scenario)]
    return {record["uuid"]: record for record in built if record is not None}


def test_bridged_call_has_two_legs_linked_by_originator_and_bridge_uuid() -> None:
    legs = records("b_bridge_null")
    a = legs["0c9f051d-1620-4ce1-9fcf-241ca4a161e8"]
    b = legs["30f4df84-36a1-4a07-83b1-8bb47b9b481f"]
    assert (a["leg"], b["leg"]) == ("a", "b")
    assert a["originator"] is None and b["originator"] == a["uuid"]
    assert a["bridge_uuid"] == b["uuid"] and b["bridge_uuid"] == a["uuid"]
    assert a["destination_number"] == "4200" and b["destination_number"] == "4200b"
    assert (a["billsec"], a["duration"], b["billsec"]) == (3, 3, 3)
    assert a["start_epoch"] == 1795746290 and a["end_epoch"] == 1795746293 and a["answer_epoch"] == 1795746290
    assert a["call_uuid"] == b["call_uuid"] == a["uuid"]
    assert a["switchname"] == "vm" and a["core_uuid"] == "f07f70a3-ffc9-4781-b008-6a5672375dcb"
    assert a["hangup_cause"] == "NORMAL_CLEARING"


def test_single_leg_call_is_one_record() -> None:
    legs = records("a_single_null")
    assert len(legs) == 1
    (only,) = legs.values()
    assert only["leg"] == "a" and only["billsec"] == 1 and only["originator"] is None


@pytest.mark.parametrize("scenario, count", [("c_busy_loopback", 2), ("c_noanswer_null", 1), ("c_bridge_noanswer", 3)])
def test_unanswered_legs_have_billsec_zero_and_no_answer_time(scenario: str, count: int) -> None:
    legs = records(scenario)
    assert len(legs) == count
    for record in legs.values():
        assert record["billsec"] == 0 and record["answer_epoch"] is None


def test_unanswered_bridge_target_is_a_b_leg_with_its_cause() -> None:
    legs = records("c_bridge_noanswer")
    b = legs["1d48aca3-d014-4cc5-9c6e-909c5f294ca7"]
    assert b["leg"] == "b" and b["originator"] == "a91840b7-b389-449d-87b8-ed1c41423a30"
    assert b["hangup_cause"] == "NO_ANSWER" and b["duration"] == 3


@pytest.mark.parametrize(
    "mode, legs", [("true", {"a", "b"}), ("a_only", {"a"}), ("b_only", {"b"}), ("false", set())]
)
def test_process_cdr_selects_legs(mode: str, legs: set) -> None:
    built = records("b_bridge_null", process_cdr=mode)
    assert {record["leg"] for record in built.values()} == legs


def test_channel_process_cdr_and_skip_variable_override_the_default() -> None:
    event = dict(hangups("a_single_null")[0])
    build = builder()
    assert build.build(dict(event, variable_process_cdr="false")) is None
    assert build.build(dict(event, variable_fs_cdr_skip="true")) is None
    assert build.build(dict(event, variable_fs_cdr_skip="false")) is not None
    assert builder(skip_variable="no_cdr").build(dict(event, variable_no_cdr="yes")) is None


def test_per_extension_variables_and_account_come_from_the_channel() -> None:
    event = dict(
        hangups("b_bridge_null")[1],
        variable_call_source="dialplan",
        variable_source_name="1001",
        variable_source_number="+15550001",
        variable_dial_number="1002",
        variable_cti_line_group_name="sales",
        variable_sip_gateway_name="carrier1",
    )
    record = builder().build(event)
    assert record is not None
    assert (record["call_source"], record["source_name"], record["source_number"]) == ("dialplan", "1001", "+15550001")
    assert (record["dial_number"], record["cti_line_group_name"], record["account"]) == ("1002", "sales", "carrier1")
    assert builder().build(dict(event, variable_account="acct9"))["account"] == "acct9"


def test_details_hold_every_variable_with_secrets_masked() -> None:
    event = dict(hangups("a_single_null")[0], variable_sip_auth_password="hunter2", variable_db_secret_key="k")
    record = builder(details=True).build(event)
    details = json.loads(record["details"])
    assert details["uuid"] == record["uuid"] and details["billsec"] == "1"
    assert details["sip_auth_password"] == "***" and details["db_secret_key"] == "***"
    variables = {key[len("variable_"):] for key in event if key.startswith("variable_")}
    assert set(details) == variables


def test_seed_fields_and_every_fields_form() -> None:
    event = dict(
        hangups("b_bridge_null")[1],
        variable_rtp_last_audio_codec_string="PCMU@8000h@20i",
        variable_record_filename="/rec/a.wav",
        variable_caller_id_number="1001",
        **{"variable_sip_h_X-jssipid": "js-77", "variable_queue_name": "support", "variable_bad_number": "12abc"},
    )
    fields = SEED_FIELDS + ["queue:queue_name", "both:${caller_id_number}-${queue_name}",
                            "number:bad:bad_number", "number:tpl:${billsec}${duration}", "absent", "number:absent_n"]
    record = builder(fields=fields).build(event)
    assert record["rtp_last_audio_codec_string"] == "PCMU@8000h@20i"
    assert record["billsec"] == 3 and record["duration"] == 3
    assert record["record_filename"] == "/rec/a.wav" and record["jsipid"] == "js-77"
    assert record["queue"] == "support"
    assert record["both"] == "1001-support"
    assert record["bad"] is None
    assert record["tpl"] == 33
    assert record["absent"] is None and record["absent_n"] is None


@pytest.mark.parametrize(
    "text, number",
    [("42", 42), (" 7 ", 7), ("-3", -3), ("2.5", 2.5), ("", None), ("  ", None), ("abc", None), ("nan", None),
     ("inf", None), ("1e400", None), ("99999999999999999999", None), (None, None), ("0x10", None)],
)
def test_number_fields_never_fail_an_insert(text, number) -> None:
    assert to_number(text) == number


def test_template_with_no_variable_set_is_null_not_literal_text() -> None:
    spec = parse_field("x:${a}-${b}", "f")
    assert spec.value(lookup_in({})) is None
    assert spec.value(lookup_in({"b": "2"})) == "-2"


def test_long_caller_names_are_cut_to_the_column_with_a_log_line(caplog) -> None:
    event = dict(hangups("a_single_null")[0], **{"Caller-Caller-ID-Name": "Ω" * 1000})
    record = builder().build(event)
    assert record["caller_id_name"] == "Ω" * 255
    assert "caller_id_name was 1000 characters" in caplog.text


def test_an_event_without_a_uuid_is_refused_with_a_reason() -> None:
    with pytest.raises(ValueError, match="Unique-ID"):
        builder().build({"Event-Name": "CHANNEL_HANGUP_COMPLETE"})


def test_missing_times_fall_back_to_the_caller_profile() -> None:
    event = {key: value for key, value in hangups("b_bridge_null")[0].items()
             if key not in ("variable_start_epoch", "variable_end_epoch", "variable_billsec", "variable_duration",
                            "variable_answer_epoch")}
    record = builder().build(event)
    assert record["start_epoch"] == 1795746290 and record["end_epoch"] == 1795746293
    assert record["duration"] == 3 and record["billsec"] == 3
