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

import os
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Optional, Sequence
from urllib.parse import unquote

from ..calls import CallBook, CallMessages, call_book, parse_call_messages
from ..channel import dumpb, loads
from ..config import BatchSettings, Section, SectionContext, mask_secrets, option_file, read_batch, split_url
from ..errors import ConfigError, RetriableError
from ..record import CallRecord, record_json
from .worker import write_parts

_hiredis: Any
try:
    import hiredis as _hiredis
except ImportError:  # then redis-py parses every reply
    _hiredis = None

if TYPE_CHECKING:
    from ..config import CdrConfig
    from . import Target


@dataclass(frozen=True)
class RedisConfig:
    """The ``redis`` object: LPUSH onto ``list`` and/or PUBLISH on ``channel``."""

    channel: str = ""
    list: str = ""
    #: XADD onto this stream (one entry per record, fields ``uuid`` and ``record``)
    stream: str = ""
    #: approximate MAXLEN for the stream (``XADD ... MAXLEN ~ N``); 0 keeps every entry
    stream_maxlen: int = 1_000_000
    #: real-time mode: PUBLISH every state change on ``channel`` (the list and stream get final records only)
    real: bool = False
    #: Redis Cluster: the host/port given is any node of it
    cluster: bool = False
    #: Sentinel-managed Redis: ``[[host, port], ...]`` of the sentinels, and the service's name
    sentinels: tuple[tuple[str, int], ...] = ()
    service_name: str = ""
    host: str = "127.0.0.1"
    port: int = 6379
    db: int = 0
    username: str = ""
    password: str = field(default="", repr=False)
    #: TLS (a ``rediss://`` url sets it): to the server, the cluster's nodes, or the sentinels and master
    ssl: bool = False
    #: PEM files: the CA that signed the server's certificate (else the system's CAs), and this
    #: client's certificate and key when the server asks for one (``tls-auth-clients``)
    ssl_ca_certs: str = ""
    ssl_certfile: str = ""
    ssl_keyfile: str = ""
    #: ``required``: the server's certificate must be valid and name the host; ``none``: not checked
    ssl_cert_reqs: str = "required"
    name: str = "redis"
    batch: BatchSettings = BatchSettings()
    #: call messages (fs_cdr/calls.py CallBook): a ``list``, ``channel`` and/or ``stream`` of their own
    calls: Optional[CallMessages] = None
    key: ClassVar[str] = "redis"

    def describe(self) -> str:
        return mask_secrets(self._where(), (self.password,))

    def secrets(self) -> tuple[str, ...]:
        return (self.password,)

    def _where(self) -> str:
        targets = []
        if self.list:
            targets.append(f"list {self.list}")
        if self.channel:
            targets.append(f"channel {self.channel}")
        if self.stream:
            targets.append(f"stream {self.stream}")
        scheme = "rediss" if self.ssl else "redis"
        where = (f"sentinel {self.service_name}{' (TLS)' if self.ssl else ''}" if self.sentinels
                 else f"{scheme}{'-cluster' if self.cluster else ''}://{self.host}:{self.port}/{self.db}")
        return f"{where} " + ", ".join(targets)



REDIS_CERT_REQS = ("required", "none")


def _redis_tls(section: Section, rediss: bool, base: str) -> dict[str, Any]:
    """``ssl`` and the files and checks that go with it; a rediss:// url means ``"ssl": true``."""
    ssl = section.boolean("ssl", rediss)
    if rediss and not ssl:
        raise ConfigError(section.key("ssl"), "a rediss:// url means TLS: leave \"ssl\" out or use redis://")
    settings: dict[str, Any] = {"ssl": ssl}
    for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
        value = section.text(name)
        settings[name] = option_file(value, name, section.key(name), base) if value else ""
    settings["ssl_cert_reqs"] = section.text("ssl_cert_reqs", "required")
    if settings["ssl_cert_reqs"] not in REDIS_CERT_REQS:
        raise ConfigError(section.key("ssl_cert_reqs"), f"one of {', '.join(REDIS_CERT_REQS)}")
    if not ssl:
        for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs"):
            if section.value.get(name) is not None:
                raise ConfigError(section.key(name), "needs \"ssl\": true (or a rediss:// url)")
    if settings["ssl_keyfile"] and not settings["ssl_certfile"]:
        raise ConfigError(section.key("ssl_keyfile"), "a client key needs its certificate: set ssl_certfile")
    return settings


def parse_section(value: object, path: str, context: SectionContext) -> tuple[RedisConfig]:
    """Real-time by default when a database is (its PUBLISHes then carry every state change)."""
    real_default = any(getattr(earlier, "real", False) for earlier in context.earlier)
    base = context.base
    section = Section(path, value)
    host, port, db, username, password = "127.0.0.1", 6379, 0, "", ""
    rediss = False
    url_text = section.text("url")
    if url_text:
        url, port = split_url(url_text, section.key("url"), "redis://[user:password@]host:port/db",
                               ("redis", "rediss"))
        host, port = url.hostname, port or 6379
        number = url.path.lstrip("/")
        if number and not (number.isascii() and number.isdigit() and len(number) <= 9):
            raise ConfigError(section.key("url"), "the database after the last / must be a number")
        db = int(number) if number else 0
        username, password = unquote(url.username or ""), unquote(url.password or "")
        rediss = url.scheme == "rediss"
    tls = _redis_tls(section, rediss, base or os.getcwd())
    sentinels_raw = section.get("sentinels") or []
    sentinels = []
    if not isinstance(sentinels_raw, list):
        raise ConfigError(section.key("sentinels"), "expected a list of [host, port] pairs")
    for index, pair in enumerate(sentinels_raw):
        if (not isinstance(pair, list) or len(pair) != 2 or not isinstance(pair[0], str)
                or isinstance(pair[1], bool) or not isinstance(pair[1], int)):
            raise ConfigError(f"{section.key('sentinels')}[{index}]", "expected [\"host\", port]")
        sentinels.append((pair[0], pair[1]))
    config = RedisConfig(
        channel=section.text("channel"),
        list=section.text("list"),
        stream=section.text("stream"),
        real=section.boolean("real", real_default),
        stream_maxlen=section.integer("stream_maxlen", 1_000_000, 0, 10**12),
        cluster=section.boolean("cluster", False),
        sentinels=tuple(sentinels),
        service_name=section.text("service_name"),
        host=section.text("host", host),
        port=section.integer("port", port, 1, 65535),
        db=section.integer("db", db, 0, 1_000_000),
        username=section.text("username", username),
        password=section.text("password", password),
        name=section.text("name", "redis"),
        batch=read_batch(section, BatchSettings()),
        calls=parse_call_messages(section, ("list", "channel", "stream"), context),
        **tls,
    )
    section.done()
    if not config.channel and not config.list and not config.stream:
        raise ConfigError(path, "set 'list' (LPUSH), 'channel' (PUBLISH) and/or 'stream' (XADD), or leave redis out")
    if config.sentinels and not config.service_name:
        raise ConfigError(section.key("service_name"), "sentinels need the name of the service they watch")
    if config.sentinels and config.cluster:
        raise ConfigError(section.key("cluster"), "a Redis is either a cluster or watched by sentinels, not both")
    return (config,)


def target(settings: RedisConfig, config: CdrConfig) -> Target:
    from . import Target

    book, batch = call_book(settings.calls, settings.name, settings.batch, config)
    return Target(settings.name, settings.describe(), lambda: RedisSink(settings, book), batch,
                  settings.real and bool(settings.channel), coalesce=False, encode=message)


#: A record as Redis takes it (:func:`message`): its uuid, whether it is final, its JSON document.
Message = tuple[str, bool, bytes]
#: Send and read replies on the connection's socket directly (plain TCP or Unix socket, with hiredis).
#: When off, over TLS (an SSL socket) or without hiredis, every batch goes through redis-py's
#: send_packed_command and a read_response per reply.
DIRECT_SOCKET = True


def payload(record: CallRecord) -> bytes:
    """The JSON document for one record: its columns, with ``details`` as an object."""
    return record_json(record)


def message(record: CallRecord) -> Message:
    """What :meth:`RedisSink.write_encoded` needs of a record: the uuid (a stream entry's field of
    its own), whether it is final (real-time updates are only published; the list and the stream
    carry final records, one per leg), and the document. The writer makes these ahead, while the
    previous batch is being written (writer.SinkLane ``encode``)."""
    return str(record["uuid"]), record.get("call_state", "completed") == "completed", record_json(record)


class RedisSink:
    def __init__(self, config: RedisConfig, book: str = "") -> None:
        """``book``: the CallBook file call messages are made with (when the section has ``calls``)."""
        self.config = config
        self._client: Any = None
        self._book = CallBook.for_sink(book, config.calls)

    def open(self) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        settings = self.config
        timeout = settings.batch.timeout_s
        common: dict[str, Any] = dict(
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
        client: Any
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
        self.write_encoded([message(record) for record in records])

    def write_encoded(self, messages: Sequence[Message], meanwhile: Optional[Callable[[], None]] = None) -> None:
        client = self._client
        if client is None:
            raise RetriableError("not connected")
        settings = self.config
        batches = [(messages, settings.list, settings.channel, settings.stream)]
        if self._book is not None and settings.calls is not None:
            calls = settings.calls
            batches.append((call_messages(self._book, messages), calls.get("list"), calls.get("channel"),
                            calls.get("stream")))
        try:
            if self.config.cluster:
                for batch in batches:
                    self._write_cluster(client, *batch)
            else:
                self._write_packed(client, batches)
        except Exception as error:
            # Nothing a record contains can make LPUSH or PUBLISH fail: every error is the server's.
            raise RetriableError(str(error)) from error
        if meanwhile is not None:
            meanwhile()  # in this process the GIL is shared anyway: nothing to overlap

    def _write_packed(self, client: Any, batches: Sequence[tuple[Sequence[Message], str, str, str]]) -> None:
        """One batch as one packet of Redis commands (RESP), packed here from the documents as they
        are, on one of the client's connections; then one reply per command. What redis-py's
        pipeline does, without its per-argument encoding and per-command bookkeeping: a third of the
        client's CPU per record at 10 KB documents (bench/run.py: raw pipelined LPUSH+PUBLISH).
        ``batches``: the records, and the call messages, each with its list, channel and stream."""
        parts: list[Any] = []
        maxlen = self.config.stream_maxlen
        commands = sum(_pack(parts, messages, list_key, channel, stream, maxlen)
                       for messages, list_key, channel, stream in batches)
        if not commands:
            return
        pool = client.connection_pool
        connection = pool.get_connection()
        try:
            connection.check_health()  # redis-py's PING after health_check_interval idle seconds
            sock = getattr(connection, "_sock", None)
            if DIRECT_SOCKET and type(sock) is socket.socket and _hiredis is not None:
                # sendmsg from the parts' own buffers: the batch's megabytes are not joined into one
                # packet first (redis-py's socket has its timeout: a stuck send raises)
                write_parts(lambda buffers, _: sock.sendmsg(buffers), parts)
                _read_replies(sock, commands)
            else:
                connection.send_packed_command([b"".join(parts)], check_health=False)
                for _ in range(commands):
                    connection.read_response()  # an error reply raises: the batch is retried whole
        except BaseException:
            connection.disconnect()  # replies may be left unread: never reuse this connection
            raise
        finally:
            pool.release(connection)

    def _write_cluster(self, client: Any, messages: Sequence[Message], list_key: str, channel: str,
                       stream: str) -> None:
        """Through redis-py's cluster pipeline, which sends each key's commands to its node."""
        final = [entry for entry in messages if entry[1]]
        pipeline = client.pipeline(transaction=False)
        if list_key and final:
            pipeline.lpush(list_key, *(document for _, _, document in final))
        if stream:
            maxlen = self.config.stream_maxlen or None
            for uuid, _, document in final:
                pipeline.xadd(stream, {"uuid": uuid, "record": document}, maxlen=maxlen, approximate=True)
        pipeline.execute()
        if channel:  # redis-py refuses PUBLISH inside a cluster pipeline: one call each
            for _, _, document in messages:
                client.publish(channel, document)

    def close(self) -> None:
        client, self._client = self._client, None
        if self._book is not None:
            self._book.close()
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: BLE001
                pass


def call_messages(book: CallBook, messages: Sequence[Message]) -> list[Message]:
    """The call messages a batch's final legs make (their calls as every kept leg makes them)."""
    rows = book.add([loads(document) for _, final, document in messages if final])
    return [(str(row["uuid"]), True, dumpb(row)) for row in rows]


def _pack(parts: list[Any], messages: Sequence[Message], list_key: str, channel: str, stream: str,
          maxlen: int) -> int:
    """RESP for one set of messages: one LPUSH of the final ones, a PUBLISH each, an XADD of each
    final one. Returns how many commands (replies to read)."""
    final = [entry for entry in messages if entry[1]]
    commands = 0
    if list_key and final:
        parts.append(b"*%d\r\n$5\r\nLPUSH\r\n" % (len(final) + 2))
        _bulk(parts, list_key.encode())
        for _, _, document in final:
            _bulk(parts, document)
        commands += 1
    if channel and messages:
        name = channel.encode()
        head = b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%s\r\n" % (len(name), name)
        for _, _, document in messages:
            parts.append(head)
            _bulk(parts, document)
        commands += len(messages)
    if stream:
        key = stream.encode()
        trim = (b"MAXLEN", b"~", b"%d" % maxlen) if maxlen else ()
        for uuid, _, document in final:
            arguments = (b"XADD", key, *trim, b"*", b"uuid", uuid.encode("utf-8", "surrogatepass"),
                         b"record", document)
            parts.append(b"*%d\r\n" % len(arguments))
            for argument in arguments:
                _bulk(parts, argument)
        commands += len(final)
    return commands


def _read_replies(sock: socket.socket, commands: int) -> None:
    """Read ``commands`` replies with hiredis, raising at the first error reply (the caller then
    drops the connection, replies unread and all). What a read_response per reply does, without
    redis-py's per-reply Python: 1,001 replies for a batch of 500."""
    reader = _hiredis.Reader()
    buffer = bytearray(1 << 16)
    got = 0
    while got < commands:
        reply = reader.gets()
        if reply is False:  # needs more bytes
            count = sock.recv_into(buffer)
            if not count:
                raise ConnectionError("Redis closed the connection")
            reader.feed(buffer, 0, count)
        elif isinstance(reply, _hiredis.ReplyError):
            raise RetriableError(str(reply))
        else:
            got += 1


def _bulk(parts: list[Any], value: Any) -> None:
    """One RESP bulk string: its length, the bytes as they are, CRLF."""
    parts.append(b"$%d\r\n" % len(value))
    parts.append(value)
    parts.append(b"\r\n")
