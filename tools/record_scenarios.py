"""Record the live scenarios' event streams into tests/events/, so the suite without FreeSWITCH
replays what a real switch sent for them.

    .venv/bin/python tools/record_scenarios.py
    .venv/bin/python tools/record_scenarios.py --late-hangup 5   (live_late_hangup; up to 5 bursts)

Starts a private FreeSWITCH (tests/live_switch.py), subscribes to the channel events over the event
socket (``event json``: the same serialization as ``Event.serialize('json')`` in mod_python3), runs each
scenario through the repository's dialplan examples, and writes ``live_<scenario>.jsonl`` and
``live_<scenario>.commands.txt``.

``--late-hangup N``: bursts of 2,000 two-leg calls (bench/switch_cost.py's call shape) with fs_cdr
writing to MariaDB in real-time mode, until one burst shows a leg whose CHANNEL_HANGUP reached the
listener after its CHANNEL_HANGUP_COMPLETE (FreeSWITCH does that at load); the events of the calls
with such a leg, and nothing else, become ``live_late_hangup.jsonl``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid as uuidlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from live_load import (  # noqa: E402
    ORIGINATE,
    SQL_TARGETS,
    EventCapture,
    drop,
    late_hangup_legs,
    start_own,
)
from live_switch import PASSWORD, LiveSwitch  # noqa: E402

from fs_cdr.channel import dumps  # noqa: E402

EVENTS = ("CHANNEL_CREATE CHANNEL_ANSWER CHANNEL_BRIDGE CHANNEL_UNBRIDGE CHANNEL_HANGUP "
          "CHANNEL_HANGUP_COMPLETE CHANNEL_DESTROY CHANNEL_PROGRESS CHANNEL_PROGRESS_MEDIA")
PHONE = ("{{fs_cdr_skip=true,sip_auth_username=1100,sip_auth_password=%s,origination_caller_id_number=1100,"
         "origination_caller_id_name=Phone1100,originate_timeout=20}}sofia/external/{0}@127.0.0.1:{2} &sleep({1})"
         % PASSWORD)
CAMPAIGN = ("{{call_source=queuedialer,source_name=campaign1,cti_line_group_name=carriers,queue_name=campaign1,"
            "origination_caller_id_number=4000,dial_number={0},originate_timeout={1}}}"
            "sofia/gateway/fs_cdr_carrier/{0} 7000 XML default")
def PHONE_FOR(destination: str, talk_ms: int) -> str:  # noqa: N802 - reads as the template it fills
    """The phone's originate; ``{port}`` becomes the test instance's internal SIP port."""
    return PHONE.format(destination, talk_ms, "{port}")


SCENARIOS = {
    "extension_to_extension": "originate " + PHONE_FOR("1101", 2000),
    "outbound_gateway": "originate " + PHONE_FOR("95551234", 2000),
    "ivr_no_transfer": "originate " + PHONE_FOR("5000", 2000),
    "queue_acd": "originate " + PHONE_FOR("6001", 1500),
    "dialer_answered": "originate " + CAMPAIGN.format("5551777", 10),
    "dialer_unanswered": "originate " + CAMPAIGN.format("5552777", 3),
    "transfer": "originate " + PHONE_FOR("81101", 1500),
    "gateway_busy": "originate " + PHONE_FOR("95553234", 1000),
}


def balanced(events: list) -> bool:
    names = [event["Event-Name"] for event in events]
    return names.count("CHANNEL_CREATE") == names.count("CHANNEL_DESTROY") > 0


def calls_of(events: list, legs: list) -> list:
    """The events of the calls the ``legs`` belong to (a call: its a-leg, whose uuid the b-leg's
    Channel-Call-UUID names), in the order received."""
    calls = {event.get("Channel-Call-UUID") for event in events
             if event["Unique-ID"] in legs and event["Event-Name"] == "CHANNEL_HANGUP_COMPLETE"}
    members = {event["Unique-ID"] for event in events
               if event["Unique-ID"] in calls or event.get("Channel-Call-UUID") in calls}
    return [event for event in events if event["Unique-ID"] in members]


def record_late_hangup(out: Path, bursts: int, calls: int = 2000) -> int:
    for burst in range(1, bursts + 1):
        with tempfile.TemporaryDirectory() as directory:
            table = f"record_rt_{uuidlib.uuid4().hex[:8]}"
            live = LiveSwitch(Path(directory), {"details": True, "spool_dir": str(Path(directory) / "spool"),
                                                "database": dict(SQL_TARGETS["mariadb"], table=table, real=True)})
            live.prepare()
            start_own(live)
            try:
                live.api("fsctl loglevel err")
                live.api("fsctl sps 5000")
                time.sleep(1)
                capture = EventCapture(live, EVENTS.split())
                socket = live.event_socket()
                for _ in range(calls):
                    socket.sock.sendall(f"bgapi {ORIGINATE}\n\n".encode())
                time.sleep(2)
                while not live.api("show channels count").strip().startswith("0 total"):
                    time.sleep(0.2)
                events = capture.stop(quiet_s=2.0)
                socket.close()
            finally:
                live.shutdown()
                drop("mariadb", table)
        late = late_hangup_legs(events)
        creates = sum(1 for event in events if event["Event-Name"] == "CHANNEL_CREATE")
        print(f"burst {burst}: {len(events)} events, {creates} legs created, {len(late)} legs with a late CHANNEL_HANGUP")
        for uuid in late:
            names = [(event["Event-Name"], event["Event-Sequence"]) for event in events if event["Unique-ID"] == uuid]
            print(f"  {uuid}: {names}")
        if late:
            chosen = calls_of(events, late)
            count = len({event.get("Channel-Call-UUID") for event in chosen
                         if event["Event-Name"] == "CHANNEL_HANGUP_COMPLETE"})
            (out / "live_late_hangup.jsonl").write_text("".join(dumps(event) + "\n" for event in chosen))
            (out / "live_late_hangup.commands.txt").write_text(
                "# scenario live_late_hangup (tools/record_scenarios.py --late-hangup): burst "
                f"{burst} of {calls} calls at once, fs_cdr real-time into MariaDB;\n"
                f"# kept: the events of the {count} call(s) "
                f"whose leg(s) {', '.join(late)} had CHANNEL_HANGUP after CHANNEL_HANGUP_COMPLETE\n"
                f"fs_cli -x \"bgapi {ORIGINATE}\"  x {calls}, over one event socket connection\n")
            return 0
    print(f"no late CHANNEL_HANGUP in {bursts} bursts: nothing recorded")
    return 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--late-hangup", type=int, default=0, metavar="BURSTS")
    args = parser.parse_args()
    out = ROOT / "tests" / "events"
    if args.late_hangup:
        return record_late_hangup(out, args.late_hangup)
    with tempfile.TemporaryDirectory() as directory:
        live = LiveSwitch(Path(directory), {"log": True, "spool_dir": str(Path(directory) / "spool")})
        live.prepare()
        live.start()
        try:
            socket = live.event_socket()
            socket.subscribe(*EVENTS.split())
            for name, command in SCENARIOS.items():
                answer = live.api(command.replace("{port}", str(live.internal_port))).strip()
                events: list[dict] = []
                deadline = time.time() + 40
                # until every channel created has been destroyed, and a second passed in silence
                while time.time() < deadline:
                    event = socket.next_event(timeout_s=1.0)
                    if event is None:
                        if events and balanced(events):
                            break
                        continue
                    events.append(event)
                (out / f"live_{name}.jsonl").write_text("".join(dumps(event) + "\n" for event in events))
                (out / f"live_{name}.commands.txt").write_text(
                    f"# scenario live_{name} (tools/record_scenarios.py)\nfs_cli -x \"{command}\"  => {answer}\n")
                hangups = sum(1 for event in events if event["Event-Name"] == "CHANNEL_HANGUP_COMPLETE")
                print(f"live_{name}: {len(events)} events, {hangups} hangups ({answer})")
            socket.close()
        finally:
            live.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
