"""The ``database`` section: one SQL sink per object (or a list of them), for every dialect in this folder.

``dbtype`` picks the dialect (sqlite, mysql/mariadb, pgsql, sqlserver, oracle, odbc);
``connectionstring`` takes the seed's ``host,port@dbname`` (``tcp:host,port@dbname`` for SQL
Server), a URL whose query carries the TLS options (checked name by name), a SQLite file path, or
an ODBC connection string. The SQL sink itself is ``sql.py`` with one dialect module per database.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar, Iterable, Mapping
from urllib.parse import parse_qsl, unquote

from ..config import (
    USERINFO,
    BatchSettings,
    Paths,
    Section,
    SectionContext,
    mask_secrets,
    option_file,
    read_batch,
    split_url,
    userinfo_passwords,
)
from ..errors import ConfigError
from ..fields import IDENTIFIER
from .partitions import PERIODS

if TYPE_CHECKING:
    from ..config import CdrConfig
    from . import Target

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


@dataclass(frozen=True)
class DatabaseConfig:
    """One ``database`` object: a SQL sink."""

    key: ClassVar[str] = "database"

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
    #: "day", "week" or "month": the table is partitioned by that period of start_stamp (MySQL/MariaDB,
    #: PostgreSQL; partitions.py)
    partition: str = ""
    #: with monthly partitions: drop a month's partition once all of it is older than this; 0 keeps all
    retention_days: int = 0

    def describe(self) -> str:
        """Where this sink writes, safe for logs and status (no secrets)."""
        where = self._where()
        return mask_secrets(where, (self.password, *userinfo_passwords(where)))

    def _where(self) -> str:
        if self.dbtype == "sqlite":
            return f"sqlite:{self.path} table {self.table}"
        if self.odbc:
            return f"{self.dbtype}:odbc table {self.table}"
        where = f"{self.dbtype}://{self.host}:{self.port}/{self.database} table {self.table}"
        key = {"mysql": "ssl_mode", "postgresql": "sslmode"}.get(self.dbtype, "")
        mode = self.options.get(key) if key else None
        return f"{where} ({key} {mode})" if mode else where

    def secrets(self) -> tuple[str, ...]:
        return (self.password, self.odbc)



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
        if USERINFO.search(text):  # a server URL with credentials where a file path belongs
            raise ConfigError(path, "a SQLite connection string is a file path or sqlite:///path, not a URL "
                                    "with a user and password")
        return {"path": text}
    if dbtype in ("sqlserver", "odbc") and "=" in text and "://" not in text:
        return {"odbc": text}
    if not text:
        raise ConfigError(path, f"empty; a {dbtype} database needs 'host,port@dbname' or a URL")
    if "://" in text:
        url, port = split_url(text, path, f"{dbtype}://user:password@host:port/dbname")
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
            value = option_file(value, name, path, base)
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
    section = Section(path, value)
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
    partition = section.text("partition")
    if partition not in ("", *PERIODS):
        raise ConfigError(section.key("partition"),
                          f"partition is \"day\", \"week\", \"month\" or absent, got {partition!r}")
    if partition and dbtype not in ("mysql", "postgresql"):
        raise ConfigError(section.key("partition"), "partitions are made for MySQL/MariaDB and PostgreSQL "
                                                    f"only, not {dbtype}")
    retention_days = section.integer("retention_days", 0, 0, 100 * 366)
    if retention_days and not partition:
        raise ConfigError(section.key("retention_days"), "retention drops whole partitions: it needs "
                                                         "\"partition\": \"day\", \"week\" or \"month\"")
    config = DatabaseConfig(
        name=section.text("name", dbtype if index == 0 else f"{dbtype}{index}"),
        partition=partition,
        retention_days=retention_days,
        dbtype=dbtype,
        table=table,
        real=section.boolean("real", False),
        username=section.text("username") or url_username,
        password=section.text("password") or url_password,
        dialect=dialect,
        driver=section.text("driver"),
        # A database server takes two connections' batches at once (each writer's batch waits on the
        # server while the other's is encoded); one SQLite file takes one writer at a time.
        batch=read_batch(section, BatchSettings(workers=1 if dbtype == "sqlite" else 2)),
        **parts,
    )
    section.done()
    return config


def parse_section(value: object, path: str, context: SectionContext) -> tuple[DatabaseConfig, ...]:
    """One object, or a list of them (``cdr.database[0]``, ...)."""
    if isinstance(value, list):
        return tuple(_database(item, f"{path}[{index}]", context.paths, index, context.base)
                     for index, item in enumerate(value))
    return (_database(value, path, context.paths, 0, context.base),)


def target(database: DatabaseConfig, config: CdrConfig) -> Target:
    from ..schema import table_columns
    from . import Sink, Target
    from .sql import SqlSink, dialect_for

    dialect = dialect_for(database.dbtype, database)
    if dialect is None:
        raise ConfigError("cdr.database.dbtype", f"{database.dbtype} is not supported by this build")
    columns = table_columns(config)
    batch = database.batch
    if config.calls_table and batch.workers > 1:
        # fs_cdr/calls.py: two writers recomputing one call at once would each miss the other's legs
        batch = replace(batch, workers=1)

    def open_sql() -> Sink:
        return SqlSink(dialect, database, columns, calls_table=config.calls_table)

    return Target(database.name, database.describe(), open_sql, batch, database.real)
