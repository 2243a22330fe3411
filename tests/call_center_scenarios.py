"""The call-center scenarios of docs/call-center.md, as a real FreeSWITCH runs them: what each one
originates, and what it does to the call while it runs (a transfer). Used by the live tests
(tests/test_freeswitch_call_center.py) and by the recorder that wrote their event streams into
tests/events/ (tools/record_call_center.py), so the suite without FreeSWITCH checks them too.

The calling phone is a real SIP leg (sofia external profile -> internal profile on loopback), so
``sip_hangup_disposition`` is FreeSWITCH's own; the lines it calls are null/ endpoints
(tests/freeswitch/directory_fs_cdr_users.xml) and the queues are mod_callcenter's
(tests/freeswitch/callcenter_fs_cdr.xml). Each action waits for an event of the call, then runs an
API command.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

from live_switch import PASSWORD

from fs_cdr.esl import EventSocket

EVENTS = ("CHANNEL_CREATE CHANNEL_ANSWER CHANNEL_BRIDGE CHANNEL_UNBRIDGE CHANNEL_HANGUP "
          "CHANNEL_HANGUP_COMPLETE CHANNEL_DESTROY CHANNEL_PROGRESS CHANNEL_PROGRESS_MEDIA")


#: Where a command names the test switch's internal SIP port (each instance has its own).
INTERNAL_PORT = "@@internal_port@@"


def phone(destination: str, talk_ms: int, timeout_s: int = 20, wait_for_answer: bool = False) -> str:
    """``bgapi originate``: extension 1100's SIP phone calls ``destination`` and hangs up ``talk_ms`` after
    the answer (or gives up ringing after ``timeout_s``). Its own leg is left out with fs_cdr_skip.

    An originate counts early media (183 Session Progress, which the switch sends while a line rings)
    as its success unless told ``ignore_early_media``: then the phone's ``talk_ms`` starts at the first
    ring, as a caller who gives up after a while. ``wait_for_answer`` makes it wait for the answer
    (a hunt, whose first line rings out before the next one answers)."""
    early = ",ignore_early_media=true" if wait_for_answer else ""
    return (f"bgapi originate {{fs_cdr_skip=true,sip_auth_username=1100,sip_auth_password={PASSWORD},"
            f"origination_caller_id_number=1100,origination_caller_id_name=Phone1100,originate_timeout={timeout_s}"
            f"{early}}}sofia/external/{destination}@127.0.0.1:{INTERNAL_PORT} &sleep({talk_ms})")


#: An action: when an event matches (name, Channel-Name prefix), wait, then run a command made from
#: the events seen so far (``by_channel``: channel name prefix -> that channel's first event).
Action = tuple[str, str, float, Callable[[dict[str, dict[str, Any]]], str]]


def uuid_of(seen: dict[str, dict[str, Any]], prefix: str) -> str:
    return next(event["Unique-ID"] for name, event in seen.items() if name.startswith(prefix))


SCENARIOS: dict[str, tuple[str, str, list[Action]]] = {
    "cc_ring_group": ("three lines ring at once (2000), 1101 answers, 1102 and 1103 lose the race",
                      phone("2000", 2000), []),
    "cc_hunt": ("2100 rings 1102 for 3 s (no answer), then 1101, which answers", phone("2100", 2000, wait_for_answer=True), []),
    "cc_caller_cancel": ("1100 calls 1102, which never answers; the caller gives up while it rings (its "
                         "originate counts the ringing's early media as the answer, then hangs up 1 s later)",
                         phone("1102", 1000, timeout_s=3), []),
    "cc_blind_transfer": (
        ("1100 calls 1101; 1 s into the talk the caller's channel is transferred (uuid_transfer) to 1103, which "
        "answers after 2 s; the caller hangs up 5 s after the first answer"),
        phone("1101", 5000),
        [("CHANNEL_ANSWER", "null/1101", 1.5,
          lambda seen: f"uuid_transfer {uuid_of(seen, 'sofia/internal/1100')} 1103 XML default")]),
    "cc_attended_transfer": (
        ("1100 calls 1101; 1101 consults 1103 (att_xfer), then hangs up with the transfer's hangup key (*, "
        "attxfer_hangup_key), which joins the caller to 1103; the caller hangs up 8 s after the first answer"),
        phone("1101", 8000),
        [("CHANNEL_ANSWER", "null/1101", 1.5,
          lambda seen: f"uuid_broadcast {uuid_of(seen, 'null/1101')} att_xfer::user/1103@127.0.0.1 aleg"),
         ("CHANNEL_ANSWER", "null/1103", 1.0, lambda seen: f"uuid_recv_dtmf {uuid_of(seen, 'null/1101')} *")]),
    "cc_queue_answered": ("1100 calls queue fs_cdr_support (7100, mod_callcenter); agent 1101 answers",
                          phone("7100", 3000), []),
    "cc_queue_abandoned": ("1100 calls queue fs_cdr_overflow (7101, no agent) and gives up after 3 s",
                           phone("7101", 3000), []),
    "cc_voicemail": ("2200 rings 1102 for 3 s, then mod_voicemail answers for 1102's mailbox; the caller would "
                     "talk 4 s (where FreeSWITCH has no sound files mod_voicemail hangs up at once)",
                     phone("2200", 4000), []),
    "cc_declined": ("1100 calls 95554777 through the carrier gateway; the far end rings for a second and "
                    "declines (603)", phone("95554777", 1000), []),
    "cc_unknown_number": ("1100 calls 95555777 through the carrier gateway; the far end does not know the "
                          "number (404)", phone("95555777", 1000), []),
}
NEEDS = {"cc_queue_answered": "mod_callcenter", "cc_queue_abandoned": "mod_callcenter",
         "cc_voicemail": "mod_voicemail"}


def balanced(events: list) -> bool:
    names = [event["Event-Name"] for event in events]
    return names.count("CHANNEL_CREATE") == names.count("CHANNEL_DESTROY") > 0


def record(live: Any, socket: EventSocket, command: str,
           actions: list[Action]) -> tuple[list[dict[str, Any]], list[str]]:
    """Run ``command`` in ``live`` (a LiveSwitch) and the actions as their events come; every event
    of the scenario, in FreeSWITCH's order, and what was run."""

    def api(text: str) -> str:
        return str(live.api(text.replace(INTERNAL_PORT, str(live.internal_port)))).strip()

    answer = api(command)
    ran = [f"fs_cli -x \"{command.replace(INTERNAL_PORT, str(live.internal_port))}\"  => {answer}"]
    events: list[dict[str, Any]] = []
    seen: dict[str, dict[str, Any]] = {}
    pending = list(actions)
    timers: list[threading.Timer] = []
    deadline = time.time() + 30
    while time.time() < deadline:
        event = socket.next_event(timeout_s=1.0)
        if event is None:
            if events and balanced(events) and not pending and not any(t.is_alive() for t in timers):
                break
            continue
        events.append(event)
        seen.setdefault(event.get("Channel-Name", ""), event)
        for action in list(pending):
            name, prefix, delay, make = action
            if event["Event-Name"] == name and event.get("Channel-Name", "").startswith(prefix):
                pending.remove(action)
                text = make(seen)

                def run(text: str = text) -> None:
                    shown = text.replace(INTERNAL_PORT, str(live.internal_port))
                    ran.append(f"fs_cli -x \"{shown}\"  => {api(text)}")

                timer = threading.Timer(delay, run)
                timer.start()
                timers.append(timer)
    for timer in timers:
        timer.join()
    return events, ran
