"""The extended leg columns (``"columns": "extended"``): what happened to a leg, who ended it, its
timing in milliseconds, its audio quality, and the key of the call it belongs to.

Every value comes from the leg's own CHANNEL_HANGUP_COMPLETE; nothing is remembered between events, so
a record replayed from the spool, or imported, gets the same values. The rules that decide ``outcome``
and ``hangup_by`` are the table in docs/call-center.md (each row checked against a recorded scenario in
tests/events/); a leg whose variables do not decide one of them gets ``None`` (NULL), never a guess.

:func:`leg_columns` reads every variable it may use before it decides anything, so that
``RecordBuilder._read_variables`` (which finds what to decode by running the builder on an empty event)
sees each one.
"""

from __future__ import annotations

from .channel import VARIABLE_PREFIX, Headers, header, variable
from .fields import Value, to_number
from .schema import Column

#: The extended columns, after the standard ones (and ``details``), before ``fields``.
EXTENDED_COLUMNS: tuple[Column, ...] = (
    Column("call_key", "short", "the uuid of the leg the call started on: cc_member_session_uuid (a queue's "
                                "agent leg), else originator (an outbound leg), else this leg's uuid "
                                "(docs/call-center.md)"),
    Column("outcome", "short", "answered, no_answer, busy, cancelled, rejected, failed or voicemail; NULL "
                               "when the leg's variables do not tell (docs/call-center.md)"),
    Column("hangup_by", "short", "caller, callee or system: whose side ended this leg; NULL when undecided"),
    Column("q850_cause", "int", "variable_hangup_cause_q850"),
    Column("sip_status", "int", "variable_sip_term_status, else the status in proto_specific_hangup_cause"),
    Column("sip_disposition", "short", "variable_sip_hangup_disposition (send_bye, recv_bye, send_cancel, "
                                       "recv_cancel, send_refuse, recv_refuse)"),
    Column("started_at_ms", "int", "variable_start_uepoch in Unix milliseconds"),
    Column("duration_ms", "int", "creation to hangup (end_uepoch)"),
    Column("pdd_ms", "int", "post-dial delay: creation to ringing (progress_uepoch); NULL if it never rang"),
    Column("early_media_ms", "int", "creation to early media (progress_media_uepoch); NULL if none"),
    Column("answer_ms", "int", "creation to answer (answer_uepoch): the wait before answer; NULL if unanswered"),
    Column("bridge_ms", "int", "creation to the first bridge (bridge_uepoch); NULL if never bridged"),
    Column("talk_ms", "int", "answer to hangup (billmsec); NULL if unanswered"),
    Column("hold_ms", "int", "variable_hold_accum_ms: time on hold"),
    Column("mos", "number", "variable_rtp_audio_in_mos: the audio received, MOS 1-4.5"),
    Column("jitter_max_variance", "number", "variable_rtp_audio_in_jitter_max_variance"),
    Column("loss_rate", "number", "variable_rtp_audio_in_jitter_loss_rate"),
    Column("codec", "short", "variable_rtp_use_codec_name, else read_codec"),
    Column("remote_media_ip", "short", "variable_remote_media_ip: where the far end's audio came from"),
    Column("sip_call_id", "text", "variable_sip_call_id: find the call in a SIP capture"),
    Column("first_destination", "text", "what the caller dialled: sip_req_user on an inbound SIP leg, else "
                                         "Caller-RDNIS (set by a transfer), else Caller-Destination-Number"),
    Column("queue", "text", "variable_cc_queue (mod_callcenter)"),
    Column("agent", "text", "variable_cc_agent (mod_callcenter)"),
    Column("transfers", "int", "entries in variable_transfer_history, less the one an originate to a "
                               "dialplan extension makes"),
)
EXTENDED_NAMES = frozenset(column.name for column in EXTENDED_COLUMNS)

#: Unanswered: the cause (hangup_cause, or originate_disposition when the leg itself was cleared
#: normally after its bridge failed) -> outcome.
_UNANSWERED = {
    "USER_BUSY": "busy",
    "ORIGINATOR_CANCEL": "cancelled",
    "NO_ANSWER": "no_answer",
    "NO_USER_RESPONSE": "no_answer",
    "ALLOTTED_TIMEOUT": "no_answer",
    "LOSE_RACE": "no_answer",
    "CALL_REJECTED": "rejected",
    "USER_CHALLENGE": "rejected",
}
#: Causes that say the call could not be set up at all.
_FAILED = frozenset({
    "UNALLOCATED_NUMBER", "NO_ROUTE_TRANSIT_NET", "NO_ROUTE_DESTINATION", "CHANNEL_UNACCEPTABLE",
    "NUMBER_CHANGED", "DESTINATION_OUT_OF_ORDER", "INVALID_NUMBER_FORMAT", "FACILITY_REJECTED",
    "NORMAL_CIRCUIT_CONGESTION", "NETWORK_OUT_OF_ORDER", "NORMAL_TEMPORARY_FAILURE", "SWITCH_CONGESTION",
    "REQUESTED_CHAN_UNAVAIL", "BEARERCAPABILITY_NOTAVAIL", "BEARERCAPABILITY_NOTIMPL", "SERVICE_UNAVAILABLE",
    "SERVICE_NOT_IMPLEMENTED", "INCOMPATIBLE_DESTINATION", "RECOVERY_ON_TIMER_EXPIRE", "MANDATORY_IE_MISSING",
    "PROTOCOL_ERROR", "INTERWORKING", "SUBSCRIBER_ABSENT", "USER_NOT_REGISTERED", "GATEWAY_DOWN",
    "MEDIA_TIMEOUT", "INVALID_GATEWAY", "INVALID_URL", "INVALID_PROFILE", "NO_PICKUP", "EXCHANGE_ROUTING_ERROR",
    "INCOMING_CALL_BARRED", "OUTGOING_CALL_BARRED",
})
#: Unanswered causes after which a timer or the switch itself ended the leg.
_SYSTEM_CAUSES = frozenset({"NO_ANSWER", "NO_USER_RESPONSE", "ALLOTTED_TIMEOUT", "LOSE_RACE"})
_NORMAL = frozenset({"NORMAL_CLEARING", "NORMAL_UNSPECIFIED", "SUCCESS"})


def _micro(value: str | None) -> int | None:
    """A ``*_uepoch``: microseconds, None when 0 (FreeSWITCH's "never") or not a number."""
    if value is not None and value.isdigit() and value.isascii() and len(value) < 19:  # the usual case
        return int(value) or None
    number = to_number(value)
    return number if isinstance(number, int) and number > 0 else None


def _real(value: str | None) -> float | None:
    if value is not None and value.isascii() and len(value) <= 40 and value.replace(".", "", 1).isdigit():
        return float(value)  # the usual "4.50"
    number = to_number(value)
    return float(number) if isinstance(number, (int, float)) else None


def _whole(value: str | None) -> int | None:
    if value is not None and value.isdigit() and value.isascii() and len(value) < 19:  # the usual case
        return int(value)
    number = to_number(value)
    return number if isinstance(number, int) else None


def _since(start: int | None, then: int | None) -> int | None:
    return (then - start) // 1000 if start is not None and then is not None and then >= start else None


def _sip_status(term: str | None, proto: str | None) -> int | None:
    status = to_number(term)
    if isinstance(status, int):
        return status
    if proto and proto.startswith("sip:"):
        status = to_number(proto[4:])
        if isinstance(status, int):
            return status
    return None


def _transfers(history: str | None, originated: bool) -> int:
    """FreeSWITCH appends one ``epoch:uuid:kind:destination`` entry per transfer (``|:`` between them);
    an originate that sends its leg to a dialplan extension makes the first one (kind bl_xfer).
    ``uuid_br`` entries are not counted: uuid_bridge writes one on each of the two legs it joins
    (mod_callcenter's member and agent, an attended transfer's caller and consultation leg), and the
    call counts the leg that joined it instead (calls.call_row)."""
    if not history:
        return 0
    count = history.count("|:") + 1 - history.count(":uuid_br:")
    return max(0, count - 1) if originated else count


def outcome_of(answered: bool, last_app: str | None, cause: str | None, disposition: str | None,
               cc_cause: str | None, cc_agent_bridged: bool) -> str | None:
    """The leg's outcome (docs/call-center.md, "Outcome of a leg")."""
    if answered:
        if last_app == "voicemail":
            return "voicemail"
        if cc_cause == "cancel" and not cc_agent_bridged:
            return "cancelled"  # a queue answered the caller; the caller left before an agent did
        return "answered"
    if cause is None:
        return None
    if cause in _NORMAL and disposition not in (None, "SUCCESS"):
        cause = disposition  # the leg was cleared after its bridge failed: what the bridge met
    found = _UNANSWERED.get(cause)
    if found is not None:
        return found
    if cause in _FAILED:
        return "failed"
    return None


def hangup_by_of(inbound: bool, sip: str | None, cause: str | None, originate: str | None,
                 peer_cause: str | None) -> str | None:
    """Whose side ended the leg (docs/call-center.md, "Who hung up"). ``inbound``: the far end of this
    leg is the caller's side; otherwise the callee's. ``peer_cause``: last_bridge_hangup_cause, which
    FreeSWITCH sets on a leg whose bridged party hung up before it."""
    far, near = ("caller", "callee") if inbound else ("callee", "caller")
    if sip in ("recv_bye", "recv_cancel", "recv_refuse"):
        return far
    if cause == "ORIGINATOR_CANCEL" and not inbound:
        return "caller"  # the caller gave up, so the switch cancelled this leg
    if cause in _SYSTEM_CAUSES:
        return "system"
    if sip == "send_refuse":
        if originate in ("USER_BUSY", "CALL_REJECTED", "USER_CHALLENGE"):
            return near  # the caller was refused because the callee was busy or declined
        return "system"
    if peer_cause:
        # the party bridged to this leg went first: a timer or a lost race ended it, or its side did
        return "system" if peer_cause in _SYSTEM_CAUSES else near
    if sip in ("send_bye", "send_cancel"):
        return "system"
    return None


#: The channel variables the extended columns read, in the order :func:`leg_columns` unpacks them.
_VARIABLES = (
    "start_uepoch", "progress_uepoch", "progress_media_uepoch", "answer_uepoch", "bridge_uepoch", "end_uepoch",
    "billmsec", "hold_accum_ms", "hangup_cause", "hangup_cause_q850", "sip_hangup_disposition", "sip_term_status",
    "proto_specific_hangup_cause", "originate_disposition", "last_bridge_hangup_cause", "direction", "last_app",
    "current_application", "rtp_audio_in_mos", "rtp_audio_in_jitter_max_variance", "rtp_audio_in_jitter_loss_rate",
    "rtp_use_codec_name", "read_codec", "remote_media_ip", "sip_call_id", "sip_req_user", "rdnis",
    "destination_number", "cc_queue", "cc_agent", "cc_cause", "cc_agent_bridged", "cc_member_session_uuid",
    "transfer_history",
)
_KEYS = tuple(VARIABLE_PREFIX + name for name in _VARIABLES)
_TEXT_OR_NONE = frozenset((str, type(None)))


def leg_columns(headers: Headers, uuid: str, originator: str | None) -> dict[str, Value]:
    """The extended columns of one leg."""
    # Every lookup first (see the module's docstring), as plain dict lookups: this runs on the source
    # thread for every hangup.
    get = headers.get
    values = [get(key) for key in _KEYS]
    if not _TEXT_OR_NONE.issuperset(map(type, values)):
        values = [variable(headers, name) for name in _VARIABLES]  # a list or a number: as text
    (start, progress, media, answer, bridge, end, billmsec, hold, cause, q850, sip, term, proto, originate,
     peer_cause, direction, last_app, application, mos, jitter, loss, codec, read_codec, remote, call_id,
     requested, rdnis, destination, queue, agent, cc_cause, cc_bridged, member, history) = values
    hangup_cause, call_direction = header(headers, "Hangup-Cause"), header(headers, "Call-Direction")
    caller_rdnis, caller_destination = header(headers, "Caller-RDNIS"), header(headers, "Caller-Destination-Number")

    # the six times in one pass (isascii: str.isdigit takes other scripts' digits too)
    start_us, progress_us, media_us, answer_us, bridge_us, end_us = [
        (int(value) or None) if value is not None and value.isdigit() and value.isascii() and len(value) < 19
        else _micro(value) for value in (start, progress, media, answer, bridge, end)]
    cause = cause or hangup_cause
    inbound = (direction or call_direction) == "inbound"
    if inbound:
        # a leg that came to the switch started its call: the originator FreeSWITCH sets on it when
        # uuid_bridge joins it to another leg (an attended transfer's consultation leg) is not its origin
        originator = None
    answered = answer_us is not None
    number, talk, held = _whole(q850), _whole(billmsec), _whole(hold)
    destination = caller_destination or destination
    key = member if member and member != uuid else originator or uuid
    return {
        "call_key": key,
        "outcome": outcome_of(answered, last_app or application, cause, originate, cc_cause, cc_bridged == "true"),
        "hangup_by": hangup_by_of(inbound, sip, cause, originate, peer_cause),
        "q850_cause": number,
        "sip_status": _sip_status(term, proto),
        "sip_disposition": sip,
        "started_at_ms": start_us // 1000 if start_us is not None else None,
        "duration_ms": _since(start_us, end_us),
        "pdd_ms": _since(start_us, progress_us),
        "early_media_ms": _since(start_us, media_us),
        "answer_ms": _since(start_us, answer_us),
        "bridge_ms": _since(start_us, bridge_us),
        "talk_ms": talk if answered else None,
        "hold_ms": held,
        "mos": _real(mos),
        "jitter_max_variance": _real(jitter),
        "loss_rate": _real(loss),
        "codec": codec or read_codec,
        "remote_media_ip": remote,
        "sip_call_id": call_id,
        # a b-leg inherits its caller's RDNIS: what it was sent to is its own destination
        "first_destination": destination if originator
        else (requested if inbound else None) or caller_rdnis or rdnis or destination,
        "queue": queue,
        "agent": agent,
        "transfers": _transfers(history, not inbound and not originator),
    }
