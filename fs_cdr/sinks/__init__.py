"""Sinks: where records go. Each module is one kind of target; all obey ``writer.Sink``.

``lanes_for(config)`` turns a validated configuration into one :class:`~fs_cdr.writer.SinkLane`
per configured target, each knowing how to open a fresh sink for every writer thread.
"""

from __future__ import annotations

from ..config import CdrConfig, config_secrets
from ..errors import ConfigError
from ..schema import table_columns
from ..writer import SinkLane
from .sql import SqlSink, dialect_for


def lanes_for(config: CdrConfig) -> list[SinkLane]:
    lanes: list[SinkLane] = []
    columns = table_columns(config)
    secrets = config_secrets(config)
    for database in config.databases:
        dialect = dialect_for(database.dbtype)
        if dialect is None:
            raise ConfigError("cdr.database.dbtype", f"{database.dbtype} is not supported by this build")

        def open_sink(database=database, dialect=dialect):  # bind this iteration's values
            return SqlSink(dialect, database, columns)

        lanes.append(
            SinkLane(database.name, database.describe(), open_sink, database.batch, config.spool_dir, secrets=secrets)
        )
    if config.redis is not None:
        from .redis import RedisSink

        redis_config = config.redis
        lanes.append(
            SinkLane(
                redis_config.name,
                redis_config.describe(),
                lambda: RedisSink(redis_config),
                redis_config.batch,
                config.spool_dir,
                secrets=secrets,
            )
        )
    return lanes
