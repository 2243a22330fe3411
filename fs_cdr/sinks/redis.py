"""Redis: LPUSH each record onto ``list`` and PUBLISH it on ``channel``, one JSON document per record.

A batch is one pipelined round trip: a single LPUSH carrying every record of the batch (consumers
that BRPOP the list see them in the order they hung up), then one PUBLISH per record.
``details`` travels as a nested JSON object, spliced in as text without decoding it again.
"""

from __future__ import annotations

from typing import Any, Sequence

from ..config import RedisConfig
from ..errors import RetriableError
from ..record import CallRecord, record_json


def payload(record: CallRecord) -> bytes:
    """The JSON document for one record: its columns, with ``details`` as an object."""
    return record_json(record)


class RedisSink:
    def __init__(self, config: RedisConfig) -> None:
        self.config = config
        self._client: Any = None

    def open(self) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        timeout = self.config.batch.timeout_s
        client = redis.Redis(
            host=self.config.host,
            port=self.config.port,
            db=self.config.db,
            username=self.config.username or None,
            password=self.config.password or None,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            health_check_interval=30,
            # redis-py retries a lost connection by itself for seconds; fs_cdr's writer owns retries
            # (and spools meanwhile), so a failure must surface at once.
            retry=Retry(NoBackoff(), 0),
        )
        try:
            client.ping()
        except Exception as error:
            client.close()
            raise RetriableError(str(error)) from error
        self._client = client

    def write(self, records: Sequence[CallRecord]) -> None:
        client = self._client
        if client is None:
            raise RetriableError("not connected")
        documents = [payload(record) for record in records]
        try:
            pipeline = client.pipeline(transaction=False)
            if self.config.list:
                pipeline.lpush(self.config.list, *documents)
            if self.config.channel:
                for document in documents:
                    pipeline.publish(self.config.channel, document)
            pipeline.execute()
        except Exception as error:
            # Nothing a record contains can make LPUSH or PUBLISH fail: every error is the server's.
            raise RetriableError(str(error)) from error

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: BLE001
                pass
