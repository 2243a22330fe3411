"""When the disk under the spool fails: real faults on a size-limited tmpfs (full, read-only, a
directory removed, a segment cut by hand). No record leaves memory before it is on disk or in the
sink; what neither can hold is counted lost with its uuid in the log; the counters always add up.

Needs root for ``mount``; each test skips with the reason where the machine refuses it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

import pytest

from conftest import MARIADB, drop_table, hangups, rows
from fs_cdr.config import BatchSettings, parse_config
from fs_cdr.engine import Engine
from fs_cdr.errors import RetriableError
from fs_cdr.metrics import prometheus
from fs_cdr.retry import Backoff
from fs_cdr.spool import Spool, disk_space
from fs_cdr.writer import SPACE_CHECK_S, Guard, SinkLane
from processes import wait_for
from test_spool import hanging_lane

#: A record about the size of a real one with ``details`` (3.5 KB).
PAYLOAD = json.dumps({"sip_h_X-Padding": "x" * 3000})


class SwitchableSink:
    """Stores rows by uuid like an upsert would; ``state["down"]`` makes every write fail."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state

    def open(self) -> None:
        if self.state["down"]:
            raise RetriableError("connection refused")

    def write(self, records: Any) -> None:
        if self.state["down"]:
            raise RetriableError("server has gone away")
        with self.state["lock"]:
            for record in records:
                self.state["rows"][record["uuid"]] = record
                self.state["writes"].append(record["uuid"])

    def close(self) -> None:
        pass


def _mount(path: str, size: str) -> None:
    os.makedirs(path, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path],
                            capture_output=True, text=True, timeout=20)
    if result.returncode:
        pytest.skip(f"cannot mount a tmpfs for a full disk here ({result.stderr.strip() or result.returncode}); "
                    "run the tests as root")


def _umount(path: str) -> None:
    subprocess.run(["umount", "-l", path], capture_output=True, timeout=20)


@contextmanager
def tiny_disk(path: str, size: str = "2m") -> Iterator[str]:
    _mount(path, size)
    try:
        yield path
    finally:
        _umount(path)


def remount(path: str, mode: str) -> None:
    result = subprocess.run(["mount", "-o", f"remount,{mode}", path], capture_output=True, text=True, timeout=20)
    if result.returncode:
        pytest.skip(f"cannot remount {path} {mode}: {result.stderr.strip()}")


@contextmanager
def read_only(path: str) -> Iterator[str]:
    """``path`` made read-only while fs_cdr runs: a read-only bind mount of the directory over itself.
    (``mount -o remount,ro`` of the whole filesystem is refused, EBUSY, while a process holds a file
    on it open for writing, as every lane holds its spool's lock file.) Every file opened or made
    there from then on gets EROFS; the descriptors opened before stay writable."""
    result = subprocess.run(["mount", "--bind", path, path], capture_output=True, text=True, timeout=20)
    if result.returncode:
        pytest.skip(f"cannot bind-mount {path} here ({result.stderr.strip()}); run the tests as root")
    result = subprocess.run(["mount", "-o", "remount,bind,ro", path], capture_output=True, text=True, timeout=20)
    if result.returncode:
        _umount(path)
        pytest.skip(f"cannot make the bind mount of {path} read-only: {result.stderr.strip()}")
    try:
        yield path
    finally:
        _umount(path)


def figures(fault: str, sent: int, written: int, spooled: int, lost: int, duplicated: int) -> None:
    """One line of docs/durability.md's "Measured" table (shown with ``pytest -s``)."""
    print(f"\nFIGURES | {fault} | sent {sent} | written {written} | spooled {spooled} | lost {lost} "
          f"| duplicated {duplicated}")


def duplicated(state: dict[str, Any]) -> int:
    return len(state["writes"]) - len(set(state["writes"]))


def fill(path: str) -> str:
    """Take every free byte of the filesystem at ``path`` with a ballast file; returns its path."""
    ballast = os.path.join(path, "ballast")
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for size in (65536, 4096, 512, 1):
            while True:
                try:
                    os.write(fd, b"\0" * size)
                except OSError:
                    break
    finally:
        os.close(fd)
    return ballast


def lane_on(directory: str, state: dict[str, Any], queue_size: int = 5000, **settings: Any) -> SinkLane:
    return SinkLane("test", "switchable", lambda: SwitchableSink(state),
                    BatchSettings(batch_size=50, flush_interval_ms=10, queue_size=queue_size, worker_process=False,
                                  **settings),
                    directory, backoff=Backoff(base_s=0.01, cap_s=0.05))


def new_state(down: bool = True) -> dict[str, Any]:
    return {"down": down, "rows": {}, "writes": [], "lock": threading.Lock()}


def record(index: int, tag: str = "call") -> dict[str, Any]:
    return {"uuid": f"{tag}-{index:06d}", "details": PAYLOAD}


def counts(lane: SinkLane) -> dict[str, int]:
    status = lane.status()
    return {name: int(status[name]) for name in ("received", "written", "queued", "spooled", "rejected", "lost")}


def adds_up(lane: SinkLane) -> bool:
    c = counts(lane)
    return c["received"] == c["written"] + c["queued"] + c["spooled"] + c["rejected"] + c["lost"]


def disk_lines(caplog: Any, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR and text in r.getMessage()]


@pytest.fixture
def disk(tmp_path: Any) -> Iterator[str]:
    with tiny_disk(str(tmp_path / "disk")) as path:
        yield path


def test_a_full_spool_disk_keeps_records_in_memory_until_the_sink_takes_them(disk, caplog) -> None:
    state = new_state(down=True)
    lane = lane_on(disk, state, spool_max_mb=100)  # the disk fills before the bound
    guard = Guard(lambda: [lane], 0.1)
    lane.start()
    guard.start()
    try:
        for index in range(2000):  # ~6 MB of records for a 2 MB disk
            lane.offer(record(index), time.monotonic())
        assert wait_for(lambda: lane.disk == "full" and lane.queued() > 0 and adds_up(lane), 20), counts(lane)
        time.sleep(1.0)  # several guard ticks on the full disk
        c = counts(lane)
        assert c["spooled"] > 0 and c["queued"] > 0 and c["lost"] == 0 and adds_up(lane), c
        refusals = disk_lines(caplog, "refuses records")
        assert len(refusals) == 1, refusals  # one line per state change, not one per tick
        assert disk in refusals[0] and "ENOSPC" in refusals[0] and "MB free of" in refusals[0]
        assert lane.status()["disk"] == "full" and not lane.healthy

        state["down"] = False
        assert wait_for(lambda: len(state["rows"]) == 2000 and lane.settled(), 30), counts(lane)
        c = counts(lane)
        assert c == {"received": 2000, "written": 2000, "queued": 0, "spooled": 0, "rejected": 0, "lost": 0}, c
        assert wait_for(lambda: lane.disk in ("ok", "low"), 5)
        assert any("takes records again" in r.getMessage() for r in caplog.records)
        figures("sink down, 2,000 records of 3 KB, spool on a 2 MB tmpfs, then the sink back", 2000, c["written"],
                lane.spool.spooled_total, c["lost"], duplicated(state))
    finally:
        guard.stop()
        lane.stop(1.0)


def test_what_memory_cannot_hold_is_counted_lost_and_its_uuids_logged(disk, caplog) -> None:
    state = new_state(down=True)
    lane = lane_on(disk, state, queue_size=300)
    guard = Guard(lambda: [lane], 0.1)
    lane.start()
    guard.start()
    try:
        for index in range(1000):
            lane.offer(record(index), time.monotonic())
            if index % 100 == 0:
                time.sleep(0.15)  # let the guard fill the disk as a real call rate would
        assert wait_for(lambda: lane.disk == "full" and adds_up(lane), 20), counts(lane)
        c = counts(lane)
        assert c["lost"] > 0 and c["queued"] <= 300 + 50 and c["spooled"] > 0, c  # queue + the batch in flight
        named = [r.getMessage() for r in caplog.records if "LOST" in r.getMessage()]
        assert named and "call-" in named[0]
        first_lost = named[0].split(": ")[-1].split(",")[0].strip("'\" ")

        state["down"] = False
        assert wait_for(lambda: lane.settled(), 30), counts(lane)
        c = counts(lane)
        assert c["written"] + c["lost"] == 1000 and adds_up(lane), c
        assert len(state["rows"]) == c["written"]
        assert first_lost not in state["rows"]  # the uuid the log named is really the one missing
        figures("same, queue_size 300", 1000, c["written"], lane.spool.spooled_total, c["lost"], duplicated(state))
    finally:
        guard.stop()
        lane.stop(1.0)


def test_a_stop_while_neither_sink_nor_disk_takes_records_counts_them_lost(disk, caplog) -> None:
    fill(disk)
    state = new_state(down=True)
    lane = lane_on(disk, state)
    lane.start()
    for index in range(40):
        lane.offer(record(index), time.monotonic())
    assert wait_for(lambda: lane.stats.retries >= 1, 5)
    lane.stop(0.2)
    c = counts(lane)
    assert c["lost"] == 40 and c["queued"] == 0 and adds_up(lane), c
    assert any("LOST" in r.getMessage() and "call-000000" in r.getMessage() for r in caplog.records)


def test_a_read_only_disk_holds_records_in_memory_and_they_spool_once_it_is_writable(disk, caplog) -> None:
    """The spool's disk is read-only when the sink starts (a remount after an fsck, a failing
    device): records stay in memory; once it is writable again they are spooled."""
    remount(disk, "ro")
    state = new_state(down=True)
    try:
        lane = lane_on(disk, state)
        guard = Guard(lambda: [lane], 0.1)
        lane.start()
        guard.start()
        for index in range(100):
            lane.offer(record(index), time.monotonic())
        assert lane.disk == "failing" and "EROFS" in lane.disk_error, lane.status()
        assert wait_for(lambda: lane.stats.retries >= 1, 5)
        time.sleep(0.5)
        assert lane.queued() == 100 and adds_up(lane) and lane.spool.pending == 0
        assert len(disk_lines(caplog, "refuses records")) == 1
    finally:
        remount(disk, "rw")
    try:
        assert wait_for(lambda: lane.spool.pending == 100 and lane.queued() == 0, 10), counts(lane)
        assert lane.disk in ("ok", "low") and adds_up(lane)
        state["down"] = False
        assert wait_for(lambda: len(state["rows"]) == 100 and lane.settled(), 20)
        c = counts(lane)
        figures("spool disk read-only at start, then writable, then the sink back", 100, c["written"],
                lane.spool.spooled_total, c["lost"], duplicated(state))
    finally:
        guard.stop()
        lane.stop(1.0)


def test_a_spool_directory_removed_by_hand_is_counted_lost_and_made_again(tmp_path, caplog) -> None:
    state = new_state(down=True)
    lane = lane_on(str(tmp_path), state)
    lane.start()
    try:
        for index in range(30):
            lane.offer(record(index), time.monotonic())
        assert wait_for(lambda: lane.stats.retries >= 1, 5)
        lane.guard(time.monotonic() + 10, 0.1)
        assert lane.spool.pending == 30
        shutil.rmtree(lane.spool.directory)
        for index in range(30, 40):
            lane.offer(record(index), time.monotonic())
        lane.guard(time.monotonic() + 20, 0.1)  # appends into a directory made again
        state["down"] = False
        assert wait_for(lambda: lane.settled(), 20), counts(lane)
        c = counts(lane)
        assert c["lost"] == 30 and c["written"] == 10 and adds_up(lane), c
        assert sorted(state["rows"]) == [f"call-{index:06d}" for index in range(30, 40)]
        assert any("removed from the spool by hand" in m for m in disk_lines(caplog, "lost"))
        figures("spool directory removed by hand with 30 records in it", 40, c["written"], lane.spool.spooled_total,
                c["lost"], duplicated(state))
    finally:
        lane.stop(1.0)


def test_a_segment_cut_by_hand_counts_the_missing_records_lost(tmp_path, caplog) -> None:
    spool = Spool(str(tmp_path))
    spool.append([record(index) for index in range(100)])
    segment = os.path.join(str(tmp_path), sorted(n for n in os.listdir(tmp_path) if n.endswith(".jsonl"))[0])
    spool.close()
    with open(segment, "r+b") as handle:
        handle.truncate(os.path.getsize(segment) // 2)
    spool = Spool(str(tmp_path))
    seen = 0
    while spool.pending:
        ticket, records = spool.take(30)
        assert ticket is not None
        seen += len(records)
        spool.confirm(ticket)
    assert 45 <= seen <= 50 and spool.lost == 0  # the cut is found when the segment was counted again
    spool.close()

    # cut while this process has it counted: confirmed short, the rest is lost and logged
    spool = Spool(str(tmp_path / "again"))
    spool.append([record(index) for index in range(100)])
    segment = [os.path.join(spool.directory, n) for n in os.listdir(spool.directory) if n.endswith(".jsonl")][0]
    with open(segment, "r+b") as handle:
        handle.truncate(os.path.getsize(segment) // 2)
    seen = 0
    while spool.pending:
        ticket, records = spool.take(30)
        assert ticket is not None
        seen += len(records)
        spool.confirm(ticket)
    assert seen + spool.lost == 100 and spool.lost > 0
    assert disk_lines(caplog, "fewer records than were spooled")
    spool.close()


@pytest.mark.parametrize("offset_files", ["kept", "removed"])
def test_replay_drains_a_spool_on_a_disk_with_no_byte_free(disk, offset_files) -> None:
    state = new_state(down=True)
    lane = lane_on(disk, state, spool_max_mb=1.2)
    lane.start()
    for index in range(600):
        lane.offer(record(index), time.monotonic())
    assert wait_for(lambda: lane.stats.retries >= 1, 5)
    lane.guard(time.monotonic() + 10, 0.1)
    spooled = lane.spool.pending
    lane.stop(0.2)
    assert spooled > 200, spooled
    if offset_files == "removed":  # a spool written by an older fs_cdr, or offset files lost
        for name in os.listdir(os.path.join(disk, "test")):
            if name.endswith(".offset"):
                os.unlink(os.path.join(disk, "test", name))
    fill(disk)
    state["down"] = False
    lane = lane_on(disk, state)
    assert lane.spool.pending == spooled and lane.stats.recovered == spooled
    lane.start()
    try:
        assert wait_for(lambda: lane.settled(), 30), counts(lane)
        assert len(state["rows"]) == spooled
        assert not [n for n in os.listdir(os.path.join(disk, "test")) if n.endswith(".jsonl")]
        assert adds_up(lane) and counts(lane)["written"] == spooled
        c = counts(lane)
        figures(f"replay with no byte free on the spool's disk, offset files {offset_files}", spooled, c["written"],
                spooled, c["lost"], duplicated(state))
    finally:
        lane.stop(1.0)


def test_spool_max_mb_bounds_the_spool_and_never_deletes_what_is_on_disk(tmp_path) -> None:
    state = new_state(down=True)
    lane = lane_on(str(tmp_path), state, spool_max_mb=0.5)
    lane.start()
    try:
        for index in range(400):
            lane.offer(record(index), time.monotonic())
        assert wait_for(lambda: lane.stats.retries >= 1, 5)
        lane.guard(time.monotonic() + 10, 0.1)
        first = lane.spool.pending
        assert 0 < first < 400 and lane.spool.bytes <= 500_000
        assert lane.disk == "full" and "spool_max_mb" in lane.disk_error
        for index in range(400, 450):
            lane.offer(record(index), time.monotonic())
        lane.guard(time.monotonic() + 20, 0.1)
        assert lane.spool.pending == first  # nothing made room
        assert adds_up(lane) and counts(lane)["lost"] == 0
        state["down"] = False
        assert wait_for(lambda: lane.settled(), 20), counts(lane)
        assert len(state["rows"]) == 450
    finally:
        lane.stop(1.0)


# -- the command line, against the real MariaDB --------------------------------------------------

def _events_file(path: str, count: int, tag: str) -> str:
    template = hangups("b_bridge_null")[1]
    with open(path, "w", encoding="utf-8") as handle:
        for index in range(count):
            handle.write(json.dumps(dict(template, **{"Unique-ID": f"{tag}-{index:06d}"})) + "\n")
    return path


def _cdr_json(path: str, table: str, spool_dir: str, port: int) -> str:
    document = {"cdr": {"details": True, "spool_dir": spool_dir, "durable_window_ms": 200,
                        "database": {"dbtype": "mysql", "table": table, "username": "root",
                                     "connectionstring": f"{MARIADB['host']},{port}@{MARIADB['database']}",
                                     "timeout_s": 1, "worker_process": False}}}
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(document, handle)
    return path


def _fs_cdr(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fs_cdr", *args], capture_output=True, text=True, timeout=180)


def test_play_and_replay_on_a_full_disk_say_what_they_could_not_do(tmp_path, table_name) -> None:
    spool_dir = str(tmp_path / "disk")
    events = _events_file(str(tmp_path / "calls.jsonl"), 2000, "full")
    down = _cdr_json(str(tmp_path / "down.json"), table_name, spool_dir, 1)  # nothing listens on port 1
    up = _cdr_json(str(tmp_path / "up.json"), table_name, spool_dir, MARIADB["port"])
    with tiny_disk(spool_dir):
        try:
            played = _fs_cdr("-c", down, "play", events)
            assert played.returncode == 1, played.stderr[-2000:]
            assert "refuses records" in played.stderr
            lost_line = [line for line in played.stderr.splitlines() if "records LOST" in line]
            assert lost_line, played.stderr[-2000:]
            lost = int(re.search(r"(\d+) records LOST", lost_line[0]).group(1))  # type: ignore[union-attr]
            assert 0 < lost < 2000
            assert "Traceback" not in played.stderr

            replayed = _fs_cdr("-c", up, "replay", "--timeout", "60")
            assert replayed.returncode == 0, replayed.stdout + replayed.stderr[-2000:]
            written = rows("mysql", tmp_path, table_name, "uuid")
            assert len(written) + lost == 2000, (len(written), lost, replayed.stdout)
            assert "; done" in replayed.stdout and "Traceback" not in replayed.stderr
            assert not [n for n in os.listdir(os.path.join(spool_dir, "mysql")) if n.endswith(".jsonl")]
            spooled = int(re.search(r"mysql: (\d+) spooled", replayed.stdout).group(1))  # type: ignore[union-attr]
            figures("fs-cdr play of 2,000 hangups, MariaDB unreachable, spool on a 2 MB tmpfs; then fs-cdr replay",
                    2000, len(written), spooled, lost, len(written) - len({row["uuid"] for row in written}))
        finally:
            drop_table("mysql", tmp_path, table_name)


def test_little_free_space_is_warned_once_per_change_naming_the_path_and_the_space(tmp_path, caplog) -> None:
    """Under LOW_FREE_SHARE of the spool's disk free: one WARNING naming the path and the free space,
    not one per guard tick (the space is looked at again every SPACE_CHECK_S); another once the disk
    went back to ok and then low again."""
    with tiny_disk(str(tmp_path / "disk"), "20m") as disk:
        _free, size = disk_space(disk)
        ballast = os.path.join(disk, "ballast")
        with open(ballast, "wb") as handle:
            handle.write(b"\0" * int(size * 0.93))  # 93 % full: 1.5 MB left
        state = new_state(down=True)
        lane = lane_on(disk, state)
        guard = Guard(lambda: [lane], 0.1)
        lane.start()
        guard.start()

        def warnings() -> list[str]:
            return [r.getMessage() for r in caplog.records
                    if r.levelno == logging.WARNING and "little room left" in r.getMessage()]

        try:
            for wave in range(5):  # spooled over several ticks, each append looking at the space
                for index in range(20):
                    lane.offer(record(wave * 20 + index), time.monotonic())
                time.sleep(0.3)
            assert wait_for(lambda: lane.spool.pending == 100 and lane.queued() == 0, 10), counts(lane)
            time.sleep(2.5 * SPACE_CHECK_S)  # guard ticks, and the space looked at again, twice or more
            lines = warnings()
            assert len(lines) == 1, lines
            assert disk in lines[0] and re.search(r"\d+\.\d MB free of 2\d\.\d MB", lines[0]), lines[0]
            status = lane.status()
            assert status["disk"] == "low" and status["disk_error"] == "" and adds_up(lane), status

            os.unlink(ballast)
            assert wait_for(lambda: lane.disk == "ok", 5)
            with open(ballast, "wb") as handle:
                handle.write(b"\0" * int(size * 0.93))
            assert wait_for(lambda: lane.disk == "low", 5)
            time.sleep(2.5 * SPACE_CHECK_S)
            assert len(warnings()) == 2, warnings()
        finally:
            guard.stop()
            lane.stop(1.0)


@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_a_journal_the_disk_refuses_keeps_the_records_in_memory_until_the_sink_answers(disk, fault, caplog) -> None:
    """The sink hangs (not down: nothing goes to the spool), so records that waited half the window
    are due for the journal; its disk refuses. They stay in memory, uncounted as lost, the disk state
    says why, and they are all written, each once, when the sink answers."""
    lane, state, gate = hanging_lane(disk)
    lane.start()
    uuids = [f"slow-{index}" for index in range(30)]
    refusing: Any = read_only(lane.journal.directory) if fault == "read-only" else tiny_fill(disk)
    try:
        start = time.monotonic()
        for uuid in uuids:
            lane.offer({"uuid": uuid}, start)
        assert wait_for(lambda: lane.writers[0]._inflight is not None, 5)
        with refusing:
            for tick in range(1, 6):  # every record waited past half the window: due for the journal
                lane.guard(start + 0.15 * tick, 0.2)
            status = lane.status()
            assert lane.journal.journaled_total == 0 and status["journaled"] == 0, status
            assert status["queued"] == 30 and status["lost"] == 0 and adds_up(lane), status
            assert status["disk"] == ("full" if fault == "full" else "failing"), status
            assert ("ENOSPC" if fault == "full" else "EROFS") in status["disk_error"], status
            assert not status["healthy"]
            refusals = disk_lines(caplog, "refuses records")
            assert len(refusals) == 1 and lane.spool.directory in refusals[0] and "MB free of" in refusals[0], refusals
            gate.set()
            assert wait_for(lambda: lane.drained() and len(state["rows"]) == 30, 20), counts(lane)
        c = counts(lane)
        assert c == {"received": 30, "written": 30, "queued": 0, "spooled": 0, "rejected": 0, "lost": 0}, c
        assert sorted(state["writes"]) == sorted(uuids)  # each exactly once
        figures(f"journal on a {fault} disk, sink hanging", 30, c["written"], lane.spool.spooled_total,
                c["lost"], duplicated(state))
    finally:
        gate.set()
        lane.stop(1.0)


@contextmanager
def tiny_fill(path: str) -> Iterator[str]:
    """The filesystem at ``path`` full while inside; the ballast removed after."""
    ballast = fill(path)
    try:
        yield ballast
    finally:
        os.unlink(ballast)


def test_a_spool_directory_made_read_only_mid_run_keeps_later_records_in_memory(disk, caplog) -> None:
    """Records already spooled (sink down), then the spool directory turns read-only: the records
    after stay in memory, the disk state says so once, nothing is lost; writable again and the sink
    back, every record is written exactly once and the counters add up at every step."""
    state = new_state(down=True)
    lane = lane_on(disk, state)
    guard = Guard(lambda: [lane], 0.1)
    lane.start()
    guard.start()
    try:
        for index in range(100):
            lane.offer(record(index), time.monotonic())
        assert wait_for(lambda: lane.spool.pending == 100 and lane.queued() == 0 and adds_up(lane), 10), counts(lane)
        # the replay's next try reads the segment and closes it: the next append makes a new file
        assert wait_for(lambda: lane.spool._fd is None, 5)
        with read_only(lane.spool.directory):
            for index in range(100, 200):
                lane.offer(record(index), time.monotonic())
            assert wait_for(lambda: lane.disk == "failing", 5), lane.status()
            time.sleep(1.0)  # ten guard ticks on the read-only directory
            c = counts(lane)
            assert c["queued"] == 100 and c["spooled"] == 100 and c["lost"] == 0 and adds_up(lane), c
            status = lane.status()
            assert "EROFS" in status["disk_error"] and status["disk"] == "failing" and not status["healthy"]
            assert len(disk_lines(caplog, "refuses records")) == 1
        assert wait_for(lambda: lane.spool.pending == 200 and lane.queued() == 0, 10), counts(lane)
        assert adds_up(lane) and lane.disk in ("ok", "low")
        state["down"] = False
        assert wait_for(lambda: len(state["rows"]) == 200 and lane.settled(), 30), counts(lane)
        c = counts(lane)
        assert c == {"received": 200, "written": 200, "queued": 0, "spooled": 0, "rejected": 0, "lost": 0}, c
        assert duplicated(state) == 0 and len(state["writes"]) == 200
        figures("spool directory read-only mid-run (100 spooled before, 100 after), sink down, then both back",
                200, c["written"], lane.spool.spooled_total, c["lost"], duplicated(state))
    finally:
        guard.stop()
        lane.stop(1.0)


def test_prometheus_says_how_many_were_lost_and_that_the_disk_is_full(disk) -> None:
    fill(disk)
    state = new_state(down=True)
    lane = lane_on(disk, state, queue_size=100)
    engine = Engine(parse_config({"cdr": {"log": True}}), lane_factory=lambda config: [lane]).start()
    try:
        for index in range(250):
            lane.offer(record(index), time.monotonic())
        assert wait_for(lambda: lane.disk == "full" and lane.status()["lost"] > 0 and adds_up(lane), 10), counts(lane)
        status = engine.status()
        sink = status["sinks"][0]
        lines = set(prometheus(status).splitlines())
        assert 100 <= sink["lost"] <= 150, sink  # what the queue of 100 (and the batch in flight) could not hold
        assert f'fs_cdr_sink_lost_total{{sink="test"}} {sink["lost"]}' in lines
        assert "# TYPE fs_cdr_sink_lost_total counter" in lines and "# TYPE fs_cdr_sink_disk gauge" in lines
        assert 'fs_cdr_sink_disk{sink="test",state="full"} 1' in lines
        for other in ("ok", "low", "failing"):
            assert f'fs_cdr_sink_disk{{sink="test",state="{other}"}} 0' in lines
        assert 'fs_cdr_sink_healthy{sink="test"} 0' in lines
    finally:
        engine.stop(0.5)


def test_replay_with_the_sink_unreachable_exits_1_naming_the_sink_and_its_error(tmp_path, table_name) -> None:
    spool_dir = str(tmp_path / "spool")
    events = _events_file(str(tmp_path / "calls.jsonl"), 50, "away")
    down = _cdr_json(str(tmp_path / "down.json"), table_name, spool_dir, 1)  # nothing listens on port 1
    up = _cdr_json(str(tmp_path / "up.json"), table_name, spool_dir, MARIADB["port"])
    try:
        played = _fs_cdr("-c", down, "play", "--timeout", "1", events)
        assert played.returncode == 1 and "Traceback" not in played.stderr, played.stderr[-2000:]
        replayed = _fs_cdr("-c", down, "replay", "--timeout", "2")
        assert replayed.returncode == 1, replayed.stdout + replayed.stderr[-2000:]
        line = [line for line in replayed.stdout.splitlines() if line.startswith("mysql:")]
        assert line and "50 spooled, 0 written" in line[0] and "50 still spooled" in line[0], replayed.stdout
        assert "Can't connect" in line[0] and "127.0.0.1" in line[0], line  # the driver's own error
        assert "Traceback" not in replayed.stderr
        replayed = _fs_cdr("-c", up, "replay", "--timeout", "60")
        assert replayed.returncode == 0 and "; done" in replayed.stdout, replayed.stdout + replayed.stderr[-2000:]
        written = rows("mysql", tmp_path, table_name, "uuid")
        assert len(written) == 50
        figures("fs-cdr replay with MariaDB unreachable (exit 1), then reachable", 50, len(written), 50, 0,
                len(written) - len({row["uuid"] for row in written}))
    finally:
        drop_table("mysql", tmp_path, table_name)


def test_replay_on_a_read_only_spool_disk_exits_1_and_says_why(tmp_path, table_name) -> None:
    spool_dir = str(tmp_path / "disk")
    events = _events_file(str(tmp_path / "calls.jsonl"), 50, "ro")
    down = _cdr_json(str(tmp_path / "down.json"), table_name, spool_dir, 1)
    up = _cdr_json(str(tmp_path / "up.json"), table_name, spool_dir, MARIADB["port"])
    with tiny_disk(spool_dir, "8m"):
        try:
            played = _fs_cdr("-c", down, "play", "--timeout", "1", events)
            assert played.returncode == 1, played.stderr[-2000:]
            remount(spool_dir, "ro")  # nothing holds it open now
            try:
                replayed = _fs_cdr("-c", up, "replay", "--timeout", "5")
            finally:
                remount(spool_dir, "rw")
            assert replayed.returncode == 1, replayed.stdout + replayed.stderr[-2000:]
            assert "could not be opened" in replayed.stdout and "Read-only file system" in replayed.stdout, replayed.stdout
            assert f"cannot open the spool {os.path.join(spool_dir, 'mysql')}" in replayed.stderr, replayed.stderr[-2000:]
            assert "Traceback" not in replayed.stderr
            replayed = _fs_cdr("-c", up, "replay", "--timeout", "60")
            assert replayed.returncode == 0, replayed.stdout + replayed.stderr[-2000:]
            assert len(rows("mysql", tmp_path, table_name, "uuid")) == 50
        finally:
            drop_table("mysql", tmp_path, table_name)


def test_import_exits_1_when_the_spool_disk_refused_although_every_record_was_written(tmp_path, capsys) -> None:
    """Like play: an import that had no spool to fall back on says so in its exit code."""
    from fs_cdr.cli import main

    spool_dir = str(tmp_path / "disk")
    path = tmp_path / "cdr.json"
    path.write_text(json.dumps({"cdr": {"spool_dir": spool_dir, "database": {
        "dbtype": "sqlite", "connectionstring": str(tmp_path / "cdr.sqlite"), "worker_process": False}}}))
    native = os.path.join(os.path.dirname(os.path.abspath(__file__)), "native")
    with tiny_disk(spool_dir, "2m"):
        remount(spool_dir, "ro")
        try:
            assert main(["-c", str(path), "import", native]) == 1
        finally:
            remount(spool_dir, "rw")
        captured = capsys.readouterr()
        # 13 legs, each as mod_json_cdr and as mod_xml_cdr wrote it: 26 records, 13 rows
        assert "0 bad files" in captured.out and "sqlite: 26 written" in captured.out, captured.out
        assert f"fs-cdr import: sink sqlite: cannot open the spool {os.path.join(spool_dir, 'sqlite')}" in captured.err
        assert "Read-only file system" in captured.err
        assert len(rows("sqlite", tmp_path, "cdr")) == 13
        assert main(["-c", str(path), "import", native]) == 0  # the same import, the disk writable


def test_replay_answers_ok_once_a_sink_that_was_down_takes_the_retry_it_triggers(tmp_path) -> None:
    """``python fs_cdr replay`` skips the backoff (30 s here) and waits for that retry before it
    answers: a sink that is back is not reported failing."""
    state = new_state(down=True)
    lane = SinkLane("test", "switchable", lambda: SwitchableSink(state),
                    BatchSettings(batch_size=50, flush_interval_ms=10, worker_process=False),
                    str(tmp_path), backoff=Backoff(base_s=30, cap_s=30))
    engine = Engine(parse_config({"cdr": {"log": True}}), lane_factory=lambda config: [lane]).start()
    try:
        for index in range(20):
            lane.offer(record(index), time.monotonic())
        assert wait_for(lambda: lane.spool.pending == 20 and lane.failures, 10), counts(lane)
        ok, answer = engine.replay_report()
        assert not ok and "test: 20 spooled (the sink fails: RetriableError: " in answer, answer
        state["down"] = False
        ok, answer = engine.replay_report()
        assert ok and lane.failures == 0, answer
        assert wait_for(lambda: len(state["rows"]) == 20 and lane.settled(), 10)
    finally:
        engine.stop(0.5)
