"""Sinks: where records go. Each module is one kind of target; all obey ``writer.Sink``.

``targets(config)`` lists the configured targets, each knowing how to open a fresh sink (one per
writer thread); ``lanes_for(config)`` wraps each in a :class:`~fs_cdr.writer.SinkLane` with its
queue, writers and spool. Checking a configuration needs only the former, so it never touches a
spool that a running engine owns.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Optional

from ..config import BatchSettings, CdrConfig, config_secrets
from ..errors import ConfigError
from ..schema import table_columns
from ..writer import Sink, SinkLane
from .sql import SqlSink, dialect_for


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
    found: list[Target] = []
    columns = table_columns(config)
    for database in config.databases:
        dialect = dialect_for(database.dbtype, database)
        if dialect is None:
            raise ConfigError("cdr.database.dbtype", f"{database.dbtype} is not supported by this build")

        def open_sql(database=database, dialect=dialect) -> Sink:  # bind this iteration's values
            return SqlSink(dialect, database, columns)

        found.append(Target(database.name, database.describe(), open_sql, database.batch, database.real))
    if config.redis is not None:
        from .redis import RedisSink, message

        redis_config = config.redis
        found.append(Target(redis_config.name, redis_config.describe(), lambda: RedisSink(redis_config),
                            redis_config.batch, redis_config.real and bool(redis_config.channel), coalesce=False,
                            encode=message))
    if config.rabbitmq is not None:
        from .rabbitmq import RabbitSink

        rabbit_config = config.rabbitmq
        found.append(Target(rabbit_config.name, rabbit_config.describe(), lambda: RabbitSink(rabbit_config),
                            rabbit_config.batch, coalesce=False))
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
