"""cdr.json: reading, validating and resolving the configuration.

The file holds a top-level ``cdr`` object in the seed's format (other top-level keys, such as the
rest of a cti.json, are left alone)::

    {"cdr": {"details": true, "fields": [...], "redis": {"channel": "cdr", "list": "cdr"},
             "database": {"dbtype": "mysql", "connectionstring": "127.0.0.1,3306@cdr",
                          "username": "", "password": "", "table": "cdr", "real": false},
             "log": false}}

Every problem is a :class:`ConfigError` naming the key path (``cdr.database.dbtype``). Unknown keys are
errors too: a typo such as ``"tabel"`` must not silently fall back to a default. Passwords are kept out
of ``repr`` and out of every message.

This module holds the document and what every section shares (:class:`Section`'s checks, the batch
settings, paths, secret masking). Each sink's own section — its dataclass and its parser — lives
beside the sink, in the module :data:`SINKS` names for its key (``"redis"`` → ``fs_cdr/sinks/redis.py``),
imported only when a cdr.json has that key. Such a module provides::

    parse_section(value, path, context) -> tuple[settings, ...]   # settings: name, batch, describe(), secrets()
    target(settings, config) -> fs_cdr.sinks.Target               # how to open the sink, for its lane

so a new sink is one module plus one line here.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import re
from dataclasses import dataclass, field
from types import ModuleType
from typing import TYPE_CHECKING, Any, Iterable, Optional
from urllib.parse import unquote, urlsplit

from .errors import ConfigError
from .fields import IDENTIFIER, FieldSpec, parse_fields

if TYPE_CHECKING:
    from .esl import EventSocketConfig
    from .sinks.database import DatabaseConfig
    from .sinks.rabbitmq import RabbitConfig
    from .sinks.redis import RedisConfig

#: cdr.json's sink keys, in the order their lanes start, and the module that reads each one's section
#: and opens its sink (see the module's docstring).
SINKS: dict[str, str] = {
    "database": "fs_cdr.sinks.database",
    "redis": "fs_cdr.sinks.redis",
    "rabbitmq": "fs_cdr.sinks.rabbitmq",
    "http": "fs_cdr.sinks.http",
    "nats": "fs_cdr.sinks.nats",
    "file": "fs_cdr.sinks.file",
}

#: Channel variables whose values never reach ``details`` (matched case-insensitively, ``*`` wildcard).
DEFAULT_SECRET_VARIABLES = ("*password*", "*passwd*", "*secret*", "*token*", "sip_auth_*")
PROCESS_CDR_VALUES = ("true", "false", "a_only", "b_only")
#: The column sets a table can have (``"columns"``).
COLUMN_SETS = ("standard", "extended")
#: Under FreeSWITCH's storage directory unless ``spool_dir`` says otherwise.
SPOOL_SUBDIR = "fs_cdr-spool"


@dataclass(frozen=True)
class BatchSettings:
    """How a sink's writers queue and batch records."""

    batch_size: int = 500
    flush_interval_ms: int = 50
    queue_size: int = 50_000
    workers: int = 1
    timeout_s: float = 5.0
    #: each writer runs its sink in a child process (fs_cdr/sinks/worker.py)
    worker_process: bool = True
    #: the most disk its spool may take, in MB; None: half the space free on that disk at start
    spool_max_mb: Optional[float] = None


def sink_module(key: str) -> ModuleType:
    """The module that reads the ``key`` section and opens its sink (imported on first use, so that a
    sink's module, which imports this one, never runs before it)."""
    return importlib.import_module(SINKS[key])


def _event_socket_defaults() -> EventSocketConfig:
    from .esl import EventSocketConfig

    return EventSocketConfig()


@dataclass(frozen=True)
class CdrConfig:
    """The whole validated ``cdr`` section."""

    details: bool = False
    fields: tuple[FieldSpec, ...] = ()
    #: every configured sink's settings, in :data:`SINKS` order (a ``database`` list in its own order)
    sinks: tuple[Any, ...] = ()
    log: bool = False
    #: The channel variable that, set to true on a channel, keeps it out of every sink.
    skip_variable: str = "fs_cdr_skip"
    #: Which legs get a record when the channel says nothing (FreeSWITCH's ``process_cdr``).
    process_cdr: str = "true"
    secret_variables: tuple[str, ...] = DEFAULT_SECRET_VARIABLES
    spool_dir: str = ""
    #: A record popped from FreeSWITCH is in its sink or fsynced to the spool within this window.
    durable_window_ms: int = 200
    event_socket: EventSocketConfig = field(default_factory=_event_socket_defaults)
    source: str = ""
    #: "standard" (the seed's columns) or "extended": outcome, hangup_by, timing and quality
    #: columns besides (fs_cdr/outcome.py, docs/call-center.md)
    columns: str = "standard"
    #: One row per call in its own table of every SQL database (``"calls": {"table": "cdr_call"}``);
    #: "" when not asked for. Needs ``"columns": "extended"`` (the call row is made from those columns).
    calls_table: str = ""

    @property
    def extended(self) -> bool:
        return self.columns == "extended"

    @functools.cached_property
    def real(self) -> bool:
        """Whether any sink wants real-time updates (then the channel events besides hangups are read).
        Asked on every event: worked out once (a configuration never changes; a reload is a new one)."""
        return any(getattr(sink, "real", False) for sink in self.sinks)

    def sinks_of(self, key: str) -> tuple[Any, ...]:
        """The settings of every sink configured under ``key``."""
        return tuple(sink for sink in self.sinks if sink.key == key)

    @property
    def databases(self) -> tuple[DatabaseConfig, ...]:
        return self.sinks_of("database")

    @property
    def redis(self) -> Optional[RedisConfig]:
        return next(iter(self.sinks_of("redis")), None)

    @property
    def rabbitmq(self) -> Optional[RabbitConfig]:
        return next(iter(self.sinks_of("rabbitmq")), None)


@dataclass(frozen=True)
class SectionContext:
    """What a sink's ``parse_section`` may need besides its own object."""

    paths: Paths
    #: cdr.json's directory: relative paths in a section are relative to it
    base: str
    #: the sinks parsed before this one (the Redis section defaults to real-time when a database is)
    earlier: tuple[Any, ...] = ()
    #: the top-level ``columns`` (call messages are made from the extended ones)
    columns: str = "standard"


@dataclass(frozen=True)
class Paths:
    """FreeSWITCH's directories, used for defaults (SQLite file, spool)."""

    conf_dir: str = "."
    db_dir: str = "."
    storage_dir: str = "."


#: Keys whose values are secrets besides ``*password*`` ones: a value of the wrong type is not echoed.
SECRET_KEYS = frozenset(("bearer", "token", "hmac_secret"))


class Section:
    """Reads one JSON object, naming each key by its full path, and rejects unknown keys."""

    def __init__(self, path: str, value: object) -> None:
        if not isinstance(value, dict):
            raise ConfigError(path, f"expected an object, got {_kind(value)}")
        self.path = path
        self.value: dict[str, Any] = value
        self.read: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}"

    def get(self, name: str) -> Any:
        self.read.add(name)
        return self.value.get(name)

    def boolean(self, name: str, default: bool) -> bool:
        value = self.get(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise ConfigError(self.key(name), f"expected true or false, got {_kind(value)}")
        return value

    def text(self, name: str, default: str = "") -> str:
        value = self.get(name)
        if value is None:
            return default
        if not isinstance(value, str):
            secret = "password" in name or name in ("url", "connectionstring") or name in SECRET_KEYS
            raise ConfigError(self.key(name), f"expected a string, got {_kind(value, secret)}")
        return value

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        value = self.get(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(self.key(name), f"expected a whole number, got {_kind(value)}")
        if not low <= value <= high:
            raise ConfigError(self.key(name), f"must be between {low} and {high}, got {value}")
        return value

    def number(self, name: str, default: float, low: float, high: float) -> float:
        value = self.get(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(self.key(name), f"expected a number, got {_kind(value)}")
        if not low <= value <= high:
            raise ConfigError(self.key(name), f"must be between {low} and {high}, got {value}")
        return float(value)

    def strings(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self.get(name)
        if value is None:
            return default
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise ConfigError(self.key(name), f"expected a list of strings, got {_kind(value)}")
        return tuple(value)

    def done(self) -> None:
        unknown = sorted(set(self.value) - self.read)
        if unknown:
            raise ConfigError(
                self.key(unknown[0]), f"unknown key (known here: {', '.join(sorted(self.read))})"
            )


def split_url(text: str, path: str, example: str, schemes: tuple[str, ...] = ()) -> tuple[Any, int]:
    """``urlsplit`` and its port, with every way a URL can be malformed as a ConfigError (the URL itself
    is not echoed: it may hold a password). With ``schemes``, the scheme must be one of them and the
    URL must name a host."""
    try:
        url = urlsplit(text)
        port = url.port or 0
    except ValueError as exc:
        raise ConfigError(path, f"not a valid URL (expected {example}): {exc}") from exc
    if schemes and (url.scheme not in schemes or not url.hostname):
        raise ConfigError(path, f"expected {example}")
    return url, port


def _kind(value: object, secret: bool = False) -> str:
    if secret and value is not None:
        return type(value).__name__  # a password of the wrong type is still a password: never echoed
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"number {value}"
    if isinstance(value, str):
        return f"string {value[:40]!r}"
    return {"list": "a list", "dict": "an object"}.get(type(value).__name__, type(value).__name__)


def read_batch(section: Section, defaults: BatchSettings) -> BatchSettings:
    return BatchSettings(
        batch_size=section.integer("batch_size", defaults.batch_size, 1, 100_000),
        flush_interval_ms=section.integer("flush_interval_ms", defaults.flush_interval_ms, 1, 60_000),
        queue_size=section.integer("queue_size", defaults.queue_size, 1, 10_000_000),
        workers=section.integer("workers", defaults.workers, 1, 64),
        timeout_s=section.number("timeout_s", defaults.timeout_s, 0.1, 600),
        worker_process=section.boolean("worker_process", defaults.worker_process),
        spool_max_mb=(None if section.get("spool_max_mb") is None
                      else section.number("spool_max_mb", 0.0, 0.01, 100_000_000)),
    )


def option_file(value: str, name: str, path: str, base: str) -> str:
    """A certificate or key file: relative to cdr.json, and it must exist now (a typo is a
    configuration error naming the key, not a connection that fails forever)."""
    resolved = os.path.join(base, value)
    if not os.path.isfile(resolved):
        raise ConfigError(path, f"{name}: no such file {resolved!r}")
    return resolved



USERINFO = re.compile(r"://[^/@:\s]*:([^@/\s]+)@")


def userinfo_passwords(text: str) -> list[str]:
    """The password of every ``scheme://user:password@`` inside a text (a URL typed where a path goes)."""
    return [unquote(found) for found in USERINFO.findall(text)]


def _document_passwords(value: object) -> list[str]:
    """Every password a raw document holds (``*password*`` keys, URL passwords), to keep out of errors."""
    found: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, str) and "password" in str(key).lower():
                found.append(item)
            elif isinstance(item, str) and "://" in item:
                found.extend(userinfo_passwords(item))
            else:
                found.extend(_document_passwords(item))
    elif isinstance(value, list):
        for item in value:
            found.extend(_document_passwords(item))
    return found


def parse_config(document: object, paths: Paths = Paths(), source: str = "") -> CdrConfig:
    """Validate the parsed JSON document and return its ``cdr`` section. An error never repeats a
    password of the document, wherever else the same text was typed."""
    try:
        return _parse_config(document, paths, source)
    except ConfigError as error:
        secrets = _document_passwords(document)
        message = mask_secrets(error.message, secrets)
        if message == error.message:
            raise
        raise ConfigError(mask_secrets(error.path, secrets), message) from None


def _parse_config(document: object, paths: Paths, source: str) -> CdrConfig:
    if not isinstance(document, dict):
        raise ConfigError("(top level)", f"expected an object with a 'cdr' key, got {_kind(document)}")
    if "cdr" not in document:
        raise ConfigError("cdr", "missing: the file needs a top-level \"cdr\" object")
    section = Section("cdr", document["cdr"])
    # Relative paths (SQLite file, spool) are relative to cdr.json, not to FreeSWITCH's cwd.
    base = os.path.dirname(os.path.abspath(source)) if source else os.getcwd()
    columns = section.text("columns", "standard")
    if columns not in COLUMN_SETS:
        raise ConfigError(section.key("columns"), f"one of {', '.join(COLUMN_SETS)}")
    sinks: list[Any] = []
    for key in SINKS:
        raw = section.get(key)
        if raw is not None:
            context = SectionContext(paths, base, tuple(sinks), columns)
            sinks.extend(sink_module(key).parse_section(raw, f"cdr.{key}", context))
    process_cdr = section.text("process_cdr", "true")
    if process_cdr not in PROCESS_CDR_VALUES:
        raise ConfigError(section.key("process_cdr"), f"one of {', '.join(PROCESS_CDR_VALUES)}")
    spool_dir = section.text("spool_dir") or os.path.join(paths.storage_dir, SPOOL_SUBDIR)
    from .esl import parse_event_socket

    calls_table = _calls_table(section.get("calls"), section.key("calls"), columns)
    config = CdrConfig(
        columns=columns,
        calls_table=calls_table,
        details=section.boolean("details", False),
        fields=parse_fields(section.get("fields") or [], "cdr.fields"),
        sinks=tuple(sinks),
        log=section.boolean("log", False),
        skip_variable=section.text("skip_variable", "fs_cdr_skip"),
        process_cdr=process_cdr,
        secret_variables=section.strings("secret_variables", DEFAULT_SECRET_VARIABLES),
        spool_dir=os.path.join(base, spool_dir),
        durable_window_ms=section.integer("durable_window_ms", 200, 20, 600_000),
        event_socket=parse_event_socket(section.get("event_socket"), "cdr.event_socket"),
        source=source,
    )
    section.done()
    names = [sink.name for sink in sinks]
    for name in names:
        if names.count(name) > 1 or not IDENTIFIER.match(name):
            raise ConfigError("cdr.database", f"sink name {name!r} must be unique and letters, digits and _")
    if not names and not config.log:
        keys = ", ".join(f"'{key}'" for key in SINKS)
        raise ConfigError("cdr", f"no sink: configure {keys} or \"log\": true")
    return config


def _calls_table(value: object, path: str, columns: str) -> str:
    """The ``calls`` section: ``{"table": "cdr_call"}``; "" when absent."""
    if value is None:
        return ""
    calls = Section(path, value)
    table = calls.text("table", "cdr_call")
    calls.done()
    if not IDENTIFIER.match(table):
        raise ConfigError(f"{path}.table", f"table name {table!r} must be letters, digits and _")
    if columns != "extended":
        raise ConfigError(path, 'the call table is made from the extended columns: set "columns": "extended" too')
    return table


def load_config(path: str, paths: Paths = Paths()) -> CdrConfig:
    """Read and validate a cdr.json file. Every way the file can be wrong is a ConfigError, never
    another exception (this runs inside FreeSWITCH, on reload too)."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        raise ConfigError(repr(path), f"cannot read: {getattr(exc, 'strerror', None) or exc}") from exc
    try:
        document = json.loads(raw)
    except UnicodeDecodeError as exc:
        raise ConfigError(path, "not UTF-8 text") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}:{exc.colno}", f"not valid JSON: {exc.msg}") from exc
    except (RecursionError, ValueError) as exc:  # nesting too deep, a number of thousands of digits
        raise ConfigError(path, f"not a JSON file fs_cdr can read: {type(exc).__name__}") from exc
    return parse_config(document, paths, source=path)


def resolve_config_path(argument: str, global_variable: Optional[str], conf_dir: str) -> str:
    """Where cdr.json is: a startup argument, else the ``fs_cdr_config`` global, else conf_dir."""
    for candidate in (argument, global_variable):
        if candidate and candidate.strip():
            return candidate.strip()
    return os.path.join(conf_dir, "cdr.json")


def mask_secrets(text: str, secrets: Iterable[str]) -> str:
    """Replace every secret in a message (driver errors can echo connection strings)."""
    for secret in secrets:
        if secret and len(secret) >= 2:
            text = text.replace(secret, "***")
    return text


def config_secrets(config: CdrConfig) -> tuple[str, ...]:
    """Every secret of the configuration (passwords, tokens, shared keys), to mask in logs and status."""
    values = [secret for sink in config.sinks for secret in sink.secrets()]
    values.append(config.event_socket.password)
    return tuple(value for value in values if value)


#: Names that lived here before each sink's section moved beside its sink.
_MOVED = {
    "DatabaseConfig": "fs_cdr.sinks.database", "DBTYPES": "fs_cdr.sinks.database",
    "DEFAULT_PORTS": "fs_cdr.sinks.database", "RedisConfig": "fs_cdr.sinks.redis",
    "RabbitConfig": "fs_cdr.sinks.rabbitmq", "parse_routing_key": "fs_cdr.sinks.rabbitmq",
    "EventSocketConfig": "fs_cdr.esl",
}


def __getattr__(name: str) -> Any:
    """``from fs_cdr.config import DatabaseConfig`` keeps working (imported from its new home on demand)."""
    if name in _MOVED:
        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
