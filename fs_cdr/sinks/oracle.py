"""Oracle through python-oracledb: thin mode by default (no Oracle client libraries), a MERGE upsert,
CLOB details, and batches with per-row errors (``batcherrors``).

Connection: the seed's ``host,port@service`` or a URL (``oracle://user:pass@host:1521/service``,
``tcp://host:1521/service``: Easy Connect with a protocol) becomes the Easy Connect string
``host:port/service``; a URL's query is passed on as Easy Connect parameters
(``?transport_connect_timeout=3&expire_time=2``), and ``protocol=tcps`` is the protocol (the
configuration keeps no URL scheme). ``driver``: empty or ``thin``; ``thick`` or
``thick:/path/to/instantclient`` loads Oracle's client libraries (once per process, before any
connection).

Names: every table and column name is upper-cased and quoted ("CDR", "UUID", "BILLSEC"): the name an
unquoted identifier gets anyway, so the table reads as ``select billsec from cdr``, while reserved
words (a field called ``number`` or ``level``) still work. CREATE TABLE, MERGE and the column check
on USER_TAB_COLUMNS all use that one spelling; a table someone created with quoted lower-case names
is a different table to Oracle, and to fs_cdr.

Types: VARCHAR2 with CHAR length semantics (255 characters, not bytes — the builder's limit), CLOB for
``details`` and text fields, NUMBER(19) for seconds, BINARY_DOUBLE for ``number:`` fields. The
database character set should be AL32UTF8 (the default since 12.2) for any caller name to survive.
Oracle stores the empty string as NULL.

A partial batch: ``executemany(..., batcherrors=True)`` applies every row it can and reports the
others. When all of those are the data's fault, the good rows are committed at once and the batch
fails with :class:`PartialBatch`, a RejectedError. The shared writer then retries that batch one
record at a time (as it does for every rejected batch); this connection remembers the rows it has
just committed and acknowledges them without a round trip, so only the refused rows go to the
database again — each gets its own verdict and error, and only those are set aside. Nothing is
written twice, and the writer needs no Oracle-specific path. A batch with any other error (a
deadlock, a lost connection) is rolled back and retried whole.
"""

from __future__ import annotations

import threading
from typing import Any, Optional, Sequence
from urllib.parse import urlencode

from ..errors import ConfigError, RejectedError, RetriableError, SinkError, TransientError
from ..schema import STANDARD_COLUMNS, Index
from .database import DatabaseConfig
from .odbc import parameter_kinds
from .sql import Dialect

#: 'YYYY-MM-DD HH24:MI:SS.FF3', the text of a record's stamp (record.stamp)
STAMP_FORMAT = "'YYYY-MM-DD HH24' || CHR(58) || 'MI' || CHR(58) || 'SS.FF3'"
_STAMPS = frozenset(column.name for column in STANDARD_COLUMNS if column.kind == "stamp")

#: Oracle errors that are the record's fault.
REJECTED_CODES = frozenset(
    {
        1,  # unique constraint violated (one not solved by retrying the MERGE once: see _Cursor)
        1400,  # cannot insert NULL
        1401,  # inserted value too large for column
        1407,  # cannot update to NULL
        1438,  # value larger than specified precision
        1461,  # can bind a LONG value only for insert into a LONG column
        1722,  # invalid number
        2290,  # check constraint violated
        2291,  # parent key not found
        2292,  # child record found
        12899,  # value too large for column
        22835,  # buffer too small for CLOB to CHAR conversion
    }
)
#: Oracle's limit for a VARCHAR2 value in SQL (without MAX_STRING_SIZE=EXTENDED), in bytes.
VARCHAR_BYTES = 4000

_client_lock = threading.Lock()
_client_initialized = False


def client_mode(driver: str, key: str = "cdr.database.driver") -> tuple[bool, Optional[str]]:
    """``driver`` as (thick, lib_dir): "" or "thin"; "thick"; "thick:/path/to/instantclient"."""
    text = driver.strip()
    if text.lower() in ("", "thin"):
        return False, None
    if text.lower() == "thick":
        return True, None
    if text.lower().startswith("thick:") and text[len("thick:"):].strip():
        return True, text[len("thick:"):].strip()
    raise ConfigError(key, "Oracle's driver is 'thin' (default), 'thick' or 'thick:/path/to/instantclient', "
                           f"got {driver!r}")


def _use_thick(lib_dir: Optional[str]) -> None:
    """Load Oracle's client libraries, once per process: python-oracledb allows it only before the
    first connection, and only once."""
    global _client_initialized
    import oracledb

    with _client_lock:
        if not _client_initialized:
            oracledb.init_oracle_client(lib_dir=lib_dir)
            _client_initialized = True


def easy_connect(config: DatabaseConfig) -> str:
    """``[protocol://]host:port/service[?parameters]`` from the configured parts."""
    options = dict(config.options)
    protocol = options.pop("protocol", "")
    host = f"[{config.host}]" if ":" in config.host else config.host  # an IPv6 address
    text = f"{host}:{config.port}/{config.database}"
    if protocol:
        text = f"{protocol}://{text}"
    if options:
        text += "?" + urlencode(sorted(options.items()))
    return text


def error_code(error: Any) -> int:
    """The ORA number of an oracledb exception or of one of its batch errors (0 for DPY errors)."""
    detail = error.args[0] if isinstance(error, BaseException) and error.args else error
    code = getattr(detail, "code", 0)
    return code if isinstance(code, int) else 0


def is_rejection(error: Any) -> bool:
    """Whether an oracledb exception or batch error means the data was refused."""
    if error_code(error) in REJECTED_CODES:
        return True
    try:
        import oracledb
    except ImportError:  # not installed: the error being classified is that one
        return False
    if isinstance(error, BaseException):
        return isinstance(error, (oracledb.IntegrityError, oracledb.DataError))
    # A batch error (oracledb's _Error) carries the exception class it would be raised as.
    return getattr(error, "exc_type", None) in (oracledb.IntegrityError, oracledb.DataError)


def input_types(kinds: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[Any]:
    """``setinputsizes`` for an upsert's parameters.

    Declared for every column, because oracledb otherwise types a column by the first row's value
    and a NULL there says nothing. Text longer than Oracle's 4,000-byte VARCHAR2 goes as a CLOB:
    bound as a plain string it would be a LONG, which Oracle refuses in MERGE's ``USING (SELECT ...)``
    (ORA-01461). A CLOB bind costs a temporary LOB per value, so only batches that need it pay."""
    import oracledb

    types: list[Any] = []
    for position, kind in enumerate(kinds):
        if kind in ("int", "number"):
            types.append(oracledb.DB_TYPE_NUMBER)
        elif kind in ("long", "json") and any(_longer_than_varchar(row[position]) for row in rows):
            types.append(oracledb.DB_TYPE_CLOB)
        else:
            types.append(oracledb.DB_TYPE_VARCHAR)
    return types


def _longer_than_varchar(value: Any) -> bool:
    # A character is at most 4 bytes in UTF-8: shorter strings need no encoding to be sure.
    return isinstance(value, str) and len(value) * 4 > VARCHAR_BYTES and len(value.encode("utf-8")) > VARCHAR_BYTES


class PartialBatch(Exception):
    """Some rows of a batch were refused; the rest are committed (see the module's docstring)."""

    def __init__(self, refused: Sequence[tuple[int, str]], total: int) -> None:
        shown = "; ".join(f"row {offset}: {message}" for offset, message in refused[:3])
        more = f"; and {len(refused) - 3} more" if len(refused) > 3 else ""
        super().__init__(f"{len(refused)} of {total} rows refused, the others committed: {shown}{more}")
        self.refused = tuple(refused)


class _Cursor:
    """An oracledb cursor whose upserts get declared types, batch errors and the MERGE retry."""

    def __init__(self, owner: "OracleConnection", cursor: Any) -> None:
        self._owner = owner
        self._cursor = cursor

    def executemany(self, sql: str, given: Sequence[Sequence[Any]]) -> None:
        rows = [tuple(row) for row in given]
        names = self._owner.statements.get(sql)
        if names is None or not rows:
            if rows:
                self._cursor.executemany(sql, rows)
            return
        owner = self._owner
        if len(rows) == 1:
            if owner.settle(sql, rows[0]):
                return  # committed with the partial batch this single-row retry comes from
            self._merge_one(sql, names, rows)
            return
        owner.forget()
        self._cursor.setinputsizes(*input_types(parameter_kinds(names, rows), rows))
        self._cursor.executemany(sql, rows, batcherrors=True)
        errors = self._cursor.getbatcherrors()
        if not errors:
            return
        for error in errors:
            if not is_rejection(error):
                raise error.exc_type(error)  # rolled back and retried whole by SqlSink and the writer
        refused = {error.offset for error in errors}
        owner.commit_ahead(sql, [row for offset, row in enumerate(rows) if offset not in refused])
        raise PartialBatch(sorted((error.offset, str(error.message)) for error in errors), len(rows))

    def _merge_one(self, sql: str, names: Sequence[str], rows: list[tuple[Any, ...]]) -> None:
        import oracledb

        types = input_types(parameter_kinds(names, rows), rows)
        self._cursor.setinputsizes(*types)
        try:
            self._cursor.executemany(sql, rows)
        except oracledb.IntegrityError as error:
            if error_code(error) != 1:
                raise
            # MERGE is not atomic against a concurrent insert of the same key (a spool replay and a
            # live write of one record, two FreeSWITCHes): both can find no row, and the second insert
            # fails with ORA-00001 once the first commits. The row exists now, so the same MERGE
            # updates it; a second ORA-00001 is a different unique key, and the record's fault.
            self._cursor.setinputsizes(*types)
            self._cursor.executemany(sql, rows)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cursor, name)


class OracleConnection:
    """An oracledb connection that remembers the rows a partial batch committed ahead."""

    def __init__(self, connection: Any, statements: dict[str, tuple[str, ...]]) -> None:
        self._connection = connection
        self.statements = statements
        self._settled: dict[tuple[str, tuple[Any, ...]], int] = {}

    def cursor(self) -> _Cursor:
        return _Cursor(self, self._connection.cursor())

    def commit_ahead(self, sql: str, rows: Sequence[tuple[Any, ...]]) -> None:
        self._connection.commit()
        for row in rows:
            key = (sql, row)
            self._settled[key] = self._settled.get(key, 0) + 1

    def settle(self, sql: str, row: tuple[Any, ...]) -> bool:
        """True (once) when ``row`` was committed ahead by the last partial batch."""
        key = (sql, row)
        count = self._settled.get(key, 0)
        if not count:
            return False
        if count == 1:
            del self._settled[key]
        else:
            self._settled[key] = count - 1
        return True

    def forget(self) -> None:
        """A new batch: whatever the last partial batch left is no longer being retried."""
        self._settled.clear()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)


class Oracle(Dialect):
    name = "oracle"
    #: python-oracledb's numeric style. A statement may repeat ":1" for several values: in SQL (not
    #: PL/SQL) each occurrence is bound by position.
    placeholder = ":1"
    types = {
        "key": "VARCHAR2(64 CHAR) NOT NULL",
        "short": "VARCHAR2(64 CHAR)",
        "text": "VARCHAR2(255 CHAR)",
        "long": "CLOB",
        "int": "NUMBER(19)",
        "number": "BINARY_DOUBLE",
        "json": "CLOB",
        "stamp": "TIMESTAMP(3)",
    }

    def __init__(self, config: Optional[DatabaseConfig] = None) -> None:
        key = f"cdr.database ({config.name}).driver" if config is not None else "cdr.database.driver"
        self.thick, self.lib_dir = client_mode(config.driver if config is not None else "", key)
        #: Upsert statement -> its column names, for the bind types of :class:`_Cursor`.
        self.statements: dict[str, tuple[str, ...]] = {}

    def quote(self, identifier: str) -> str:
        return f'"{identifier.upper()}"'

    def upsert(self, table: str, names: Sequence[str]) -> str:
        quote = self.quote
        # a stamp is bound as its text and converted here: a plain string would be read with the
        # session's NLS_TIMESTAMP_FORMAT, whatever that is (the format's colons are CHR(58), so that
        # the statement's only colons are its bind markers, which dbtype odbc rewrites)
        selected = ", ".join(
            (f"TO_TIMESTAMP(:{position}, {STAMP_FORMAT})" if name in _STAMPS else f":{position}")
            + f" AS {quote(name)}" for position, name in enumerate(names, 1))
        updates = ", ".join(f"t.{quote(name)} = s.{quote(name)}" for name in names if name != "uuid")
        columns = ", ".join(quote(name) for name in names)
        inserted = ", ".join(f"s.{quote(name)}" for name in names)
        statement = (
            f"MERGE INTO {quote(table)} t "
            f"USING (SELECT {selected} FROM DUAL) s "
            f"ON (t.{quote('uuid')} = s.{quote('uuid')})"
            + (f" WHEN MATCHED THEN UPDATE SET {updates}"
               + (f" WHERE {self.fresher('t', 's')}" if "event_seq" in names else "") if updates else "")
            + f" WHEN NOT MATCHED THEN INSERT ({columns}) VALUES ({inserted})"  # no ';': oracledb refuses it
        )
        self.statements[statement] = tuple(names)
        return statement

    def create_index_online(self, table: str, index: Index) -> str:
        return self.create_index(table, index) + " ONLINE"  # Enterprise Edition; others: without ONLINE

    def indexes_query(self, table: str) -> Optional[tuple[str, tuple[Any, ...]]]:
        return ("SELECT index_name, column_name FROM user_ind_columns WHERE table_name = :1 "
                "ORDER BY index_name, column_position", (table.upper(),))

    def columns_query(self, table: str) -> tuple[str, tuple[Any, ...]]:
        # The upper-cased name, as ``quote`` writes it.
        return "SELECT column_name FROM user_tab_columns WHERE table_name = :1", (table.upper(),)

    def connect(self, config: DatabaseConfig, timeout_s: float) -> Any:
        import oracledb

        if self.thick:
            _use_thick(self.lib_dir)
        connection = oracledb.connect(
            user=config.username or None,
            password=config.password or None,
            dsn=easy_connect(config),
            tcp_connect_timeout=timeout_s,
        )
        # Each round trip (a batch, a commit) gives up after the sink's timeout: a server that stops
        # answering must not hold a writer forever.
        connection.call_timeout = max(1, int(timeout_s * 1000))
        return OracleConnection(connection, self.statements)

    def classify(self, error: BaseException) -> SinkError:
        if isinstance(error, PartialBatch) or is_rejection(error):
            return RejectedError(str(error))
        if error_code(error) == 60:  # ORA-00060: deadlock detected while waiting for resource
            return TransientError(str(error))
        return RetriableError(str(error))
