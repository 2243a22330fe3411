"""ODBC through pyodbc: connection strings, connecting, and driver errors sorted by SQLSTATE.

Two kinds of target go through here. dbtype ``sqlserver`` always does (``sqlserver.py`` builds its
connection strings and sends batches as parameter arrays). dbtype ``odbc`` reaches any other database
through a DSN or a connection string: :class:`OdbcDialect` takes the SQL of the dialect that
``cdr.database.dialect`` names (mysql, postgresql, oracle, sqlite — sqlserver is ``sqlserver.py``
itself) and runs it through pyodbc with ODBC's ``?`` markers.

One classification serves every driver because ODBC reports a SQLSTATE: class 22 (data exception)
and 23 (integrity constraint) are the record's fault; everything else — 08 (connection), 40
(deadlock, serialization), HYT00 (timeout), 57 (statement cancelled), 42 (a table dropped under us)
— may succeed later. Where a driver reports a data error with a vague SQLSTATE (MySQL's 1366 is
HY000, 1265 is 01000), the dialect's native error codes decide.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping, Optional, Sequence

from ..errors import ConfigError, RejectedError, RetriableError, SinkError, TransientError
from ..schema import DETAILS, STANDARD_COLUMNS, Column, Index
from .database import DEFAULT_PORTS, DatabaseConfig
from .sql import TRANSIENT_STATES, Dialect

#: A SQLSTATE: five characters, digits and capitals (22001, 08S01, HYT00).
_SQLSTATE = re.compile(r"^[0-9A-Z]{5}$")
#: pyodbc appends "(native error) (ODBC function)" to the first diagnostic record's message.
_NATIVE = re.compile(r"\((-?\d+)\) \(SQL[A-Za-z]+\)")
#: SQLSTATEs outside classes 22 and 23 that still mean the data was refused.
_REJECTED_STATES = frozenset({"40002"})  # transaction rolled back: integrity constraint at commit
#: What makes a connection-string value need braces: the separators, and spaces a driver would trim.
#: (Not every character ODBC reserves: Microsoft's own examples write Server=tcp:host,1433 bare.)
_RESERVED = re.compile(r"[;{}=]|^\s|\s$")
#: A value longer than this is sent whole instead of in SQLPutData pieces (see ``OdbcDialect.connect``).
_WHOLE_VALUES = 1 << 30
#: Column kind of every standard column (a configured field is "long" or "number": see below).
_STANDARD_KINDS = {column.name: column.kind for column in STANDARD_COLUMNS + (DETAILS,)}


# -- connection strings ---------------------------------------------------------------------------

def odbc_value(value: str) -> str:
    """One connection-string value, in braces when it holds ODBC's separators (a ';' in a password)."""
    if _RESERVED.search(value):
        return "{" + value.replace("}", "}}") + "}"
    return value


def connection_string(pairs: Iterable[tuple[str, str]]) -> str:
    """``key=value;...`` with every value escaped; the driver's name is always braced."""
    parts = []
    for key, value in pairs:
        text = "{" + value.replace("}", "}}") + "}" if key.lower() == "driver" else odbc_value(value)
        parts.append(f"{key}={text}")
    return ";".join(parts)


def connection_keys(text: str) -> set[str]:
    """The keys (lower case) set in a connection string, skipping braced values."""
    keys: set[str] = set()
    position, length = 0, len(text)
    while position < length:
        equals = text.find("=", position)
        if equals < 0:
            break
        key = text[position:equals].strip().lower()
        if key:
            keys.add(key)
        position = equals + 1
        if text[position:position + 1] == "{":
            # A braced value ends at a '}' that is not doubled.
            position += 1
            while position < length:
                if text[position] == "}":
                    if text[position + 1:position + 2] == "}":
                        position += 2
                        continue
                    position += 1
                    break
                position += 1
        end = text.find(";", position)
        position = length if end < 0 else end + 1
    return keys


def merged(pairs: Sequence[tuple[str, str]], options: Mapping[str, str]) -> list[tuple[str, str]]:
    """``pairs`` with ``options`` (the URL's query, for the driver) added; an option replaces the
    default of the same key (keys are case-insensitive in ODBC)."""
    overrides = {key.lower(): (key, value) for key, value in options.items()}
    result = [overrides.pop(key.lower(), (key, value)) for key, value in pairs]
    result.extend(overrides.values())
    return result


def with_credentials(text: str, driver: str, username: str, password: str) -> str:
    """A configured ODBC connection string or DSN, completed from ``driver``, ``username`` and
    ``password`` where it does not set them itself (the string wins: it is the more specific)."""
    keys = connection_keys(text)
    text = text.strip().rstrip(";")
    extra: list[tuple[str, str]] = []
    if driver and not keys & {"driver", "dsn", "filedsn"}:
        text = connection_string([("Driver", driver)]) + ";" + text
    if username and not keys & {"uid", "user", "username"}:
        extra.append(("UID", username))
    if password and not keys & {"pwd", "password"}:
        extra.append(("PWD", password))
    return text + (";" + connection_string(extra) if extra else "")


def _seconds(timeout_s: float) -> int:
    return max(1, int(round(timeout_s)))


def built_connection_string(config: DatabaseConfig, dialect: str, timeout_s: float) -> str:
    """The connection string for a ``host,port@dbname`` (or URL) target of dbtype odbc, in the
    keywords of the driver family the dialect implies, with that driver's timeouts."""
    seconds, milliseconds = _seconds(timeout_s), max(1000, int(timeout_s * 1000))
    # config.py knows no default port for dbtype odbc; the dialect names the database that listens.
    port = str(config.port or DEFAULT_PORTS.get(dialect, 0))
    pairs: list[tuple[str, str]] = [("Driver", config.driver)]
    if dialect == "postgresql":  # psqlODBC
        pairs += [("Server", config.host), ("Port", port), ("Database", config.database),
                  # Roll back the whole transaction on an error, as SqlSink does anyway; psqlODBC's
                  # default wraps every statement in a savepoint, which halves executemany's speed.
                  ("Protocol", "7.4-1"),
                  # libpq options: a server that stops answering is noticed (as in postgres.py) ...
                  ("pqopt", f"connect_timeout={seconds} keepalives=1 keepalives_idle={seconds} "
                            f"keepalives_interval=1 keepalives_count=3 tcp_user_timeout={milliseconds} "
                            "application_name=fs_cdr"),
                  # ... and a statement that runs too long is cancelled: psqlODBC refuses the ODBC
                  # query-timeout attribute (see ``connect``).
                  ("ConnSettings", f"SET statement_timeout = {milliseconds}")]
    elif dialect == "mysql":  # MariaDB Connector/ODBC's keywords
        pairs += [("Server", config.host), ("Port", port), ("Database", config.database),
                  ("CHARSET", "utf8mb4"), ("CONN_TIMEOUT", str(seconds)),
                  # MariaDB's driver ignores the ODBC query timeout for a stalled server; the socket
                  # timeouts are what end a write to a server that stopped answering.
                  ("READ_TIMEOUT", str(seconds)), ("WRITE_TIMEOUT", str(seconds))]
    elif dialect == "oracle":  # Oracle's ODBC driver: DBQ is an Easy Connect string
        pairs += [("DBQ", f"{config.host}:{port}/{config.database}")]
    else:
        raise ValueError(f"no built connection strings for dialect {dialect}")
    if config.username:
        pairs.append(("UID", config.username))
    if config.password:
        pairs.append(("PWD", config.password))
    return connection_string(merged(pairs, config.options))


# -- connecting and errors ------------------------------------------------------------------------

def connect(text: str, timeout_s: float) -> Any:
    """A pyodbc connection in manual-commit mode, with login and query timeouts where the driver
    takes them."""
    import pyodbc

    seconds = _seconds(timeout_s)
    connection = pyodbc.connect(text, timeout=seconds, autocommit=False)
    try:
        connection.timeout = seconds
    except pyodbc.Error:
        # pyodbc sets SQL_ATTR_CONNECTION_TIMEOUT with the per-statement query timeout, and some
        # drivers refuse it (psqlODBC: "Couldn't set unsupported connect attribute 113"). Those get
        # their timeouts from the connection string (``built_connection_string``) instead.
        pass
    return connection


def sqlstate(error: BaseException) -> str:
    """The SQLSTATE of a pyodbc error. pyodbc puts it first for a driver's error and second for its
    own (``('String data, right truncation: ...', 'HY000')``)."""
    for argument in getattr(error, "args", ())[:2]:
        if isinstance(argument, str) and _SQLSTATE.match(argument):
            return argument
    return ""


def native_code(error: BaseException) -> Optional[int]:
    """The driver's native error number of a pyodbc error (MySQL's 1406, Oracle's 12899), if any."""
    match = _NATIVE.search(str(error))
    return int(match.group(1)) if match else None


def classify(error: BaseException, rejected_codes: frozenset[int] = frozenset()) -> SinkError:
    """Rejected when the SQLSTATE (or the dialect's native code) says the data is at fault."""
    state = sqlstate(error)
    if state[:2] in ("22", "23") or state in _REJECTED_STATES or native_code(error) in rejected_codes:
        return RejectedError(str(error))
    if "String data, right truncation" in str(error):
        # pyodbc's own check, before anything is sent: a value longer than its declared parameter.
        return RejectedError(str(error))
    if state in TRANSIENT_STATES:
        return TransientError(str(error))
    return RetriableError(str(error))


# -- parameter kinds --------------------------------------------------------------------------------

def parameter_kinds(names: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """The column kind (``schema.Column``) behind each parameter of an upsert of ``names``.

    For the dialects that declare parameter types instead of letting the driver guess them (SQL
    Server's parameter arrays, Oracle's ``setinputsizes``). Standard columns are known by name; a
    configured field is text (``long``) or a number (``number``), which the dialect is not told, so
    its values in this batch decide — a field column of only NULLs is sent as text, which every
    database converts to a NULL number too."""
    kinds = []
    for position, name in enumerate(names):
        kind = _STANDARD_KINDS.get(name)
        if kind is None:
            kind = "long"
            for row in rows:
                value = row[position]
                if value is not None:
                    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
                    kind = "number" if is_number else "long"
                    break
        kinds.append(kind)
    return kinds


# -- dbtype odbc ---------------------------------------------------------------------------------

def to_qmark(sql: str, placeholder: str) -> str:
    """A dialect's statement with ODBC's ``?`` markers instead of its own (``%s``, ``:1``).

    Plain text substitution is safe: the text holds only SQL keywords and names validated against
    ``fields.IDENTIFIER`` (letters, digits, ``_``), so the dialect's markers are the only ``%`` and
    ``:`` in it — which is checked, not assumed."""
    if placeholder == "?":
        return sql
    if placeholder == "%s":
        if sql.count("%") != sql.count("%s"):
            raise ValueError(f"unexpected % in {sql[:80]!r}")
        return sql.replace("%s", "?")
    if placeholder.startswith(":"):
        numbers = [int(number) for number in re.findall(r":(\d+)", sql)]
        if sql.count(":") != len(numbers) or numbers != list(range(1, len(numbers) + 1)):
            raise ValueError(f"markers out of order in {sql[:80]!r}")
        return re.sub(r":\d+", "?", sql)
    raise ValueError(f"unknown placeholder {placeholder!r}")


class OdbcDialect(Dialect):
    """dbtype odbc: the SQL of ``sql`` (another dialect), the connection of pyodbc."""

    placeholder = "?"

    def __init__(self, sql: Dialect, config: Optional[DatabaseConfig] = None,
                 rejected_codes: frozenset[int] = frozenset()) -> None:
        self.sql = sql
        self.name = sql.name
        self.types = sql.types
        self.rejected_codes = rejected_codes
        if config is not None and not config.odbc:
            where = f"cdr.database ({config.name})"
            if sql.name == "sqlite":
                raise ConfigError(f"{where}.connectionstring", "SQLite over ODBC needs a connection string: "
                                                               "Driver=SQLite3;Database=/path/cdr.sqlite")
            if not config.driver:
                raise ConfigError(f"{where}.driver",
                                  "host,port@dbname over ODBC needs the ODBC driver's name (odbcinst -q -d lists "
                                  "the installed ones); or give a full connection string or DSN=name")

    def quote(self, identifier: str) -> str:
        return self.sql.quote(identifier)

    def create_table(self, table: str, columns: Sequence[Column], partitions: Any = None) -> str:
        return self.sql.create_table(table, columns, partitions)

    def add_column(self, table: str, column: Column) -> str:
        return self.sql.add_column(table, column)

    def key_lines(self, columns: Sequence[Column], partitioned: bool = False) -> list[str]:
        return self.sql.key_lines(columns, partitioned)

    def create_index(self, table: str, index: Index) -> str:
        return self.sql.create_index(table, index)

    def create_index_online(self, table: str, index: Index) -> str:
        return self.sql.create_index_online(table, index)

    def indexes_query(self, table: str) -> Optional[tuple[str, tuple[Any, ...]]]:
        query = self.sql.indexes_query(table)
        return None if query is None else (to_qmark(query[0], self.sql.placeholder), query[1])

    def rebuild_statements(self, connection: Any, table: str) -> list[str]:
        return []  # not looked up through ODBC: `fs-cdr schema --dbtype mysql` prints the table's new form

    def upsert(self, table: str, names: Sequence[str]) -> str:
        return to_qmark(self.sql.upsert(table, names), self.sql.placeholder)

    def columns_query(self, table: str) -> tuple[str, tuple[Any, ...]]:
        sql, parameters = self.sql.columns_query(table)
        return to_qmark(sql, self.sql.placeholder), parameters

    def connection_string(self, config: DatabaseConfig, timeout_s: float) -> str:
        if config.odbc:
            return with_credentials(config.odbc, config.driver, config.username, config.password)
        return built_connection_string(config, self.sql.name, timeout_s)

    def connect(self, config: DatabaseConfig, timeout_s: float) -> Any:
        connection = connect(self.connection_string(config, timeout_s), timeout_s)
        if self.sql.name == "mysql":
            # MariaDB Connector/ODBC 3.1 garbles or refuses (HY001, "Memory allocation error") a
            # wide-character value that pyodbc sends in SQLPutData pieces, which it does for every
            # value longer than the driver's VARCHAR limit: any ``details``, or a few hundred accented
            # characters. Sending every value whole keeps the driver off that code path.
            connection.maxwrite = _WHOLE_VALUES
        return connection

    def classify(self, error: BaseException) -> SinkError:
        return classify(error, self.rejected_codes)
