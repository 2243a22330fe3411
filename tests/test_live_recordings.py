"""The live scenarios, replayed from their recordings (tools/record_scenarios.py): the same facts the
live tests check in a running FreeSWITCH, held by the suite that runs without one."""

from __future__ import annotations

import pytest

from conftest import hangups
from fs_cdr.config import parse_config
from fs_cdr.record import RecordBuilder

BUILDER = RecordBuilder(parse_config({"cdr": {"log": True, "details": True, "fields": ["queue_name"]}}))


def built(scenario: str) -> list[dict]:
    return [record for record in (BUILDER.build(event) for event in hangups(scenario)) if record is not None]


def two_legs(scenario: str) -> tuple[dict, dict]:
    records = built(scenario)
    assert len(records) == 2, records
    (a,) = [record for record in records if record["leg"] == "a"]
    (b,) = [record for record in records if record["leg"] == "b"]
    return a, b


def test_extension_to_extension() -> None:
    a, b = two_legs("live_extension_to_extension")
    assert (a["direction"], a["account"], a["originator"], a["bridge_uuid"]) == ("inbound", "1100", None, b["uuid"])
    assert (b["direction"], b["account"], b["originator"], b["bridge_uuid"]) == ("outbound", "1101", a["uuid"], a["uuid"])
    for record in (a, b):
        assert (record["call_source"], record["source_name"], record["dial_number"]) == ("dialplan", "1100", "1101")
        assert record["billsec"] >= 1


def test_outbound_gateway_b_leg_account_is_the_gateway() -> None:
    a, b = two_legs("live_outbound_gateway")
    assert (a["account"], b["account"], b["dial_number"]) == ("1100", "fs_cdr_carrier", "5551234")


def test_ivr_is_one_record() -> None:
    (only,) = built("live_ivr_no_transfer")
    assert (only["call_source"], only["source_name"], only["leg"]) == ("ivr", "main_menu", "a")


def test_queue_variables_reach_both_legs() -> None:
    for record in two_legs("live_queue_acd"):
        assert (record["call_source"], record["source_name"], record["source_number"], record["queue_name"]) == (
            "acd", "support", "1100", "support")


@pytest.mark.parametrize(
    "scenario, destination, caller, callee, billsec",
    [("live_dialer_answered", "7000", "5551777", "4000", 1), ("live_dialer_unanswered", "5552777", "4000", "5552777", 0)],
)
def test_dialer_answered_and_unanswered_differ_as_the_seed_says(scenario, destination, caller, callee, billsec) -> None:
    (only,) = built(scenario)
    assert (only["destination_number"], only["caller_id_number"], only["callee_id_number"]) == (destination, caller, callee)
    assert only["billsec"] >= billsec and (only["billsec"] > 0) == (billsec > 0)
    assert (only["call_source"], only["account"]) == ("queuedialer", "fs_cdr_carrier")


def test_transfer_and_busy() -> None:
    a, b = two_legs("live_transfer")
    assert a["destination_number"] == "1101" and a["bridge_uuid"] == b["uuid"]
    a, b = two_legs("live_gateway_busy")
    assert b["hangup_cause"] == "USER_BUSY" and (a["billsec"], b["billsec"]) == (0, 0)
