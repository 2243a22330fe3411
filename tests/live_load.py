"""What a load run in a real FreeSWITCH needs beside the switch itself (tests/live_switch.py): the
event stream as FreeSWITCH delivered it, a table's rows as fs_cdr left them, and how the two compare.

Used by tests/test_freeswitch_realtime_load.py and bench/realtime_load.py.
"""

from __future__ import annotations

import bisect
import json
import os
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

from live_switch import ESL_PASSWORD, FS_BIN, LiveSwitch

from fs_cdr.channel import decode_event
from fs_cdr.esl import EventSocket
from fs_cdr.realtime import COMPLETED, STATES

#: The channel events tools/record_scenarios.py records (and tests/events/ holds).
EVENTS = ("CHANNEL_CREATE", "CHANNEL_ANSWER", "CHANNEL_BRIDGE", "CHANNEL_UNBRIDGE", "CHANNEL_HANGUP",
          "CHANNEL_HANGUP_COMPLETE", "CHANNEL_DESTROY", "CHANNEL_PROGRESS", "CHANNEL_PROGRESS_MEDIA")
#: The two-leg call of bench/switch_cost.py: a null/ leg running extension 4299, which bridges it to an
#: auto-answering null/ leg and hangs up a second later (tests/freeswitch/default_fs_cdr_load.xml).
ORIGINATE = "originate {null_auto_answer_delay=0}null/bench 4299 XML default"

SQL_TARGETS: dict[str, dict[str, Any]] = {
    "mariadb": {"dbtype": "mysql", "connectionstring": "127.0.0.1,3306@test", "username": "root"},
    "postgresql": {"dbtype": "pgsql", "connectionstring": "127.0.0.1,5432@test", "username": "postgres"},
}
#: Columns that differ between two runs of the same calls: uuids (the leg's, its peer's, the
#: FreeSWITCH process's), times and what is counted from them, the global Event-Sequence, and
#: ``details``: which variables a leg has varies between two hangup-only runs of the same calls
#: (``bridge_hangup_cause``, ``last_bridge_role``, ``last_sent_callee_id_*`` depend on which thread
#: wins a race), so across runs it is only checked to be there; tests/test_freeswitch_realtime_load.py
#: compares it exactly, against a hangup-only table fed by the same FreeSWITCH.
RUN_DEPENDENT = frozenset(("uuid", "call_uuid", "bridge_uuid", "originator", "core_uuid", "start_epoch", "answer_epoch",
                           "end_epoch", "duration", "billsec", "event_seq", "details",
                           "start_stamp", "answer_stamp", "end_stamp", "billmsec"))


def start_own(live: LiveSwitch, wait_s: float = 1800.0, quiet_s: float = 20.0) -> None:
    """Start ``live`` (on ports of its own; the harness checks that it is this switch that answers)
    once no other FreeSWITCH of the harness's binary has run for ``quiet_s``: a measured run shares the
    cores with no other switch (a test suite starts one after another: the gap is no time to start)."""
    deadline = time.time() + wait_s
    free_since = time.time()
    while time.time() - free_since < quiet_s:
        if other_switches(0):
            if time.time() > deadline:
                raise RuntimeError(f"another FreeSWITCH kept running: {sorted(other_switches(0))}")
            free_since = time.time()
        time.sleep(1)
    live.start()
    mine = str(live.cdr_path)
    if not live.wait_until(lambda: (live.fs_cdr_status() or {}).get("config") == mine, 20):
        live.kill()
        raise RuntimeError(f"fs_cdr in this FreeSWITCH does not run {mine}: {live.fs_cdr_status()}")


def other_switches(mine: int) -> set[int]:
    """Other processes of the harness's FreeSWITCH binary: they would compete for its ports."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != mine:
            try:
                if os.readlink(f"/proc/{entry}/exe") == str(FS_BIN):
                    found.add(int(entry))
            except OSError:
                continue
    return found


class SwitchWatch:
    """Notes every other FreeSWITCH of the harness's binary seen while a run lasts: another session's
    switch started meanwhile could not bind the ports, and would send its commands to ours."""

    def __init__(self, mine: int, period_s: float = 1.0) -> None:
        self.mine, self.period_s = mine, period_s
        self.seen: set[int] = set()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="switch-watch", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while True:
            self.seen |= other_switches(self.mine)
            if self._stopping.wait(self.period_s):
                return

    def stop(self) -> set[int]:
        self._stopping.set()
        self._thread.join()
        self.seen |= other_switches(self.mine)
        return self.seen


def connect(kind: str) -> Any:
    """An autocommit connection: each SELECT sees what is committed at that moment."""
    if kind == "mariadb":
        import MySQLdb

        connection = MySQLdb.connect(host="127.0.0.1", port=3306, user="root", db="test", charset="utf8mb4")
        connection.autocommit(True)
        return connection
    import psycopg

    return psycopg.connect(host="127.0.0.1", port=5432, dbname="test", user="postgres", autocommit=True)


def read_rows(kind: str, table: str) -> list[dict[str, Any]]:
    """Every row of ``table``, ``details`` as a dict."""
    connection = connect(kind)
    try:
        cursor = connection.cursor()
        cursor.execute(f"SELECT * FROM {table}")
        names = [description[0] for description in cursor.description]
        found = [dict(zip(names, row)) for row in cursor.fetchall()]
    finally:
        connection.close()
    for row in found:
        row.pop("id", None)  # MySQL's clustered key: the order rows were inserted, not the record's
        if isinstance(row.get("details"), (str, bytes)):
            row["details"] = json.loads(row["details"])
    return found


def drop(kind: str, table: str) -> None:
    connection = connect(kind)
    try:
        connection.cursor().execute(f"DROP TABLE IF EXISTS {table}")
    finally:
        connection.close()


def sessions_created(live: LiveSwitch) -> int:
    """FreeSWITCH's own count of the sessions (legs) it created since it started (``status``)."""
    found = re.search(r"(\d+) session\(s\) since startup", live.api("status"))
    return int(found.group(1)) if found else -1


def everything_built(live: LiveSwitch, legs: int) -> bool:
    """fs_cdr built a final record for each of ``legs`` and holds none in its queues."""
    status = live.fs_cdr_status()
    return status is not None and status["records"] >= legs and all(sink["queued"] == 0 for sink in status["sinks"])


def comparable(rows: Iterable[dict[str, Any]]) -> Counter:
    """The rows as a multiset of their run-independent columns."""
    return Counter(tuple(sorted((name, value) for name, value in row.items() if name not in RUN_DEPENDENT))
                   for row in rows)


def difference(rows: list[dict[str, Any]], reference: list[dict[str, Any]]) -> str:
    """'' when ``rows`` equal ``reference`` in their run-independent columns, else which rows differ:
    each kind of row found on one side only, by the columns where it is unlike its leg's usual row."""
    ours, theirs = comparable(rows), comparable(reference)
    if ours == theirs:
        return ""
    usual: dict[Any, dict[str, Any]] = {}
    for key, _count in (ours + theirs).most_common():
        usual.setdefault(dict(key).get("leg"), dict(key))

    def unusual(key: tuple) -> dict[str, Any]:
        values = dict(key)
        common = usual[values.get("leg")]
        return {"leg": values.get("leg"), **{name: value for name, value in values.items() if value != common.get(name)}}

    extra, missing = ours - theirs, theirs - ours
    parts = [f"{count} x {unusual(key)} only here" for key, count in extra.items()]
    parts += [f"{count} x {unusual(key)} only in the reference" for key, count in missing.items()]
    shown = parts[:6]  # enough to tell what differs; the rest counted
    return "; ".join(shown) + (f"; and {len(parts) - len(shown)} more kinds of row" if len(parts) > len(shown) else "")


def _as_number(value: Any) -> Any:
    return int(value) if isinstance(value, str) and value.isdigit() else value


def unlike_own_details(rows: Iterable[dict[str, Any]]) -> list[tuple[str, str, Any, Any]]:
    """Columns of a row that disagree with the channel variables in its own ``details`` (which only the
    final record, built from CHANNEL_HANGUP_COMPLETE, carries): a row mixing an update into its final
    record shows here. (uuid, column, column's value, the variable's)."""
    out = []
    for row in rows:
        details = row.get("details") or {}
        expected = {
            "uuid": details.get("uuid"), "hangup_cause": details.get("hangup_cause"),
            "billsec": _as_number(details.get("billsec")), "duration": _as_number(details.get("duration")),
            "start_epoch": _as_number(details.get("start_epoch")), "end_epoch": _as_number(details.get("end_epoch")),
            "answer_epoch": _as_number(details.get("answer_epoch")) or None,
            "bridge_uuid": details.get("bridge_uuid") or details.get("last_bridge_to"),
        }
        for column, value in expected.items():
            if row.get(column) != value:
                out.append((str(row.get("uuid")), column, row.get(column), value))
    return out


def incomplete(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows that are not a final record with its details."""
    return [row for row in rows if row.get("call_state") != COMPLETED or not row.get("details")]


class EventCapture(EventSocket):
    """Every channel event FreeSWITCH sends one event-socket listener, in its order. A thread only
    receives the bytes while calls run (a listener that falls behind would have its events dropped
    by FreeSWITCH); they are parsed when the capture stops."""

    def __init__(self, live: LiveSwitch, events: Iterable[str] = EVENTS) -> None:
        super().__init__(port=live.esl_port, password=ESL_PASSWORD)
        self.subscribe(*events)
        self._chunks: list[tuple[float, bytes]] = []
        #: time.time() each event of the last stop() had arrived (its last byte), in their order
        self.arrivals: list[float] = []
        self._stopping = threading.Event()
        #: time.time() of the last bytes received
        self.last_received = time.time()
        self._thread = threading.Thread(target=self._receive, name="event-capture", daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stopping.is_set():
            try:
                chunk = self.sock.recv(1 << 20)
            except socket.timeout:
                continue
            except OSError:
                return
            if not chunk:
                return
            self.last_received = time.time()
            self._chunks.append((self.last_received, chunk))

    def stop(self, quiet_s: float = 1.0, timeout_s: float = 30.0) -> list[dict[str, Any]]:
        """Once nothing came for ``quiet_s``: the events received, decoded, in their order."""
        deadline = time.time() + timeout_s
        while time.time() - self.last_received < quiet_s and time.time() < deadline:
            time.sleep(0.1)
        self._stopping.set()
        self._thread.join()
        self.close()
        arrivals, pieces, total = [], [self._buffer], len(self._buffer)
        for moment, chunk in self._chunks:
            pieces.append(chunk)
            total += len(chunk)
            arrivals.append((total, moment))
        self._chunks, self._buffer = [], b""
        events, self.arrivals = self._messages(b"".join(pieces), arrivals)
        return events

    @staticmethod
    def _messages(data: bytes, arrivals: list[tuple[int, float]]) -> tuple[list[dict[str, Any]], list[float]]:
        """The events in ``data`` (event-socket messages: headers, a blank line, Content-Length bytes),
        and when each had arrived whole, from (bytes received so far, time.time()) per chunk. One pass:
        EventSocket._parse copies what remains after each message, quadratic over a burst's 100 MB."""
        ends = [end for end, _moment in arrivals]
        events: list[dict[str, Any]] = []
        moments: list[float] = []
        position = 0
        while True:
            head_end = data.find(b"\n\n", position)
            if head_end < 0:
                return events, moments
            headers = dict(line.partition(":")[::2] for line in
                           data[position:head_end].decode("utf-8", "replace").splitlines())
            length = int(headers.get("Content-Length", "0").strip() or 0)
            body_end = head_end + 2 + length
            if body_end > len(data):
                return events, moments
            if headers.get("Content-Type", "").strip() == "text/event-json":
                events.append(decode_event(data[head_end + 2:body_end]))
                index = bisect.bisect_left(ends, body_end)
                moments.append(arrivals[min(index, len(arrivals) - 1)][1] if arrivals else 0.0)
            position = body_end


def late_hangup_legs(events: list[dict[str, Any]]) -> list[str]:
    """Legs whose CHANNEL_HANGUP came after their CHANNEL_HANGUP_COMPLETE, in the order received."""
    completed: set[str] = set()
    late = []
    for event in events:
        name, uuid = event.get("Event-Name"), str(event.get("Unique-ID"))
        if name == "CHANNEL_HANGUP_COMPLETE":
            completed.add(uuid)
        elif name == "CHANNEL_HANGUP" and uuid in completed:
            late.append(uuid)
    return late


class RowWatcher:
    """Polls a table's (uuid, event_seq, call_state) every ``period_s`` and notes when each row changed:
    the moment a state became visible to a reader, to within one poll."""

    def __init__(self, kind: str, table: str, period_s: float = 0.01) -> None:
        self.kind, self.table, self.period_s = kind, table, period_s
        #: uuid -> [(time.time(), event_seq, call_state)], one entry per change seen
        self.history: dict[str, list[tuple[float, int | None, str]]] = {}
        self.polls = 0
        self.poll_s = 0.0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="row-watcher", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        connection = connect(self.kind)
        cursor = connection.cursor()
        seen: dict[str, tuple[int | None, str]] = {}
        first = time.time()
        while not self._stopping.is_set():
            before = time.time()
            try:
                cursor.execute(f"SELECT uuid, event_seq, call_state FROM {self.table}")
                found = cursor.fetchall()
            except Exception:  # noqa: BLE001 - the table is created by fs_cdr once it starts
                found = []
            after = time.time()
            moment = (before + after) / 2
            for uuid, seq, state in found:
                if seen.get(uuid) != (seq, state):
                    seen[uuid] = (seq, state)
                    self.history.setdefault(uuid, []).append((moment, seq, state))
            self.polls += 1
            self._stopping.wait(self.period_s)
        self.poll_s = (time.time() - first) / max(self.polls, 1)
        connection.close()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join()


def state_lags(events: list[dict[str, Any]], history: dict[str, list[tuple[float, int | None, str]]]
               ) -> tuple[list[tuple[str, float]], list[dict[str, Any]]]:
    """For each state change fs_cdr writes (an event of realtime.STATES, or CHANNEL_HANGUP_COMPLETE):
    seconds from its Event-Date-Timestamp to the first moment its row showed that state or a later
    one (an event_seq at least its own, or the final record), with the event's name; and the events
    whose row never did."""
    lags: list[tuple[str, float]] = []
    never = []
    for event in events:
        name = str(event.get("Event-Name"))
        if name not in STATES and name != "CHANNEL_HANGUP_COMPLETE":
            continue
        sequence = int(event["Event-Sequence"])
        fired = int(event["Event-Date-Timestamp"]) / 1e6
        for moment, seq, state in history.get(event["Unique-ID"], ()):
            if state == COMPLETED or (name != "CHANNEL_HANGUP_COMPLETE" and seq is not None and seq >= sequence):
                lags.append((name, moment - fired))
                break
        else:
            never.append(event)
    return lags, never


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]
