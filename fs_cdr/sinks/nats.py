"""NATS JetStream through nats-py: each record published with ``Nats-Msg-Id`` = its uuid, counted
written only on the stream's PubAck.

``"nats": {"servers": ["nats://10.0.0.5:4222"], "subject": "cdr.${switchname}.${direction}", "stream": "CDR"}``

- A batch is published at once (every message goes out, each with a reply subject of its own,
  before the first ack is awaited) and its PubAcks are awaited together, within ``timeout_s``: one round trip a batch, not
  one a message. Any missing or failed ack fails the batch, which the lane retries and spools; the
  messages that did reach the stream are then duplicates inside JetStream's duplicate window
  (``Nats-Msg-Id``), which the server drops and acks as such: within that window (2 minutes by
  default; ``duplicate_window_s`` when fs_cdr creates the stream) the stream holds each record
  once, beyond it at least once (consumers dedupe by ``uuid``).
- ``stream`` is sent as ``Nats-Expected-Stream``: a subject that no stream, or another stream,
  takes is an error that holds the records (spooled), never a silent drop. ``create_stream`` adds
  the stream (file storage, ``stream_subjects``, by default the subject with each ``${...}`` as
  ``*``) when it does not exist.
- The subject is a template of record columns; each value has ``.``, ``*``, ``>`` and white space
  replaced by ``_`` (an empty one is ``_``), so a value never adds or widens a subject token.
- nats-py is asyncio; fs_cdr's writers are threads (or worker processes). Each sink runs its own
  event loop in a thread of its own, which keeps the connection's pings and reconnects going
  between batches; ``write`` hands it a batch and waits for the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar
from urllib.parse import unquote

from ..config import (
    BatchSettings,
    Section,
    SectionContext,
    mask_secrets,
    option_file,
    read_batch,
    split_url,
)
from ..errors import ConfigError, RejectedError, RetriableError
from ..fields import IDENTIFIER, parse_template
from ..record import CallRecord, record_json

if TYPE_CHECKING:
    from ..config import CdrConfig
    from . import Target

log = logging.getLogger("fs_cdr.sinks.nats")

_UNSAFE_TOKEN = re.compile(r"[.*>\s]")
_STREAM_NAME = re.compile(r"^[A-Za-z0-9_-]{1,255}\Z")


@dataclass(frozen=True)
class NatsConfig:
    """The ``nats`` object: JetStream publishes, deduplicated by uuid, counted written on the PubAck."""

    servers: tuple[str, ...] = ("nats://127.0.0.1:4222",)
    #: subject template of record columns: ``cdr.${switchname}.${direction}``
    subject: tuple[str, ...] = ("cdr",)
    subject_source: str = "cdr"
    stream: str = ""
    create_stream: bool = False
    stream_subjects: tuple[str, ...] = ()
    duplicate_window_s: float = 120.0
    #: a .creds file (JWT + NKey seed), an NKey seed file, a token, or a user and password
    credentials: str = ""
    nkey_seed: str = ""
    token: str = field(default="", repr=False)
    username: str = ""
    password: str = field(default="", repr=False)
    tls_ca_file: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_verify: bool = True
    name: str = "nats"
    batch: BatchSettings = field(default_factory=BatchSettings)
    key: ClassVar[str] = "nats"

    def describe(self) -> str:
        servers = ", ".join(re.sub(r"//[^@/]*@", "//", server) for server in self.servers)
        stream = f" stream {self.stream}" if self.stream else ""
        return mask_secrets(f"{servers} subject {self.subject_source}{stream}", self.secrets())

    def secrets(self) -> tuple[str, ...]:
        found = [self.token, self.password]
        for server in self.servers:
            parts = split_url(server, "", "")[0]
            found += [unquote(parts.password or ""), unquote(parts.username or "") if not parts.password else ""]
        return tuple(secret for secret in found if secret)


def parse_section(value: object, path: str, context: SectionContext) -> tuple[NatsConfig]:
    section = Section(path, value)
    servers = section.strings("servers", ("nats://127.0.0.1:4222",))
    if not servers:
        raise ConfigError(section.key("servers"), "at least one nats://host:port")
    for index, server in enumerate(servers):
        split_url(server, f"{section.key('servers')}[{index}]", "nats://[user:password@]host:port",
                  ("nats", "tls", "ws", "wss"))
    subject = section.text("subject", "cdr")
    parts = parse_template(subject, section.key("subject"), IDENTIFIER, "column name", need_reference=False)
    if not subject or any(not token for token in subject.split(".")) or re.search(r"[*>\s]", subject):
        raise ConfigError(section.key("subject"), "a subject of non-empty tokens, without wildcards or spaces")
    stream = section.text("stream")
    if stream and not _STREAM_NAME.match(stream):
        raise ConfigError(section.key("stream"), "letters, digits, _ and - only")
    create = section.boolean("create_stream", False)
    if create and not stream:
        raise ConfigError(section.key("create_stream"), "needs the \"stream\" to create")
    default_subjects = (_wildcard(subject),)
    files = {}
    for name in ("credentials", "nkey_seed", "tls_ca_file", "tls_cert_file", "tls_key_file"):
        text = section.text(name)
        files[name] = option_file(text, name, section.key(name), context.base) if text else ""
    if files["tls_key_file"] and not files["tls_cert_file"]:
        raise ConfigError(section.key("tls_key_file"), "a client key needs its certificate: set tls_cert_file")
    config = NatsConfig(
        servers=servers,
        subject=parts,
        subject_source=subject,
        stream=stream,
        create_stream=create,
        stream_subjects=section.strings("stream_subjects", default_subjects),
        duplicate_window_s=section.number("duplicate_window_s", 120.0, 1.0, 7 * 86400.0),
        token=section.text("token"),
        username=section.text("username"),
        password=section.text("password"),
        tls_verify=section.boolean("tls_verify", True),
        name=section.text("name", "nats"),
        batch=read_batch(section, BatchSettings()),
        **files,
    )
    section.done()
    return (config,)


def _wildcard(subject: str) -> str:
    """The subject with each token that holds a ``${...}`` as ``*`` (what the stream takes)."""
    return ".".join("*" if "${" in token else token for token in subject.split("."))


def target(settings: NatsConfig, config: CdrConfig) -> Target:
    from . import Target

    return Target(settings.name, settings.describe(), lambda: NatsSink(settings), settings.batch, coalesce=False,
                  encode=NatsEncoder(settings))


class NatsEncoder:
    """A record as the sink publishes it (made ahead by the lane): uuid, subject, document."""

    def __init__(self, settings: NatsConfig) -> None:
        self.parts = settings.subject

    def subject(self, record: CallRecord) -> str:
        parts = self.parts
        if len(parts) == 1:
            return parts[0]
        pieces = []
        for index, part in enumerate(parts):
            if index % 2:
                value = record.get(part)
                text = "" if value is None else str(value)
                pieces.append(_UNSAFE_TOKEN.sub("_", text) or "_")
            else:
                pieces.append(part)
        return "".join(pieces)

    def __call__(self, record: CallRecord) -> tuple[str, str, bytes]:
        return str(record["uuid"]), self.subject(record), record_json(record)


class _Batch:
    """The batch in flight: how many acks it needs, which came, the first error."""

    __slots__ = ("acked", "done", "error", "expected")

    def __init__(self, expected: int, done: asyncio.Future[None]) -> None:
        self.expected = expected
        self.done = done
        self.acked: set[str] = set()
        self.error = ""


class NatsSink:
    """One connection, on an event loop running in a thread of the sink's own."""

    def __init__(self, config: NatsConfig) -> None:
        self.config = config
        self.encode = NatsEncoder(config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._client: Any = None
        self._jetstream: Any = None
        self._inbox = ""
        self._batch: _Batch | None = None
        self._batch_number = 0

    # -- the loop ---------------------------------------------------------------------------------
    def _run(self, coroutine: Any, timeout_s: float) -> Any:
        loop = self._loop
        if loop is None:
            coroutine.close()
            raise RetriableError("not connected")
        future = asyncio.run_coroutine_threadsafe(coroutine, loop)
        try:
            return future.result(timeout_s)
        except TimeoutError:
            future.cancel()
            raise RetriableError(f"no answer from NATS within {timeout_s:.0f} s") from None

    def open(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"fs_cdr-{self.config.name}-nats",
                                        daemon=True)
        self._thread.start()
        try:
            self._run(self._connect(), self.config.batch.timeout_s * 2 + 1)
        except RetriableError:
            self.close()
            raise
        except Exception as error:
            self.close()
            raise RetriableError(f"{type(error).__name__}: {error}") from error

    async def _connect(self) -> None:
        import nats

        settings = self.config
        options: dict[str, Any] = {
            "servers": list(settings.servers), "name": "fs_cdr", "connect_timeout": settings.batch.timeout_s,
            "allow_reconnect": True, "max_reconnect_attempts": -1, "reconnect_time_wait": 0.2, "dont_randomize": True,
            "error_cb": self._on_error, "disconnected_cb": self._on_disconnected,
        }
        if settings.token:
            options["token"] = settings.token
        if settings.username:
            options["user"], options["password"] = settings.username, settings.password
        if settings.credentials:
            options["user_credentials"] = settings.credentials
        if settings.nkey_seed:
            options["nkeys_seed"] = settings.nkey_seed
        if settings.tls_ca_file or settings.tls_cert_file or not settings.tls_verify or any(
                server.startswith("tls://") for server in settings.servers):
            options["tls"] = self._tls_context()
        client = await nats.connect(**options)
        jetstream = client.jetstream(timeout=settings.batch.timeout_s)
        if settings.create_stream:
            await self._ensure_stream(jetstream)
        self._inbox = client.new_inbox()
        await client.subscribe(self._inbox + ".>", cb=self._on_ack, pending_msgs_limit=-1, pending_bytes_limit=-1)
        self._client, self._jetstream = client, jetstream

    def _tls_context(self) -> Any:
        import ssl

        settings = self.config
        context = ssl.create_default_context(cafile=settings.tls_ca_file or None)
        if not settings.tls_verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if settings.tls_cert_file:
            context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file or None)
        return context

    async def _ensure_stream(self, jetstream: Any) -> None:
        from nats.js.api import StorageType, StreamConfig
        from nats.js.errors import NotFoundError

        settings = self.config
        try:
            await jetstream.stream_info(settings.stream)
        except NotFoundError:
            await jetstream.add_stream(StreamConfig(name=settings.stream, subjects=list(settings.stream_subjects),
                                                    storage=StorageType.FILE,
                                                    duplicate_window=settings.duplicate_window_s))
            log.info("sink %s: created JetStream stream %s for %s", settings.name, settings.stream,
                     ", ".join(settings.stream_subjects))

    async def _on_error(self, error: Exception) -> None:
        log.debug("sink %s: %s: %s", self.config.name, type(error).__name__, error)

    async def _on_disconnected(self) -> None:
        log.info("sink %s: disconnected from NATS, reconnecting", self.config.name)

    # -- the Sink interface -----------------------------------------------------------------------
    def write(self, records: Sequence[CallRecord]) -> None:
        self.write_encoded([self.encode(record) for record in records])

    def write_encoded(self, messages: Sequence[tuple[Any, ...]], meanwhile: Callable[[], None] | None = None) -> None:
        if self._jetstream is None:
            raise RetriableError("not connected")
        timeout = self.config.batch.timeout_s
        try:
            self._run(self._publish(messages, timeout), timeout + 1)
        except (RetriableError, RejectedError):
            raise
        except Exception as error:
            raise RetriableError(f"{type(error).__name__}: {error}") from error
        if meanwhile is not None:
            meanwhile()

    async def _publish(self, messages: Sequence[tuple[Any, ...]], timeout_s: float) -> None:
        """Every message of the batch out, each with its own reply subject under this sink's inbox,
        then every PubAck awaited at once. What ``publish_async`` does, without a future, a
        semaphore, random bytes and a PubAck object per message: the acks are counted here."""
        from nats.errors import MaxPayloadError

        client, stream = self._client, self.config.stream
        loop = asyncio.get_running_loop()
        batch = _Batch(len(messages), loop.create_future())
        self._batch = batch
        self._batch_number += 1
        prefix = f"{self._inbox}.{self._batch_number}."
        try:
            for index, (uuid, subject, document) in enumerate(messages):
                headers = {"Nats-Msg-Id": uuid, "Nats-Expected-Stream": stream} if stream else {"Nats-Msg-Id": uuid}
                await client.publish(subject, bytes(document), reply=prefix + str(index), headers=headers)
        except MaxPayloadError as error:
            # only a record's own size can exceed the server's max_payload: that record is refused
            raise RejectedError(f"a record is larger than the NATS server's max_payload: {error}") from error
        try:
            await asyncio.wait_for(asyncio.shield(batch.done), timeout_s)
        except asyncio.TimeoutError:
            raise RetriableError(f"{batch.expected - len(batch.acked)} of {batch.expected} messages not "
                                 f"acknowledged within {timeout_s:.0f} s") from None
        finally:
            self._batch = None
        if batch.error:
            raise RetriableError(batch.error)

    async def _on_ack(self, message: Any) -> None:
        """A PubAck (or an error) for one message of the batch in flight; late ones of a batch
        given up on are ignored (that batch is sent again: the stream drops the duplicates)."""
        batch = self._batch
        head, _, index = message.subject.rpartition(".")
        if batch is None or batch.done.done() or head != f"{self._inbox}.{self._batch_number}":
            return
        data = message.data
        if message.headers and message.headers.get("Status") == "503":
            batch.error = "no JetStream stream takes the subject (no responders)"
        elif b'"error"' in data:
            # an API error (no such stream, another stream, stream full): the server's, not the record's
            batch.error = f"JetStream refused a message: {data[:300].decode('utf-8', 'replace')}"
        else:
            batch.acked.add(index)
        if batch.error or len(batch.acked) == batch.expected:
            batch.done.set_result(None)

    def close(self) -> None:
        loop, self._loop = self._loop, None
        client, self._client, self._jetstream = self._client, None, None
        if loop is None:
            return
        if client is not None:
            future = asyncio.run_coroutine_threadsafe(client.close(), loop)
            with contextlib.suppress(Exception):  # closing a lost connection may fail any way it likes
                future.result(2)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(2)
        with contextlib.suppress(Exception):
            loop.close()
        self._thread = None
