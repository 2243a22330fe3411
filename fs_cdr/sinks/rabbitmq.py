"""RabbitMQ (AMQP 0-9-1) through pika: persistent messages, counted written on publisher confirm.

pika's BlockingConnection belongs to one thread, which is exactly fs_cdr's model: one connection per
writer thread. With confirms on, ``basic_publish`` returns only when the broker has taken the message
(and, with ``mandatory``, routed it to a queue), so a record is never counted written that the broker
could still lose. An unroutable message (no queue bound for its key) is retried and spooled rather
than dropped: bind a queue and the records flow.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar, Sequence
from urllib.parse import unquote

from ..calls import CallBook, CallMessages, call_book, parse_call_messages
from ..channel import dumpb
from ..config import BatchSettings, Section, SectionContext, mask_secrets, read_batch, split_url
from ..errors import ConfigError, RetriableError
from ..fields import IDENTIFIER, parse_template
from ..record import CallRecord, record_json

if TYPE_CHECKING:
    from ..config import CdrConfig
    from . import Target


@dataclass(frozen=True)
class RabbitConfig:
    """The ``rabbitmq`` object: persistent messages to an exchange, counted written on publisher confirm."""

    host: str = "127.0.0.1"
    port: int = 5672
    virtual_host: str = "/"
    username: str = "guest"
    password: str = field(default="guest", repr=False)
    exchange: str = "cdr"
    exchange_type: str = "topic"
    #: routing key, literal or a template of record columns: ``cdr.${direction}.${switchname}``
    routing_key: tuple[str, ...] = ("cdr",)
    routing_key_source: str = "cdr"
    declare: bool = True
    name: str = "rabbitmq"
    batch: BatchSettings = BatchSettings()
    #: call messages (fs_cdr/calls.py CallBook), published to the same exchange with their own
    #: ``routing_key`` (literal, or a template of call columns: ``call.${outcome}``)
    calls: CallMessages | None = None
    calls_routing_key: tuple[str, ...] = ()
    key: ClassVar[str] = "rabbitmq"

    def describe(self) -> str:
        where = f"amqp://{self.host}:{self.port}{self.virtual_host} exchange {self.exchange} key {self.routing_key_source}"
        return mask_secrets(where, self.secrets())

    def secrets(self) -> tuple[str, ...]:
        return (self.password,) if self.password != "guest" else ()


def parse_routing_key(text: str, path: str) -> tuple[str, ...]:
    """A routing key template of record columns, ``cdr.${direction}``, parsed like a ``fields`` template."""
    parts = parse_template(text, path, IDENTIFIER, "column name", need_reference=False)
    if len(text.encode()) > 255:
        raise ConfigError(path, "a routing key is at most 255 bytes")
    return parts


def parse_section(value: object, path: str, context: SectionContext) -> tuple[RabbitConfig]:
    section = Section(path, value)
    host, port, vhost, username, password = "127.0.0.1", 5672, "/", "guest", "guest"
    url_text = section.text("url")
    if url_text:
        url, port = split_url(url_text, section.key("url"), "amqp://user:password@host:5672/vhost",
                               ("amqp", "amqps"))
        host, port = url.hostname, port or 5672
        vhost = unquote(url.path[1:]) if len(url.path) > 1 else "/"
        username, password = unquote(url.username or "guest"), unquote(url.password or "guest")
    routing_key = section.text("routing_key", "cdr")
    exchange_type = section.text("exchange_type", "topic")
    if exchange_type not in ("topic", "direct", "fanout", "headers"):
        raise ConfigError(section.key("exchange_type"), "one of topic, direct, fanout, headers")
    config = RabbitConfig(
        host=section.text("host", host),
        port=section.integer("port", port, 1, 65535),
        virtual_host=section.text("virtual_host", vhost),
        username=section.text("username", username),
        password=section.text("password", password),
        exchange=section.text("exchange", "cdr"),
        exchange_type=exchange_type,
        routing_key=parse_routing_key(routing_key, section.key("routing_key")),
        routing_key_source=routing_key,
        declare=section.boolean("declare", True),
        name=section.text("name", "rabbitmq"),
        batch=read_batch(section, BatchSettings()),
        calls=parse_call_messages(section, ("routing_key",), context),
    )
    section.done()
    if config.calls is not None:
        key = section.key("calls") + ".routing_key"
        config = replace(config, calls_routing_key=parse_routing_key(config.calls.get("routing_key"), key))
    return (config,)


def target(settings: RabbitConfig, config: CdrConfig) -> Target:
    from . import Target

    book, batch = call_book(settings.calls, settings.name, settings.batch, config)
    return Target(settings.name, settings.describe(), lambda: RabbitSink(settings, book), batch, coalesce=False)


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
    def __init__(self, config: RabbitConfig, book: str = "") -> None:
        """``book``: the CallBook file call messages are made with (when the section has ``calls``)."""
        self.config = config
        self._connection: Any = None
        self._channel: Any = None
        self._book = CallBook.for_sink(book, config.calls)

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
        calls = self._book.add(records) if self._book is not None else []  # before anything is published
        messages: list[tuple[str, bytes, str, str | None]] = [
            (routing_key(settings.routing_key, record), record_json(record), str(record["uuid"]), None)
                    for record in records]
        messages += [(routing_key(settings.calls_routing_key, row), dumpb(row), str(row["uuid"]), "call")
                     for row in calls]
        try:
            for key, body, uuid, kind in messages:
                channel.basic_publish(
                    settings.exchange, key, body,
                    pika.BasicProperties(content_type="application/json", delivery_mode=2, message_id=uuid, type=kind),
                    mandatory=True,
                )
        except Exception as error:
            # UnroutableError (no queue bound), NackError, a lost connection: none is the record's fault.
            raise RetriableError(f"{type(error).__name__}: {error}") from error

    def close(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if self._book is not None:
            self._book.close()
        if connection is not None:
            try:
                connection.close()
            except Exception:  # noqa: BLE001
                pass
