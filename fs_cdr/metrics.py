"""The engine's counters in Prometheus text format (for node_exporter's textfile collector)."""

from __future__ import annotations

from typing import Any

_SINK_COUNTERS = (
    ("received", "counter", "records handed to the sink"),
    ("written", "counter", "records the sink confirmed"),
    ("rejected", "counter", "records the sink refused, set aside in rejected.jsonl"),
    ("retries", "counter", "failed write attempts"),
    ("replayed", "counter", "records written from the spool"),
    ("batches", "counter", "batches the sink took, live and replayed (written / batches: the batch size reached)"),
    ("journal_copies", "counter", "crash copies put in the journal (records that waited half the durability window)"),
    ("lost", "counter", "records gone without reaching the sink (neither memory nor disk could hold them)"),
    ("queued", "gauge", "records held in memory"),
    ("spooled", "gauge", "records on disk waiting for the sink"),
    ("journaled", "gauge", "records in memory with a crash copy on disk"),
    ("spool_mb", "gauge", "megabytes the spool takes on disk"),
    ("spool_max_mb", "gauge", "megabytes the spool may take (spool_max_mb)"),
)
#: the values of a sink's ``disk`` state, one gauge each (1 for the current one)
DISK_STATES = ("ok", "low", "full", "failing")


def _escape(value: str) -> str:
    """A label value as the text format wants it: backslash, quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def prometheus(status: dict[str, Any]) -> str:
    lines = []
    for name, kind, text in (("events", "counter", "events taken from FreeSWITCH"),
                             ("records", "counter", "records built"),
                             ("skipped", "counter", "legs left out (process_cdr, skip variable)"),
                             ("malformed", "counter", "events that could not make a record")):
        lines += [f"# HELP fs_cdr_{name}_total {text}", f"# TYPE fs_cdr_{name}_total {kind}",
                  f"fs_cdr_{name}_total {status[name]}"]
    fast = status.get("fast_path")
    if fast:
        lines += ["# HELP fs_cdr_events_by_path_total serialized events split by the compiled fast path "
                  "(fs_cdr._hangup) or decoded in Python", "# TYPE fs_cdr_events_by_path_total counter",
                  f'fs_cdr_events_by_path_total{{path="compiled"}} {fast["split"]}',
                  f'fs_cdr_events_by_path_total{{path="python"}} {fast["decoded"]}']
    for name, kind, text in _SINK_COUNTERS:
        metric = f"fs_cdr_sink_{name}" + ("_total" if kind == "counter" else "")
        lines += [f"# HELP {metric} {text}", f"# TYPE {metric} {kind}"]
        for sink in status["sinks"]:
            lines.append(f'{metric}{{sink="{_escape(sink["sink"])}"}} {sink.get(name, 0)}')
    lines += ["# HELP fs_cdr_sink_disk 1 for the state of the sink's spool disk: ok, low (little room), "
              "full (ENOSPC or spool_max_mb), failing (EIO, EROFS, EACCES, ...)", "# TYPE fs_cdr_sink_disk gauge"]
    for sink in status["sinks"]:
        for state in DISK_STATES:
            lines.append(f'fs_cdr_sink_disk{{sink="{_escape(sink["sink"])}",state="{state}"}} '
                         f'{1 if sink.get("disk", "ok") == state else 0}')
    lines += ["# HELP fs_cdr_sink_healthy 1 when the sink takes writes and nothing waits in its spool",
              "# TYPE fs_cdr_sink_healthy gauge"]
    for sink in status["sinks"]:
        lines.append(f'fs_cdr_sink_healthy{{sink="{_escape(sink["sink"])}"}} {1 if sink["healthy"] else 0}')
    return "\n".join(lines) + "\n"
