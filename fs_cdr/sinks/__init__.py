"""Sinks: where records go. Each module is one kind of target; all obey ``writer.Sink``.

A sink's module reads its own cdr.json section too (``parse_section``) and says how to open it
(``target``); ``config.SINKS`` maps each key to its module.

``targets(config)`` lists the configured targets, each knowing how to open a fresh sink (one per
writer thread); ``lanes_for(config)`` wraps each in a :class:`~fs_cdr.writer.SinkLane` with its
queue, writers and spool. Checking a configuration needs only the former, so it never touches a
spool that a running engine owns.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Optional

from ..config import BatchSettings, CdrConfig, config_secrets, sink_module
from ..writer import Sink, SinkLane


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    open_sink: Callable[[], Sink]
    batch: BatchSettings
    #: takes real-time updates as well as final records
    realtime: bool = False
    #: several records of one uuid in a batch may be written as the last one (tables, not messages)
    coalesce: bool = True
    #: the sink takes records encoded by this (writer.EncodedSink), made ahead by the writer
    encode: Optional[Callable[[Any], Any]] = None


def targets(config: CdrConfig) -> list[Target]:
    """Each configured sink's target, made by its own module (config.SINKS: key → module)."""
    found = [sink_module(settings.key).target(settings, config) for settings in config.sinks]
    return [_in_worker(target) for target in found]


def _in_worker(target: Target) -> Target:
    """The same target, its sinks run in a worker process when the configuration asks for it."""
    if not target.batch.worker_process:
        return target
    from .worker import ProcessSink

    make = target.open_sink

    def open_in_worker() -> Sink:
        return ProcessSink(make, target.name, target.batch.timeout_s)

    return replace(target, open_sink=open_in_worker)


def lanes_for(config: CdrConfig) -> list[SinkLane]:
    secrets = config_secrets(config)
    return [
        SinkLane(target.name, target.description, target.open_sink, target.batch, config.spool_dir, secrets=secrets,
                 realtime=target.realtime, coalesce=target.coalesce, encode=target.encode)
        for target in targets(config)
    ]
