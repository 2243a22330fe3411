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
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional
from urllib.parse import parse_qsl, unquote, urlsplit

from .errors import ConfigError
from .fields import IDENTIFIER, FieldSpec, parse_fields

#: dbtype spellings accepted, mapped to the dialect that serves them.
DBTYPES = {
    "sqlite": "sqlite",
    "sqlite3": "sqlite",
    "mysql": "mysql",
    "mariadb": "mysql",
    "pgsql": "postgresql",
    "postgres": "postgresql",
    "postgresql": "postgresql",
    "sqlserver": "sqlserver",
    "mssql": "sqlserver",
    "oracle": "oracle",
    "odbc": "odbc",
}
DEFAULT_PORTS = {"mysql": 3306, "postgresql": 5432, "sqlserver": 1433, "oracle": 1521}
#: Channel variables whose values never reach ``details`` (matched case-insensitively, ``*`` wildcard).
DEFAULT_SECRET_VARIABLES = ("*password*", "*passwd*", "*secret*", "*token*", "sip_auth_*")
PROCESS_CDR_VALUES = ("true", "false", "a_only", "b_only")
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


@dataclass(frozen=True)
class DatabaseConfig:
    """One ``database`` object: a SQL sink."""

    name: str
    dbtype: str
    table: str
    real: bool = False
    host: str = ""
    port: int = 0
    database: str = ""
    path: str = ""
    username: str = ""
    password: str = field(default="", repr=False)
    #: An ODBC connection string or DSN, for sqlserver and odbc.
    odbc: str = field(default="", repr=False)
    #: For dbtype odbc: which SQL dialect the target speaks.
    dialect: str = ""
    driver: str = ""
    options: Mapping[str, str] = field(default_factory=dict, repr=False)
    batch: BatchSettings = BatchSettings()

    def describe(self) -> str:
        """Where this sink writes, safe for logs and status (no secrets)."""
        if self.dbtype == "sqlite":
            return f"sqlite:{self.path} table {self.table}"
        if self.odbc:
            return f"{self.dbtype}:odbc table {self.table}"
        return f"{self.dbtype}://{self.host}:{self.port}/{self.database} table {self.table}"


@dataclass(frozen=True)
class RedisConfig:
    """The ``redis`` object: LPUSH onto ``list`` and/or PUBLISH on ``channel``."""

    channel: str = ""
    list: str = ""
    host: str = "127.0.0.1"
    port: int = 6379
    db: int = 0
    username: str = ""
    password: str = field(default="", repr=False)
    name: str = "redis"
    batch: BatchSettings = BatchSettings()

    def describe(self) -> str:
        targets = []
        if self.list:
            targets.append(f"list {self.list}")
        if self.channel:
            targets.append(f"channel {self.channel}")
        return f"redis://{self.host}:{self.port}/{self.db} " + ", ".join(targets)


@dataclass(frozen=True)
class CdrConfig:
    """The whole validated ``cdr`` section."""

    details: bool = False
    fields: tuple[FieldSpec, ...] = ()
    databases: tuple[DatabaseConfig, ...] = ()
    redis: Optional[RedisConfig] = None
    log: bool = False
    #: The channel variable that, set to true on a channel, keeps it out of every sink.
    skip_variable: str = "fs_cdr_skip"
    #: Which legs get a record when the channel says nothing (FreeSWITCH's ``process_cdr``).
    process_cdr: str = "true"
    secret_variables: tuple[str, ...] = DEFAULT_SECRET_VARIABLES
    spool_dir: str = ""
    #: A record popped from FreeSWITCH is in its sink or fsynced to the spool within this window.
    durable_window_ms: int = 200
    source: str = ""

    @property
    def real(self) -> bool:
        return any(database.real for database in self.databases)


@dataclass(frozen=True)
class Paths:
    """FreeSWITCH's directories, used for defaults (SQLite file, spool)."""

    conf_dir: str = "."
    db_dir: str = "."
    storage_dir: str = "."


class _Section:
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
            raise ConfigError(self.key(name), f"expected a string, got {_kind(value)}")
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


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"number {value}"
    if isinstance(value, str):
        return f"string {value[:40]!r}"
    return {"list": "a list", "dict": "an object"}.get(type(value).__name__, type(value).__name__)


def _batch(section: _Section, defaults: BatchSettings) -> BatchSettings:
    return BatchSettings(
        batch_size=section.integer("batch_size", defaults.batch_size, 1, 100_000),
        flush_interval_ms=section.integer("flush_interval_ms", defaults.flush_interval_ms, 1, 60_000),
        queue_size=section.integer("queue_size", defaults.queue_size, 1, 10_000_000),
        workers=section.integer("workers", defaults.workers, 1, 64),
        timeout_s=section.number("timeout_s", defaults.timeout_s, 0.1, 600),
    )


_SEED_ADDRESS = re.compile(r"^(?:tcp:)?(?P<host>[^,@/\s]+)(?:,(?P<port>\d{1,5}))?@(?P<database>[^@\s]+)$")


def _parse_connection(dbtype: str, text: str, path: str, paths: Paths) -> dict[str, Any]:
    """Split a connection string into its parts.

    Accepted: the seed's ``host,port@dbname`` (``tcp:host,port@dbname`` for SQL Server), a URL
    (``mysql://user:pass@host:3306/db``), for SQLite a file path or ``sqlite:///path``, and for
    sqlserver/odbc a raw ODBC connection string (``Driver=...;Server=...``) or ``DSN=name``.
    """
    text = text.strip()
    if dbtype == "sqlite":
        if text.startswith("sqlite://"):
            text = text[len("sqlite://") :]
        if not text:
            text = os.path.join(paths.db_dir, "fs_cdr.sqlite")
        return {"path": text}
    if dbtype in ("sqlserver", "odbc") and "=" in text and "://" not in text:
        return {"odbc": text}
    if not text:
        raise ConfigError(path, f"empty; a {dbtype} database needs 'host,port@dbname' or a URL")
    if "://" in text:
        url = urlsplit(text)
        try:
            port = url.port
        except ValueError as exc:
            raise ConfigError(path, "the port in the URL is not a number") from exc
        database = unquote(url.path.lstrip("/"))
        if not url.hostname or not database:
            raise ConfigError(path, "a URL needs a host and a database name: scheme://host:port/dbname")
        return {
            "host": url.hostname,
            "port": port or DEFAULT_PORTS.get(dbtype, 0),
            "database": database,
            "username": unquote(url.username or ""),
            "password": unquote(url.password or ""),
            "options": dict(parse_qsl(url.query)),
        }
    match = _SEED_ADDRESS.match(text)
    if not match:
        raise ConfigError(path, f"expected 'host,port@dbname' or a URL, got {text[:60]!r}")
    port = int(match.group("port") or DEFAULT_PORTS.get(dbtype, 0))
    if not 0 < port < 65536:
        raise ConfigError(path, f"port {port} is out of range")
    return {"host": match.group("host"), "port": port, "database": match.group("database")}


def _database(value: object, path: str, paths: Paths, index: int, base: str) -> DatabaseConfig:
    section = _Section(path, value)
    raw_type = section.text("dbtype")
    dbtype = DBTYPES.get(raw_type.lower())
    if dbtype is None:
        raise ConfigError(
            section.key("dbtype"), f"unknown database type {raw_type!r} (one of {', '.join(DBTYPES)})"
        )
    table = section.text("table", "cdr")
    if not IDENTIFIER.match(table):
        raise ConfigError(section.key("table"), f"table name {table!r} must be letters, digits and _")
    parts = _parse_connection(dbtype, section.text("connectionstring"), section.key("connectionstring"), paths)
    url_username = parts.pop("username", "")
    url_password = parts.pop("password", "")
    if parts.get("path"):
        parts["path"] = os.path.join(base, parts["path"])
    dialect = section.text("dialect")
    if dbtype == "odbc" and dialect not in ("mysql", "postgresql", "sqlserver", "oracle", "sqlite"):
        raise ConfigError(
            section.key("dialect"),
            "dbtype odbc needs the dialect its target speaks: mysql, postgresql, sqlserver, oracle or sqlite",
        )
    config = DatabaseConfig(
        name=section.text("name", dbtype if index == 0 else f"{dbtype}{index}"),
        dbtype=dbtype,
        table=table,
        real=section.boolean("real", False),
        username=section.text("username") or url_username,
        password=section.text("password") or url_password,
        dialect=dialect,
        driver=section.text("driver"),
        batch=_batch(section, BatchSettings()),
        **parts,
    )
    section.done()
    return config


def _redis(value: object, path: str) -> RedisConfig:
    section = _Section(path, value)
    host, port, db, username, password = "127.0.0.1", 6379, 0, "", ""
    url_text = section.text("url")
    if url_text:
        url = urlsplit(url_text)
        if url.scheme not in ("redis", "rediss") or not url.hostname:
            raise ConfigError(section.key("url"), "expected redis://[user:password@]host:port/db")
        host, port = url.hostname, url.port or 6379
        number = url.path.lstrip("/")
        db = int(number) if number.isdigit() else 0
        username, password = unquote(url.username or ""), unquote(url.password or "")
    config = RedisConfig(
        channel=section.text("channel"),
        list=section.text("list"),
        host=section.text("host", host),
        port=section.integer("port", port, 1, 65535),
        db=section.integer("db", db, 0, 1_000_000),
        username=section.text("username", username),
        password=section.text("password", password),
        name=section.text("name", "redis"),
        batch=_batch(section, BatchSettings()),
    )
    section.done()
    if not config.channel and not config.list:
        raise ConfigError(path, "set 'list' (LPUSH) and/or 'channel' (PUBLISH), or leave redis out")
    return config


def parse_config(document: object, paths: Paths = Paths(), source: str = "") -> CdrConfig:
    """Validate the parsed JSON document and return its ``cdr`` section."""
    if not isinstance(document, dict):
        raise ConfigError("(top level)", f"expected an object with a 'cdr' key, got {_kind(document)}")
    if "cdr" not in document:
        raise ConfigError("cdr", "missing: the file needs a top-level \"cdr\" object")
    section = _Section("cdr", document["cdr"])
    # Relative paths (SQLite file, spool) are relative to cdr.json, not to FreeSWITCH's cwd.
    base = os.path.dirname(os.path.abspath(source)) if source else os.getcwd()
    raw_databases = section.get("database")
    if raw_databases is None:
        databases: tuple[DatabaseConfig, ...] = ()
    elif isinstance(raw_databases, list):
        databases = tuple(
            _database(item, f"cdr.database[{index}]", paths, index, base) for index, item in enumerate(raw_databases)
        )
    else:
        databases = (_database(raw_databases, "cdr.database", paths, 0, base),)
    raw_redis = section.get("redis")
    redis = _redis(raw_redis, "cdr.redis") if raw_redis is not None else None
    process_cdr = section.text("process_cdr", "true")
    if process_cdr not in PROCESS_CDR_VALUES:
        raise ConfigError(section.key("process_cdr"), f"one of {', '.join(PROCESS_CDR_VALUES)}")
    spool_dir = section.text("spool_dir") or os.path.join(paths.storage_dir, SPOOL_SUBDIR)
    config = CdrConfig(
        details=section.boolean("details", False),
        fields=parse_fields(section.get("fields") or [], "cdr.fields"),
        databases=databases,
        redis=redis,
        log=section.boolean("log", False),
        skip_variable=section.text("skip_variable", "fs_cdr_skip"),
        process_cdr=process_cdr,
        secret_variables=section.strings("secret_variables", DEFAULT_SECRET_VARIABLES),
        spool_dir=os.path.join(base, spool_dir),
        durable_window_ms=section.integer("durable_window_ms", 200, 20, 600_000),
        source=source,
    )
    section.done()
    names = [sink.name for sink in databases] + ([redis.name] if redis else [])
    for name in names:
        if names.count(name) > 1 or not IDENTIFIER.match(name):
            raise ConfigError("cdr.database", f"sink name {name!r} must be unique and letters, digits and _")
    if not names and not config.log:
        raise ConfigError("cdr", "no sink: configure 'database', 'redis' or \"log\": true")
    return config


def load_config(path: str, paths: Paths = Paths()) -> CdrConfig:
    """Read and validate a cdr.json file."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as exc:
        raise ConfigError(path, f"cannot read: {exc.strerror}") from exc
    try:
        document = json.loads(raw)
    except UnicodeDecodeError as exc:
        raise ConfigError(path, "not UTF-8 text") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}:{exc.colno}", f"not valid JSON: {exc.msg}") from exc
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
    values = [database.password for database in config.databases]
    values += [database.odbc for database in config.databases]
    if config.redis:
        values.append(config.redis.password)
    return tuple(value for value in values if value)
