"""Record the live scenarios' event streams into tests/events/, so the suite without FreeSWITCH
replays what a real switch sent for them.

    .venv/bin/python tools/record_scenarios.py

Starts a private FreeSWITCH (tests/live_switch.py), subscribes to the channel events over the event
socket (``event json``: the same serialization as ``Event.serialize('json')`` in mod_python3), runs each
scenario through the repository's dialplan examples, and writes ``live_<scenario>.jsonl`` and
``live_<scenario>.commands.txt``.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

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


def main() -> int:
    out = ROOT / "tests" / "events"
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
