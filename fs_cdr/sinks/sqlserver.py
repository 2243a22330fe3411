"""SQL Server through pyodbc: Microsoft's ODBC Driver 18 (or 17) or FreeTDS, a MERGE upsert, and each
batch sent as one parameter array where the driver does that well.

Connection: the seed's ``tcp:host,port@dbname`` (or a URL) becomes a connection string for the
driver that ``driver`` names — ``ODBC Driver 18 for SQL Server`` when unset, or FreeTDS (any name
containing "FreeTDS", or the path of ``libtdsodbc.so``). A connectionstring holding ``=`` is an ODBC
connection string or ``DSN=name`` and is used as written. Driver 18 encrypts and checks the server's
certificate by default; a test server with a self-signed one needs ``TrustServerCertificate=yes`` in
the URL's query or in the connection string.

Upsert: ``MERGE ... WITH (HOLDLOCK)``. Without the hint, two sessions merging the same new uuid can
both find no row and both insert (a primary key violation); HOLDLOCK takes a key-range lock on the
looked-up key until the end of the transaction, so the second waits and then updates.

Batching: one MERGE per row, with the rows of a batch bound as a parameter array
(``fast_executemany``): one round trip per batch, and SQL Server's limit of 2,100 parameters per
statement concerns only the columns of one row. Only Microsoft's driver gets this, the one pyodbc's
``fast_executemany`` was built for: with long values psqlODBC crashes on such arrays and MariaDB's
driver fails (both seen here), and FreeTDS has crashed on them (pyodbc issue 459). Other drivers run
the same statement once per row.
"""

from __future__ import annotations

from typing import Any, Sequence

from ..errors import ConfigError, SinkError
from ..schema import Column, Index
from . import odbc
from .database import DatabaseConfig
from .sql import Dialect

DEFAULT_DRIVER = "ODBC Driver 18 for SQL Server"
#: SQL Server refuses a statement with more parameters than this; a row of the widest possible table
#: (1,024 columns) stays well below it.
MAX_PARAMETERS = 2100
#: FreeTDS speaks TDS 7.4 (SQL Server 2012 and later): NVARCHAR(MAX) and UTF-16 need at least 7.2.
FREETDS_DEFAULTS = (("TDS_Version", "7.4"), ("ClientCharset", "UTF-8"))


def is_freetds(driver: str) -> bool:
    name = driver.lower()
    return "freetds" in name or "libtdsodbc" in name


def supports_parameter_arrays(driver_file: str) -> bool:
    """Whether the connected driver (``SQL_DRIVER_NAME``: libmsodbcsql-18.3.so.2.1, msodbcsql18.dll,
    libtdsodbc.so) is Microsoft's, the one pyodbc's ``fast_executemany`` was built and tested for."""
    return "msodbcsql" in driver_file.lower()


def connection_string(config: DatabaseConfig, timeout_s: float) -> str:
    """The ODBC connection string for a sqlserver target (``odbc.with_credentials`` for a configured one)."""
    if config.odbc:
        return odbc.with_credentials(config.odbc, config.driver, config.username, config.password)
    driver = config.driver or DEFAULT_DRIVER
    if is_freetds(driver):
        pairs = [("Driver", driver), ("Server", config.host), ("Port", str(config.port)),
                 ("Database", config.database), *FREETDS_DEFAULTS]
    else:
        # "tcp:" skips the named-pipe and shared-memory attempts; the port follows a comma.
        pairs = [("Driver", driver), ("Server", f"tcp:{config.host},{config.port}"), ("Database", config.database),
                 ("APP", "fs_cdr")]
    if config.username:
        pairs.append(("UID", config.username))
    if config.password:
        pairs.append(("PWD", config.password))
    return odbc.connection_string(odbc.merged(pairs, config.options))


def input_sizes(kinds: Sequence[str]) -> list[tuple[int, int, int]]:
    """``setinputsizes`` for an upsert's parameters: (SQL type, column size, decimal digits) per kind.

    Sizes are in UTF-16 code units, as NVARCHAR's are, and pyodbc's buffers too: twice the
    builder's limit in code points (``schema.TEXT_LIMIT``, ``SHORT_LIMIT``), since a character
    outside the BMP takes two. Size 0 is NVARCHAR(MAX): pyodbc streams those values."""
    import pyodbc

    by_kind = {
        "key": (pyodbc.SQL_WVARCHAR, 128, 0),
        "short": (pyodbc.SQL_WVARCHAR, 128, 0),
        "text": (pyodbc.SQL_WVARCHAR, 510, 0),
        "long": (pyodbc.SQL_WVARCHAR, 0, 0),
        "json": (pyodbc.SQL_WVARCHAR, 0, 0),
        "int": (pyodbc.SQL_BIGINT, 19, 0),
        "stamp": (pyodbc.SQL_WVARCHAR, 32, 0),  # ISO text: converted by the server, whatever its language
        "number": (pyodbc.SQL_DOUBLE, 15, 0),
    }
    return [by_kind[kind] for kind in kinds]


class ArrayCursor:
    """A pyodbc cursor whose upserts go out as parameter arrays, with declared parameter types.

    Declared, not described: the driver describes parameters with sp_describe_undeclared_parameters,
    which cannot always type the parameters of a VALUES row in ``MERGE ... USING``, and pyodbc's
    fallback for an undescribed parameter is VARCHAR(255) — which would cut ``details`` and turn
    Unicode into the server's code page. Every other statement runs as pyodbc runs it."""

    def __init__(self, cursor: Any, statements: dict[str, tuple[str, ...]]) -> None:
        self._cursor = cursor
        self._statements = statements

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        rows = list(rows)
        if not rows:
            return
        names = self._statements.get(sql)
        if names is not None:
            self._cursor.fast_executemany = True
            self._cursor.setinputsizes(input_sizes(odbc.parameter_kinds(names, rows)))
        self._cursor.executemany(sql, rows)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)


class ArrayConnection:
    """A pyodbc connection whose cursors are :class:`ArrayCursor`."""

    def __init__(self, connection: Any, statements: dict[str, tuple[str, ...]]) -> None:
        self._connection = connection
        self._statements = statements

    def cursor(self) -> ArrayCursor:
        return ArrayCursor(self._connection.cursor(), self._statements)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)


class SqlServer(Dialect):
    name = "sqlserver"
    placeholder = "?"
    # NVARCHAR: Unicode whatever the database's collation. Lengths are twice the builder's limits
    # (see ``input_sizes``), so a caller name of 255 emoji fits as it does everywhere else.
    types = {
        "key": "NVARCHAR(128) NOT NULL",
        "short": "NVARCHAR(128)",
        "text": "NVARCHAR(510)",
        "long": "NVARCHAR(MAX)",
        "int": "BIGINT",
        "number": "FLOAT",
        "json": "NVARCHAR(MAX)",
        "stamp": "DATETIME2(3)",
    }
    clustered = True
    id_type = "BIGINT IDENTITY(1,1) NOT NULL"

    def key_lines(self, columns: Sequence[Column], partitioned: bool = False) -> list[str]:
        lines = super().key_lines(columns, partitioned)
        # say which index holds the rows: SQL Server clusters the primary key unless told otherwise
        return [line.replace("PRIMARY KEY (", "PRIMARY KEY CLUSTERED (").replace("UNIQUE (", "UNIQUE NONCLUSTERED (")
                for line in lines]

    def create_index_online(self, table: str, index: Index) -> str:
        # ONLINE = ON: Enterprise edition (and Azure SQL); other editions refuse it and need the plain form
        return self.create_index(table, index) + " WITH (ONLINE = ON)"

    def __init__(self) -> None:
        #: Upsert statement -> its column names, for the parameter types of :class:`ArrayCursor`.
        self.statements: dict[str, tuple[str, ...]] = {}

    def quote(self, identifier: str) -> str:
        # Validated identifiers never hold "]", so brackets need no escaping.
        return f"[{identifier}]"

    def upsert(self, table: str, names: Sequence[str]) -> str:
        if len(names) >= MAX_PARAMETERS:
            raise ConfigError("cdr.fields", f"{len(names)} columns: a SQL Server statement takes at most "
                                            f"{MAX_PARAMETERS - 1} parameters")
        quote = self.quote
        columns = ", ".join(quote(name) for name in names)
        values = ", ".join("?" for _ in names)
        updates = ", ".join(f"{quote(name)} = s.{quote(name)}" for name in names if name != "uuid")
        inserted = ", ".join(f"s.{quote(name)}" for name in names)
        statement = (
            f"MERGE INTO {quote(table)} WITH (HOLDLOCK) AS t "
            f"USING (VALUES ({values})) AS s ({columns}) "
            f"ON t.{quote('uuid')} = s.{quote('uuid')} "
            + (f"WHEN MATCHED{' AND ' + self.fresher('t', 's') if 'event_seq' in names else ''} "
               f"THEN UPDATE SET {updates} " if updates else "")
            + f"WHEN NOT MATCHED THEN INSERT ({columns}) VALUES ({inserted});"  # MERGE must end with ';'
        )
        self.statements[statement] = tuple(names)
        return statement

    def columns_query(self, table: str) -> tuple[str, tuple[Any, ...]]:
        return (
            "SELECT COLUMN_NAME FROM INFORMATION_SCHEMA.COLUMNS WHERE TABLE_SCHEMA = SCHEMA_NAME() AND TABLE_NAME = ?",
            (table,),
        )

    def connect(self, config: DatabaseConfig, timeout_s: float) -> Any:
        import pyodbc

        connection = odbc.connect(connection_string(config, timeout_s), timeout_s)
        if supports_parameter_arrays(str(connection.getinfo(pyodbc.SQL_DRIVER_NAME))):
            return ArrayConnection(connection, self.statements)
        return connection

    def classify(self, error: BaseException) -> SinkError:
        # Microsoft's driver and FreeTDS map SQL Server's errors to precise SQLSTATEs: 8152/2628
        # (truncation) 22001, 245 (conversion) 22018, 515 (NULL) and 2627 (duplicate key) 23000,
        # 1205 (deadlock victim) 40001.
        return odbc.classify(error)
