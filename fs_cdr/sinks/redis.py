"""Redis: LPUSH each record onto ``list``, PUBLISH it on ``channel`` and XADD it to ``stream``, one JSON
document per record.

A batch is one pipelined round trip: a single LPUSH carrying every record of the batch (consumers
that BRPOP the list see them in the order they hung up), then one PUBLISH and one XADD per record.
``details`` travels as a nested JSON object, spliced in as text without decoding it again.
Stream entries carry the record's ``uuid`` as a field of its own, so consumer groups
(XREADGROUP/XACK) can deduplicate what a replay sends twice. Redis Cluster and Sentinel-managed
Redis go through redis-py's own support.
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

        settings = self.config
        timeout = settings.batch.timeout_s
        common = dict(
            username=settings.username or None,
            password=settings.password or None,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            # redis-py retries a lost connection by itself for seconds; fs_cdr's writer owns retries
            # (and spools meanwhile), so a failure must surface at once.
            retry=Retry(NoBackoff(), 0),
        )
        tls: dict[str, Any] = {}
        if settings.ssl:
            tls = dict(ssl=True, ssl_cert_reqs=settings.ssl_cert_reqs, ssl_ca_certs=settings.ssl_ca_certs or None,
                       ssl_certfile=settings.ssl_certfile or None, ssl_keyfile=settings.ssl_keyfile or None)
            common.update(tls)
        try:
            if settings.cluster:
                from redis.cluster import RedisCluster

                client = RedisCluster(host=settings.host, port=settings.port, **common)
            elif settings.sentinels:
                from redis.sentinel import Sentinel

                # with ssl, the sentinels are asked over TLS too
                sentinel = Sentinel(list(settings.sentinels), socket_timeout=timeout,
                                    sentinel_kwargs={"socket_timeout": timeout, **tls})
                client = sentinel.master_for(settings.service_name, db=settings.db, **common)
            else:
                client = redis.Redis(host=settings.host, port=settings.port, db=settings.db,
                                     health_check_interval=30, **common)
        except Exception as error:
            raise RetriableError(str(error)) from error
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
        # Real-time updates (call_state other than completed) are only published; the list and the
        # stream carry final records, one per leg.
        final = [(record, document) for record, document in zip(records, documents)
                 if record.get("call_state", "completed") == "completed"]
        try:
            pipeline = client.pipeline(transaction=False)
            if self.config.list and final:
                pipeline.lpush(self.config.list, *(document for _, document in final))
            # redis-py refuses PUBLISH inside a cluster pipeline: there it goes after, one call each
            publish_in_pipeline = not self.config.cluster
            if self.config.channel and publish_in_pipeline:
                for document in documents:
                    pipeline.publish(self.config.channel, document)
            if self.config.stream:
                maxlen = self.config.stream_maxlen or None
                for record, document in final:
                    pipeline.xadd(self.config.stream, {"uuid": str(record["uuid"]), "record": document},
                                  maxlen=maxlen, approximate=True)
            pipeline.execute()
            if self.config.channel and not publish_in_pipeline:
                for document in documents:
                    client.publish(self.config.channel, document)
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
