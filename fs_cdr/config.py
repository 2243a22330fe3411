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
from .fields import IDENTIFIER, FieldSpec, parse_fields, parse_template

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
    #: each writer runs its sink in a child process (fs_cdr/sinks/worker.py)
    worker_process: bool = True


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
        where = self._where()
        return mask_secrets(where, (self.password, *_userinfo_passwords(where)))

    def _where(self) -> str:
        if self.dbtype == "sqlite":
            return f"sqlite:{self.path} table {self.table}"
        if self.odbc:
            return f"{self.dbtype}:odbc table {self.table}"
        where = f"{self.dbtype}://{self.host}:{self.port}/{self.database} table {self.table}"
        key = {"mysql": "ssl_mode", "postgresql": "sslmode"}.get(self.dbtype, "")
        mode = self.options.get(key) if key else None
        return f"{where} ({key} {mode})" if mode else where


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

    def describe(self) -> str:
        return mask_secrets(self._where(), (self.password,))

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

    def describe(self) -> str:
        where = f"amqp://{self.host}:{self.port}{self.virtual_host} exchange {self.exchange} key {self.routing_key_source}"
        return mask_secrets(where, (self.password,) if self.password != "guest" else ())


@dataclass(frozen=True)
class EventSocketConfig:
    """Where the sidecar (``fs-cdr run``) and ``fs-cdr status`` reach FreeSWITCH's event socket."""

    host: str = "127.0.0.1"
    port: int = 8021
    password: str = field(default="ClueCon", repr=False)


@dataclass(frozen=True)
class CdrConfig:
    """The whole validated ``cdr`` section."""

    details: bool = False
    fields: tuple[FieldSpec, ...] = ()
    databases: tuple[DatabaseConfig, ...] = ()
    redis: Optional[RedisConfig] = None
    rabbitmq: Optional[RabbitConfig] = None
    log: bool = False
    #: The channel variable that, set to true on a channel, keeps it out of every sink.
    skip_variable: str = "fs_cdr_skip"
    #: Which legs get a record when the channel says nothing (FreeSWITCH's ``process_cdr``).
    process_cdr: str = "true"
    secret_variables: tuple[str, ...] = DEFAULT_SECRET_VARIABLES
    spool_dir: str = ""
    #: A record popped from FreeSWITCH is in its sink or fsynced to the spool within this window.
    durable_window_ms: int = 200
    event_socket: EventSocketConfig = EventSocketConfig()
    source: str = ""

    @property
    def real(self) -> bool:
        """Whether any sink wants real-time updates (then the channel events besides hangups are read)."""
        return any(database.real for database in self.databases) or bool(self.redis and self.redis.real)


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
            secret = "password" in name or name in ("url", "connectionstring")
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


def _split_url(text: str, path: str, example: str, schemes: tuple[str, ...] = ()) -> tuple[Any, int]:
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


def _batch(section: _Section, defaults: BatchSettings) -> BatchSettings:
    return BatchSettings(
        batch_size=section.integer("batch_size", defaults.batch_size, 1, 100_000),
        flush_interval_ms=section.integer("flush_interval_ms", defaults.flush_interval_ms, 1, 60_000),
        queue_size=section.integer("queue_size", defaults.queue_size, 1, 10_000_000),
        workers=section.integer("workers", defaults.workers, 1, 64),
        timeout_s=section.number("timeout_s", defaults.timeout_s, 0.1, 600),
        worker_process=section.boolean("worker_process", defaults.worker_process),
    )


#: Oracle's Easy Connect without a protocol: host[:port]/service
_EASY_CONNECT = re.compile(r"^(?P<host>[^,@/:\s]+)(?::(?P<port>\d{1,5}))?/(?P<database>[^@/\s]+)$")
#: host,port@dbname. The host has no ':' (so 'user:password@host' is refused, not taken for a host
#: and shown in logs); an IPv6 address goes in a URL.
_SEED_ADDRESS = re.compile(r"^(?:tcp:)?(?P<host>[^,@/:\s]+)(?:,(?P<port>\d{1,5}))?@(?P<database>[^@\s]+)$")


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
        if _USERINFO.search(text):  # a server URL with credentials where a file path belongs
            raise ConfigError(path, "a SQLite connection string is a file path or sqlite:///path, not a URL "
                                    "with a user and password")
        return {"path": text}
    if dbtype in ("sqlserver", "odbc") and "=" in text and "://" not in text:
        return {"odbc": text}
    if not text:
        raise ConfigError(path, f"empty; a {dbtype} database needs 'host,port@dbname' or a URL")
    if "://" in text:
        url, port = _split_url(text, path, f"{dbtype}://user:password@host:port/dbname")
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
            # checked name by name for mysql and postgresql (see _sql_options)
            "query": url.query,
        }
    match = _SEED_ADDRESS.match(text) or (_EASY_CONNECT.match(text) if dbtype == "oracle" else None)
    if not match:
        # not echoed: a mistyped connection string often holds a password
        raise ConfigError(path, "expected 'host,port@dbname' (the seed's form) or a URL such as "
                                f"{dbtype}://user:password@host:port/dbname")
    # dbtype odbc has no port of its own: 0 lets its dialect pick the usual one
    port = int(match.group("port") or DEFAULT_PORTS.get(dbtype, 0))
    if not 0 <= port < 65536 or (port == 0 and dbtype != "odbc"):
        raise ConfigError(path, f"port {port} is out of range")
    return {"host": match.group("host"), "port": port, "database": match.group("database")}


#: How a connection option's value is checked: a tuple lists the accepted words (matched without regard
#: to case, stored as spelled here); _FILE is a file (relative to cdr.json); _TEXT any text.
_FILE, _TEXT, _METHODS = "file", "text", "methods"
MYSQL_SSL_MODES = ("DISABLED", "PREFERRED", "REQUIRED", "VERIFY_CA", "VERIFY_IDENTITY")
#: MySQL/MariaDB: TLS, in the connection URL's query (mysql://host:3306/db?ssl_mode=VERIFY_IDENTITY&ssl_ca=ca.pem),
#: given to mysqlclient as connect(ssl_mode=..., ssl={"ca": ..., "cert": ..., "key": ...}).
MYSQL_OPTIONS: dict[str, Any] = {"ssl_mode": MYSQL_SSL_MODES, "ssl_ca": _FILE, "ssl_cert": _FILE, "ssl_key": _FILE}
#: PostgreSQL: the libpq keywords a connection URL's query may set; they reach psycopg.connect as they are
#: (``options`` is prepended to fs_cdr's own ``-c statement_timeout``, ``application_name`` replaces "fs_cdr").
POSTGRES_OPTIONS: dict[str, Any] = {
    "sslmode": ("disable", "allow", "prefer", "require", "verify-ca", "verify-full"),
    "sslrootcert": _FILE,  # or "system": the operating system's CAs
    "sslcert": _FILE,
    "sslkey": _FILE,
    "sslcrl": _FILE,
    "ssl_min_protocol_version": ("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"),
    "channel_binding": ("disable", "prefer", "require"),
    "require_auth": _METHODS,
    "target_session_attrs": ("any", "read-write", "read-only", "primary", "standby", "prefer-standby"),
    "application_name": _TEXT,
    "options": _TEXT,
}
_AUTH_METHODS = ("password", "md5", "gss", "sspi", "scram-sha-256", "none")
#: libpq keywords that fs_cdr sets from elsewhere: where they belong instead.
_POSTGRES_ELSEWHERE = {
    "host": "the URL's host", "hostaddr": "the URL's host", "port": "the URL's port", "dbname": "the URL's path",
    "user": "user@ in the URL or the username key", "password": "user:password@ in the URL or the password key",
    "connect_timeout": "timeout_s", "tcp_user_timeout": "timeout_s", "keepalives": "timeout_s",
    "keepalives_idle": "timeout_s", "keepalives_interval": "timeout_s", "keepalives_count": "timeout_s",
}


def _option_file(value: str, name: str, path: str, base: str) -> str:
    """A certificate or key file: relative to cdr.json, and it must exist now (a typo is a
    configuration error naming the key, not a connection that fails forever)."""
    resolved = os.path.join(base, value)
    if not os.path.isfile(resolved):
        raise ConfigError(path, f"{name}: no such file {resolved!r}")
    return resolved


def _sql_options(dbtype: str, query: str, path: str, base: str, secrets: Iterable[str]) -> dict[str, str]:
    """The URL query of a mysql or postgresql connection string, checked name by name: an unknown
    option is an error, not a setting the driver silently ignores (or a TLS silently not used).
    Messages name options, never their values, and never a name that holds one of ``secrets`` (a
    mistyped URL can put its password in the query)."""
    known = MYSQL_OPTIONS if dbtype == "mysql" else POSTGRES_OPTIONS
    options: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        shown_name = repr(mask_secrets(name[:40], secrets))
        if name in options:
            raise ConfigError(path, f"URL option {shown_name} is given twice")
        if dbtype == "postgresql" and name in _POSTGRES_ELSEWHERE:
            raise ConfigError(path, f"URL option {shown_name} is not set in the query: use {_POSTGRES_ELSEWHERE[name]}")
        kind = known.get(name)
        if kind is None:
            raise ConfigError(path, f"unknown URL option {shown_name} (known for {dbtype}: {', '.join(known)})")
        if not value:
            raise ConfigError(path, f"URL option {name} has no value")
        if isinstance(kind, tuple):
            spelled = {word.lower(): word for word in kind}.get(value.lower())
            if spelled is None:
                raise ConfigError(path, f"URL option {name} must be one of {', '.join(kind)}")
            value = spelled
        elif kind == _FILE and not (name == "sslrootcert" and value == "system"):
            value = _option_file(value, name, path, base)
        elif kind == _METHODS:
            for method in value.split(","):
                if method.lstrip("!") not in _AUTH_METHODS:
                    raise ConfigError(path, f"URL option require_auth: {mask_secrets(method[:40], secrets)!r} is not one of "
                                            f"{', '.join(_AUTH_METHODS)} (each may start with !)")
        options[name] = value
    mode_key, ca_key, cert_key, key_key = (("ssl_mode", "ssl_ca", "ssl_cert", "ssl_key") if dbtype == "mysql"
                                           else ("sslmode", "sslrootcert", "sslcert", "sslkey"))
    if (cert_key in options) != (key_key in options):
        raise ConfigError(path, f"URL options {cert_key} and {key_key} go together (the client's certificate and its key)")
    files = [name for name in options if known[name] == _FILE]
    mode = options.get(mode_key)
    if mode in ("DISABLED", "disable") and files:
        raise ConfigError(path, f"URL option {mode_key}={mode} contradicts {', '.join(files)}")
    if mode is None and files:
        # a CA given means the server must prove who it is; a client certificate alone means TLS
        if ca_key in options:
            options[mode_key] = "VERIFY_IDENTITY" if dbtype == "mysql" else "verify-full"
        elif cert_key in options:
            options[mode_key] = "REQUIRED" if dbtype == "mysql" else "require"
    return options


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
    query = parts.pop("query", "")
    url_username = parts.pop("username", "")
    url_password = parts.pop("password", "")
    if dbtype in ("mysql", "postgresql"):
        parts["options"] = _sql_options(dbtype, query, section.key("connectionstring"), base,
                                        (url_password, section.text("password")))
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
        # A database server takes two connections' batches at once (each writer's batch waits on the
        # server while the other's is encoded); one SQLite file takes one writer at a time.
        batch=_batch(section, BatchSettings(workers=1 if dbtype == "sqlite" else 2)),
        **parts,
    )
    section.done()
    return config


REDIS_CERT_REQS = ("required", "none")


def _redis_tls(section: _Section, rediss: bool, base: str) -> dict[str, Any]:
    """``ssl`` and the files and checks that go with it; a rediss:// url means ``"ssl": true``."""
    ssl = section.boolean("ssl", rediss)
    if rediss and not ssl:
        raise ConfigError(section.key("ssl"), "a rediss:// url means TLS: leave \"ssl\" out or use redis://")
    settings: dict[str, Any] = {"ssl": ssl}
    for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
        value = section.text(name)
        settings[name] = _option_file(value, name, section.key(name), base) if value else ""
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


def _redis(value: object, path: str, real_default: bool = False, base: str = "") -> RedisConfig:
    section = _Section(path, value)
    host, port, db, username, password = "127.0.0.1", 6379, 0, "", ""
    rediss = False
    url_text = section.text("url")
    if url_text:
        url, port = _split_url(url_text, section.key("url"), "redis://[user:password@]host:port/db",
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
        batch=_batch(section, BatchSettings()),
        **tls,
    )
    section.done()
    if not config.channel and not config.list and not config.stream:
        raise ConfigError(path, "set 'list' (LPUSH), 'channel' (PUBLISH) and/or 'stream' (XADD), or leave redis out")
    if config.sentinels and not config.service_name:
        raise ConfigError(section.key("service_name"), "sentinels need the name of the service they watch")
    if config.sentinels and config.cluster:
        raise ConfigError(section.key("cluster"), "a Redis is either a cluster or watched by sentinels, not both")
    return config


def parse_routing_key(text: str, path: str) -> tuple[str, ...]:
    """A routing key template of record columns, ``cdr.${direction}``, parsed like a ``fields`` template."""
    parts = parse_template(text, path, IDENTIFIER, "column name", need_reference=False)
    if len(text.encode()) > 255:
        raise ConfigError(path, "a routing key is at most 255 bytes")
    return parts


def _rabbitmq(value: object, path: str) -> RabbitConfig:
    section = _Section(path, value)
    host, port, vhost, username, password = "127.0.0.1", 5672, "/", "guest", "guest"
    url_text = section.text("url")
    if url_text:
        url, port = _split_url(url_text, section.key("url"), "amqp://user:password@host:5672/vhost",
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
        batch=_batch(section, BatchSettings()),
    )
    section.done()
    return config


def _event_socket(value: object, path: str) -> EventSocketConfig:
    if value is None:
        return EventSocketConfig()
    section = _Section(path, value)
    config = EventSocketConfig(
        host=section.text("host", "127.0.0.1"),
        port=section.integer("port", 8021, 1, 65535),
        password=section.text("password", "ClueCon"),
    )
    section.done()
    return config


_USERINFO = re.compile(r"://[^/@:\s]*:([^@/\s]+)@")


def _userinfo_passwords(text: str) -> list[str]:
    """The password of every ``scheme://user:password@`` inside a text (a URL typed where a path goes)."""
    return [unquote(found) for found in _USERINFO.findall(text)]


def _document_passwords(value: object) -> list[str]:
    """Every password a raw document holds (``*password*`` keys, URL passwords), to keep out of errors."""
    found: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, str) and "password" in str(key).lower():
                found.append(item)
            elif isinstance(item, str) and "://" in item:
                found.extend(_userinfo_passwords(item))
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
    redis = (_redis(raw_redis, "cdr.redis", any(database.real for database in databases), base)
             if raw_redis is not None else None)
    raw_rabbitmq = section.get("rabbitmq")
    rabbitmq = _rabbitmq(raw_rabbitmq, "cdr.rabbitmq") if raw_rabbitmq is not None else None
    process_cdr = section.text("process_cdr", "true")
    if process_cdr not in PROCESS_CDR_VALUES:
        raise ConfigError(section.key("process_cdr"), f"one of {', '.join(PROCESS_CDR_VALUES)}")
    spool_dir = section.text("spool_dir") or os.path.join(paths.storage_dir, SPOOL_SUBDIR)
    config = CdrConfig(
        details=section.boolean("details", False),
        fields=parse_fields(section.get("fields") or [], "cdr.fields"),
        databases=databases,
        redis=redis,
        rabbitmq=rabbitmq,
        log=section.boolean("log", False),
        skip_variable=section.text("skip_variable", "fs_cdr_skip"),
        process_cdr=process_cdr,
        secret_variables=section.strings("secret_variables", DEFAULT_SECRET_VARIABLES),
        spool_dir=os.path.join(base, spool_dir),
        durable_window_ms=section.integer("durable_window_ms", 200, 20, 600_000),
        event_socket=_event_socket(section.get("event_socket"), "cdr.event_socket"),
        source=source,
    )
    section.done()
    names = [sink.name for sink in databases] + ([redis.name] if redis else []) + ([rabbitmq.name] if rabbitmq else [])
    for name in names:
        if names.count(name) > 1 or not IDENTIFIER.match(name):
            raise ConfigError("cdr.database", f"sink name {name!r} must be unique and letters, digits and _")
    if not names and not config.log:
        raise ConfigError("cdr", "no sink: configure 'database', 'redis', 'rabbitmq' or \"log\": true")
    return config


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
    values = [database.password for database in config.databases]
    values += [database.odbc for database in config.databases]
    if config.redis:
        values.append(config.redis.password)
    values.append(config.event_socket.password)
    if config.rabbitmq and config.rabbitmq.password != "guest":
        values.append(config.rabbitmq.password)
    return tuple(value for value in values if value)
