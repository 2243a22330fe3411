"""RabbitMQ (AMQP 0-9-1) through pika: persistent messages, counted written on publisher confirm.

pika's BlockingConnection belongs to one thread, which is exactly fs_cdr's model: one connection per
writer thread. With confirms on, ``basic_publish`` returns only when the broker has taken the message
(and, with ``mandatory``, routed it to a queue), so a record is never counted written that the broker
could still lose. An unroutable message (no queue bound for its key) is retried and spooled rather
than dropped: bind a queue and the records flow.
"""

from __future__ import annotations

from typing import Any, Sequence

from ..config import RabbitConfig
from ..errors import RetriableError
from ..record import CallRecord, record_json


def routing_key(parts: Sequence[str], record: CallRecord) -> str:
    """The routing key for one record: the template's literal text with the record's columns."""
    if len(parts) == 1:
        return parts[0]
    pieces = []
    for index, part in enumerate(parts):
        if index % 2:
            value = record.get(part)
            pieces.append("" if value is None else str(value).replace(".", "_"))
        else:
            pieces.append(part)
    return "".join(pieces)[:255]


class RabbitSink:
    def __init__(self, config: RabbitConfig) -> None:
        self.config = config
        self._connection: Any = None
        self._channel: Any = None

    def open(self) -> None:
        import pika

        settings = self.config
        parameters = pika.ConnectionParameters(
            host=settings.host,
            port=settings.port,
            virtual_host=settings.virtual_host,
            credentials=pika.PlainCredentials(settings.username, settings.password),
            heartbeat=30,
            socket_timeout=settings.batch.timeout_s,
            blocked_connection_timeout=settings.batch.timeout_s,
            connection_attempts=1,
        )
        try:
            self._connection = pika.BlockingConnection(parameters)
            self._channel = self._connection.channel()
            self._channel.confirm_delivery()
            if settings.declare:
                self._channel.exchange_declare(settings.exchange, exchange_type=settings.exchange_type, durable=True)
        except Exception as error:
            self.close()
            raise RetriableError(f"{type(error).__name__}: {error}") from error

    def write(self, records: Sequence[CallRecord]) -> None:
        import pika

        channel = self._channel
        if channel is None:
            raise RetriableError("not connected")
        settings = self.config
        try:
            for record in records:
                channel.basic_publish(
                    settings.exchange,
                    routing_key(settings.routing_key, record),
                    record_json(record),
                    pika.BasicProperties(content_type="application/json", delivery_mode=2,
                                         message_id=str(record["uuid"])),
                    mandatory=True,
                )
        except Exception as error:
            # UnroutableError (no queue bound), NackError, a lost connection: none is the record's fault.
            raise RetriableError(f"{type(error).__name__}: {error}") from error

    def close(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None:
            try:
                connection.close()
            except Exception:  # noqa: BLE001
                pass
