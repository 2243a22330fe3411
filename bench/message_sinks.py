"""The HTTP, NATS JetStream and file sinks, each beside a raw client doing the same work against the
same server in the same run (bench/run.py's sections ``http``, ``nats`` and ``file``):

- HTTP: raw urllib3 POSTs of the same batches of 500 (NDJSON of fs_cdr's documents, encoded inside
  the timing) to the same receiver process (tests/http_receiver.py ``--quiet``: it reads each body
  and counts its records by ``X-CDR-Count``, so neither side is measured against a slow parser);
- NATS: raw nats-py ``publish_async`` of the same documents with ``Nats-Msg-Id``, each batch of 500's
  PubAcks awaited together, to the same private nats-server (started here, never the shared one),
  into a stream made afresh for every run;
- files: plain buffered writes of the same lines (rendered inside the timing from the same records:
  mod_cdr_csv's ``example`` template, or JSON lines) and an fsync per batch of 500.

Each sink's own figure, against its target, is its lane fed the same built records: the same work as
the raw client (encode, batch, send or write, confirm), through fs_cdr's queue, writer and worker
machinery. fs_cdr end to end (the recorded JSON events through the real engine, as for the other
sinks) is shown beside it with its ceiling: decoding a 13 KB event costs more than a buffered file
write, so no writer that starts from events comes near a raw client that does not decode them.
Raw, lane and end to end run in interleaved rounds; each side's fastest round counts and every round
is printed.
CPU µs per record: this process + its children (sink workers, and here the receiver or nats-server,
which this benchmark starts) + 0.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from fs_cdr.config import Paths, parse_config
from fs_cdr.record import record_json

ROOT = Path(__file__).resolve().parent.parent
RECEIVER = ROOT / "tests" / "http_receiver.py"
NATS_SERVER = "/usr/sbin/nats-server"
ROUNDS = 3
BATCH = 500


def message_sink_rows(sections: set[str], directory: Path, records: list[dict], stream: list[bytes],
                      row: Callable[..., None], source_rate: float) -> None:
    """``source_rate``: the source stage's events/s on one thread (JSON event -> record), measured
    in the same run: with the raw client's rate it bounds what any writer starting from events can
    reach on one thread (both on one interpreter lock, one after the other)."""
    global SOURCE_RATE
    SOURCE_RATE = source_rate
    if "http" in sections:
        http_rows(directory, records, stream, row)
    if "nats" in sections:
        if os.path.exists(NATS_SERVER):
            nats_rows(directory, records, stream, row)
        else:
            row(f"nats: skipped, no {NATS_SERVER}", "")
    if "file" in sections:
        file_rows(directory, records, stream, row)


SOURCE_RATE = 0.0


def lane_alone(config: Any, records: list[dict], meter: Any) -> float:
    """Records/s of the sink's lane fed built records (no source stage): queue, encode, batch,
    write and confirm, as the engine's lane does them; what the sink itself costs beside the raw."""
    from fs_cdr.sinks import lanes_for

    (lane,) = lanes_for(config)
    lane.start()
    time.sleep(0.2)
    meter.start()
    started = time.perf_counter()
    now = time.monotonic()
    for index, record in enumerate(records):
        if index % 100 == 0:
            while lane.queued() > 2000:
                time.sleep(0.0005)
        lane.offer(record, now)
    while not lane.settled():
        time.sleep(0.0005)
    elapsed = time.perf_counter() - started
    meter.stop()
    assert lane.stats.written == len(records), lane.status()
    lane.stop(2.0)
    return len(records) / elapsed


def config_for(directory: Path, label: str, key: str, section: dict[str, Any]) -> Any:
    from run import FIELDS

    cdr = {"details": True, "fields": FIELDS, "spool_dir": str(directory / f"spool-{label}"), key: section}
    return parse_config({"cdr": cdr}, Paths(str(directory), str(directory), str(directory)))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def rounds(raw: Callable[[Any], float], ours: Callable[..., float], alone: Callable[[int, Any], float],
           count: int = ROUNDS) -> tuple[list[tuple[float, Any]], list[tuple[float, Any]], list[tuple[float, Any]]]:
    """Interleaved rounds: raw, the sink's lane alone, fs_cdr end to end, raw...; each (records/s,
    CPU meter)."""
    from run import CpuMeter

    raws: list[tuple[float, Any]] = []
    lanes: list[tuple[float, Any]] = []
    found: list[tuple[float, Any]] = []
    for number in range(count):
        meter = CpuMeter()
        raws.append((raw(meter), meter))
        meter = CpuMeter()
        lanes.append((alone(number, meter), meter))
        meter = CpuMeter()
        found.append((ours(number, meter), meter))
    return raws, found, lanes


def report(kind: str, what: str, target: float, raws: list, ours: list, lanes: list, count: int,
           row: Callable[..., None]) -> float:
    """The raw client, then the sink's own figure against its target: its lane fed the same built
    records, doing what the raw client does (encode, batch, send or write, confirm). Then fs_cdr end
    to end from the recorded JSON events, which the raw client does not decode, beside the ceiling any
    writer that starts from events has on one thread (both share FreeSWITCH's interpreter lock)."""
    raw, raw_meter = max(raws, key=lambda found: found[0])
    lane, lane_meter = max(lanes, key=lambda found: found[0])
    best, best_meter = max(ours, key=lambda found: found[0])
    row(f"{kind}: {what}", f"{raw:,.0f} rec/s", cpu=raw_meter.per_record(count))
    row(f"{kind}: (the raw client, each round)", " / ".join(f"{rate:,.0f}" for rate, _ in raws))
    row(f"{kind}: the sink alone, fed built records", f"{lane:,.0f} rec/s", f"{lane / raw:.2f}", f">= {target}",
        lane_meter.per_record(count))
    row(f"{kind}: (the sink alone, each round)", " / ".join(f"{rate:,.0f}" for rate, _ in lanes))
    row(f"{kind}: fs_cdr end to end from events (defaults)", f"{best:,.0f} rec/s", f"{best / raw:.2f}",
        cpu=best_meter.per_record(count))
    row(f"{kind}: (fs_cdr end to end, each round)", " / ".join(f"{rate:,.0f}" for rate, _ in ours))
    if SOURCE_RATE:
        ceiling = 1 / (1 / raw + 1 / SOURCE_RATE)
        row(f"{kind}: source stage + raw client on one thread (ceiling from events)", f"{ceiling:,.0f} rec/s",
            f"{ceiling / raw:.2f}")
    return raw


# -- HTTP -------------------------------------------------------------------------------------------
def http_rows(directory: Path, records: list[dict], stream: list[bytes], row: Callable[..., None]) -> None:
    from run import CpuMeter, fs_cdr_end_to_end

    port = free_port()
    receiver = subprocess.Popen([sys.executable, str(RECEIVER), "--port", str(port), "--quiet"], stdout=subprocess.PIPE)
    assert receiver.stdout is not None and receiver.stdout.readline() == b"listening\n"
    url = f"http://127.0.0.1:{port}/cdr"
    try:
        def raw(meter: Any) -> float:
            return raw_http(port, records, meter)

        def ours(number: int, meter: Any, **extra: Any) -> float:
            before = accepted(port)
            config = config_for(directory, f"http{number}{len(extra)}", "http", dict({"url": url}, **extra))
            rate = fs_cdr_end_to_end(config, stream, meter)
            assert accepted(port) - before == len(stream)
            return rate

        def alone(number: int, meter: Any) -> float:
            before = accepted(port)
            rate = lane_alone(config_for(directory, f"httplane{number}", "http", {"url": url}), records, meter)
            assert accepted(port) - before == len(records)
            return rate

        raws, found, lanes = rounds(raw, ours, alone)
        best_raw = report("http", "raw urllib3 POSTs, NDJSON batches of 500", 0.8, raws, found, lanes, len(records),
                          row)
        variants: tuple[tuple[str, dict[str, Any]], ...] = (
                    ("fs_cdr, sink in a worker process", {"worker_process": True}),
                    ("fs_cdr, JSON array bodies", {"format": "array"}),
                    ("fs_cdr, gzip", {"gzip": True}))
        for number, (label, extra) in enumerate(variants):
            meter = CpuMeter()
            rate = ours(10 + number, meter, **extra)
            row(f"http: {label}", f"{rate:,.0f} rec/s", f"{rate / best_raw:.2f}", cpu=meter.per_record(len(stream)))
    finally:
        receiver.kill()
        receiver.wait(10)


def accepted(port: int) -> int:
    import json

    import urllib3

    return int(json.loads(urllib3.request("GET", f"http://127.0.0.1:{port}/_control").data)["accepted"])


def raw_http(port: int, records: list[dict], meter: Any) -> float:
    import urllib3

    pool = urllib3.HTTPConnectionPool("127.0.0.1", port, maxsize=1, retries=False)
    meter.start()
    started = time.perf_counter()
    for start in range(0, len(records), BATCH):
        batch = records[start:start + BATCH]
        body = b"\n".join([record_json(record) for record in batch]) + b"\n"
        response = pool.urlopen("POST", "/cdr", body=body, headers={"Content-Type": "application/x-ndjson",
                                                                    "X-CDR-Count": str(len(batch))})
        assert response.status == 200
    elapsed = time.perf_counter() - started
    meter.stop()
    pool.close()
    return len(records) / elapsed


# -- NATS -------------------------------------------------------------------------------------------
def nats_rows(directory: Path, records: list[dict], stream: list[bytes], row: Callable[..., None]) -> None:
    from run import CpuMeter, fs_cdr_end_to_end

    port = free_port()
    server = subprocess.Popen([NATS_SERVER, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd",
                               str(directory / "nats")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"nats://127.0.0.1:{port}"
    try:
        from servers import wait_port  # type: ignore[import-not-found]  # tests/ is on sys.path (run.py)

        wait_port(port, up=True, timeout_s=20)

        def raw(meter: Any) -> float:
            fresh_stream(url)
            rate = asyncio.run(raw_nats(url, records, meter))
            assert stream_messages(url) == len(records)
            return rate

        def ours(number: int, meter: Any, **extra: Any) -> float:
            fresh_stream(url)
            config = config_for(directory, f"nats{number}{len(extra)}", "nats", dict(
                {"servers": [url], "subject": "cdr.${switchname}.${direction}", "stream": "CDR"}, **extra))
            rate = fs_cdr_end_to_end(config, stream, meter)
            assert stream_messages(url) == len(stream)
            return rate

        def alone(number: int, meter: Any) -> float:
            fresh_stream(url)
            rate = lane_alone(config_for(directory, f"natslane{number}", "nats", {
                "servers": [url], "subject": "cdr.${switchname}.${direction}", "stream": "CDR"}), records, meter)
            assert stream_messages(url) == len(records)
            return rate

        raws, found, lanes = rounds(raw, ours, alone)
        best_raw = report("nats", "raw nats-py publish_async, acks awaited per batch of 500", 0.8, raws, found,
                          lanes, len(records), row)
        meter = CpuMeter()
        rate = ours(10, meter, worker_process=False)
        row("nats: fs_cdr, sink in the source's process", f"{rate:,.0f} rec/s", f"{rate / best_raw:.2f}",
            cpu=meter.per_record(len(stream)))
    finally:
        server.kill()
        server.wait(10)


def fresh_stream(url: str) -> None:
    async def make() -> None:
        import nats
        from nats.js.errors import NotFoundError

        client = await nats.connect(url)
        jetstream = client.jetstream()
        try:
            await jetstream.delete_stream("CDR")
        except NotFoundError:
            pass
        await jetstream.add_stream(name="CDR", subjects=["cdr.>"])
        await client.close()

    asyncio.run(make())


def stream_messages(url: str) -> int:
    async def count() -> int:
        import nats

        client = await nats.connect(url)
        info = await client.jetstream().stream_info("CDR")
        await client.close()
        return int(info.state.messages)

    return asyncio.run(count())


async def raw_nats(url: str, records: list[dict], meter: Any) -> float:
    import nats

    client = await nats.connect(url)
    jetstream = client.jetstream()
    meter.start()
    started = time.perf_counter()
    for start in range(0, len(records), BATCH):
        futures = []
        for record in records[start:start + BATCH]:
            subject = f"cdr.{str(record['switchname']).replace('.', '_')}.{record['direction']}"
            futures.append(await jetstream.publish_async(subject, record_json(record), stream="CDR",
                                                         headers={"Nats-Msg-Id": str(record["uuid"])}))
        await asyncio.gather(*futures)
    elapsed = time.perf_counter() - started
    meter.stop()
    await client.close()
    return len(records) / elapsed


# -- files ------------------------------------------------------------------------------------------
def file_rows(directory: Path, records: list[dict], stream: list[bytes], row: Callable[..., None]) -> None:
    from run import CpuMeter, fs_cdr_end_to_end

    from fs_cdr.sinks.file import TEMPLATES

    folder = directory / "files"
    folder.mkdir(exist_ok=True)
    for kind in ("csv", "jsonl"):
        def raw(meter: Any, kind: str = kind) -> float:
            path = folder / f"raw.{kind}"
            rate = raw_file(path, records, meter, TEMPLATES["example"] if kind == "csv" else "")
            path.unlink()
            return rate

        def ours(number: int, meter: Any, kind: str = kind, **extra: Any) -> float:
            path = folder / f"ours-{number}.{kind}"
            section = dict({"path": str(path)}, **({"template": "example"} if kind == "csv" else {}), **extra)
            rate = fs_cdr_end_to_end(config_for(directory, f"file{kind}{number}{len(extra)}", "file", section),
                                     stream, meter)
            with open(path, "rb") as handle:
                assert sum(1 for _ in handle) == len(stream)
            path.unlink()
            return rate

        def alone(number: int, meter: Any, kind: str = kind) -> float:
            path = folder / f"lane-{number}.{kind}"
            section = dict({"path": str(path)}, **({"template": "example"} if kind == "csv" else {}))
            rate = lane_alone(config_for(directory, f"filelane{kind}{number}", "file", section), records, meter)
            path.unlink()
            return rate

        raws, found, lanes = rounds(raw, ours, alone)
        what = "plain writes of example-template lines" if kind == "csv" else "plain writes of JSON lines"
        best_raw = report(f"file {kind}", f"{what}, fsync per 500", 0.9, raws, found, lanes, len(records), row)
        meter = CpuMeter()
        rate = ours(10, meter, worker_process=True)
        row(f"file {kind}: fs_cdr, sink in a worker process", f"{rate:,.0f} rec/s", f"{rate / best_raw:.2f}",
            cpu=meter.per_record(len(stream)))


def raw_file(path: Path, records: list[dict], meter: Any, template: str) -> float:
    """The lines rendered from the same records with plain Python (the template's names looked up
    in the record, else in its ``details``), written buffered, one flush and fsync per batch."""
    import re

    from fs_cdr.channel import loads

    names = re.findall(r"\$\{([^}]*)\}", template)
    text = re.sub(r"\$\{\{[^}]*\}\}", "{}", template.replace("{", "{{").replace("}", "}}"))
    meter.start()
    started = time.perf_counter()
    with open(path, "ab") as handle:
        for start in range(0, len(records), BATCH):
            lines = []
            for record in records[start:start + BATCH]:
                if not template:
                    lines.append(record_json(record) + b"\n")
                    continue
                variables = loads(record["details"])
                values = []
                for name in names:
                    value = record[name] if name in record else variables.get(name)
                    values.append("" if value is None else str(value))
                lines.append(text.format(*values).encode())
            handle.write(b"".join(lines))
            handle.flush()
            os.fsync(handle.fileno())
    elapsed = time.perf_counter() - started
    meter.stop()
    return len(records) / elapsed
