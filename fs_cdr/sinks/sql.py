"""What every SQL sink shares: statements built from validated names, the table check, batched upserts.

A dialect (one module per database) supplies only what differs: types, quoting, the upsert statement,
how to connect, how to list a table's columns, and which driver errors are retriable. Values are
always bound parameters; only table and column names, validated against ``fields.IDENTIFIER`` when
the configuration was loaded, ever reach SQL text.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Optional, Sequence

from ..errors import ConfigError, RejectedError, RetriableError, SinkError, TransientError
from ..realtime import REMOVED
from ..record import CallRecord
from ..schema import Column

if TYPE_CHECKING:
    from ..calls import CallTable
from .database import DatabaseConfig

log = logging.getLogger("fs_cdr.sinks.sql")

#: SQLSTATEs of a transaction rolled back to resolve a conflict with another: serialization failure
#: (SQL Server's deadlock victim 1205 too), PostgreSQL's deadlock_detected.
TRANSIENT_STATES = frozenset({"40001", "40P01"})
#: After a batch of new rows met a row already in the table (a replay after a crash, an import, the
#: same calls again), the sink upserts for this long before it tries the bulk path again.
BULK_PAUSE_S = 60.0


class Dialect:
    """The SQL one database speaks. Subclasses set the class attributes and override as needed."""

    name = "sql"
    #: DB-API placeholder for one parameter.
    placeholder = "%s"
    #: Column kind (see ``schema.Column``) to column type.
    types: dict[str, str] = {}

    def quote(self, identifier: str) -> str:
        return f'"{identifier}"'

    def create_table(self, table: str, columns: Sequence[Column]) -> str:
        lines = [f"  {self.quote(column.name)} {self.types[column.kind]}" for column in columns]
        lines.append(f"  PRIMARY KEY ({self.quote('uuid')})")
        return f"CREATE TABLE {self.quote(table)} (\n" + ",\n".join(lines) + "\n)"

    def add_column(self, table: str, column: Column) -> str:
        return f"ALTER TABLE {self.quote(table)} ADD {self.quote(column.name)} {self.types[column.kind]}"

    def upsert(self, table: str, names: Sequence[str]) -> str:
        raise NotImplementedError

    def on_conflict_upsert(self, table: str, names: Sequence[str], incoming: str) -> str:
        """``INSERT ... ON CONFLICT (uuid) DO UPDATE ... WHERE fresher``: PostgreSQL's and SQLite's
        upsert (``incoming`` is how each spells the new row: ``EXCLUDED`` / ``excluded``)."""
        quote = self.quote
        columns = ", ".join(quote(name) for name in names)
        values = ", ".join(self.placeholder for _ in names)
        updates = ", ".join(f"{quote(name)} = {incoming}.{quote(name)}" for name in names if name != "uuid")
        guard = f" WHERE {self.fresher(quote(table), incoming)}" if "event_seq" in names else ""
        return (f"INSERT INTO {quote(table)} ({columns}) VALUES ({values}) "
                f"ON CONFLICT ({quote('uuid')}) DO UPDATE SET {updates}{guard}")

    def fresher(self, existing: str, incoming: str) -> str:
        """The condition under which an upsert may replace the stored row: a completed (hangup)
        record always may; a real-time update only over a row that is not completed and not newer.
        So a replayed or late update can never roll a row back. ``existing``/``incoming`` are the
        SQL names of the stored and the new row (``t``, ``EXCLUDED``...)."""
        state, seq = self.quote("call_state"), self.quote("event_seq")
        return (f"({incoming}.{state} = 'completed' OR (({existing}.{state} IS NULL OR "
                f"{existing}.{state} <> 'completed') AND COALESCE({incoming}.{seq}, 0) >= COALESCE({existing}.{seq}, 0)))")

    def bulk_insert(self, table: str, names: Sequence[str]) -> Optional[str]:
        """A statement that inserts a whole batch of new rows much more cheaply than the upsert, or
        ``None`` when the dialect has none. It must fail, writing nothing, when one of the rows is
        already in the table (:meth:`is_duplicate` then tells that failure from the others)."""
        return None

    def insert_in_bulk(self, connection: Any, statement: str, rows: Sequence[tuple[Any, ...]]) -> None:
        raise NotImplementedError

    def is_duplicate(self, error: BaseException) -> bool:
        """Whether ``error`` says a row's key is already in the table."""
        return False

    def missing_privileges(self, connection: Any, table: str) -> list[str]:
        """Of SELECT and UPDATE on ``table``, those the session's user lacks. The bulk insert needs
        INSERT only, but the upsert that follows a duplicate needs all three: checked when the sink
        opens, so a role short of one fails at once, not at the first replay."""
        return []

    def columns_query(self, table: str) -> tuple[str, tuple[Any, ...]]:
        """A query whose rows' first value is a column name of ``table`` (no rows: no table)."""
        raise NotImplementedError

    def connect(self, config: DatabaseConfig, timeout_s: float) -> Any:
        raise NotImplementedError

    def classify(self, error: BaseException) -> SinkError:
        """Wrap a driver error: rejected when the data is at fault, else retriable."""
        return RetriableError(str(error))


class SqlSink:
    """A SQL table as a sink: one connection, one upsert statement, ``executemany`` per batch.

    Where the dialect has a bulk insert for the table (PostgreSQL's COPY, for a table without
    ``details``, where it is measured cheaper) and rows are only ever written whole (hangup records,
    not real-time mode), a batch is first tried as new rows in bulk. A batch holding a row that is
    already there (a replay after a crash, an import run twice) writes nothing that way and is
    upserted instead, as are the batches of the next ``BULK_PAUSE_S``; the result is the same rows
    either way.
    """

    def __init__(self, dialect: Dialect, config: DatabaseConfig, columns: Sequence[Column], create: bool = True,
                 calls_table: str = "") -> None:
        """``calls_table``: the call table (fs_cdr/calls.py) each batch's calls are recomputed into."""
        self.dialect = dialect
        self.config = config
        self.columns = tuple(columns)
        self.names = tuple(column.name for column in columns)
        self.statement = dialect.upsert(config.table, self.names)
        self._key = self.names.index("uuid")
        self.delete_statement = (f"DELETE FROM {dialect.quote(config.table)} "
                                 f"WHERE {dialect.quote('uuid')} = {dialect.placeholder}")
        self.create = create
        self.connection: Any = None
        self.bulk_statement = None if config.real else dialect.bulk_insert(config.table, self.names)
        self._bulk_after = 0.0
        self.calls: Optional[CallTable] = None
        if calls_table:
            from ..calls import CallTable

            self.calls = CallTable(dialect, calls_table, config.table)

    def open(self) -> None:
        try:
            self.connection = self.dialect.connect(self.config, self.config.batch.timeout_s)
        except Exception as error:
            raise self.dialect.classify(error) from error
        try:
            self.check_table()
        except Exception:
            self.close()
            raise

    def existing_columns(self) -> set[str]:
        sql, parameters = self.dialect.columns_query(self.config.table)
        cursor = self.connection.cursor()
        try:
            cursor.execute(sql, parameters)
            found = {str(row[0]).lower() for row in cursor.fetchall()}
        finally:
            cursor.close()
        self.connection.commit()
        return found

    def check_table(self) -> None:
        """Create the table when it is missing; refuse to start when a configured column is not there."""
        try:
            found = self.existing_columns()
            if not found and self.create:
                self._create_table()
                found = self.existing_columns()
        except Exception as error:
            raise self.dialect.classify(error) from error
        missing = [column for column in self.columns if column.name not in found]
        if not missing and self.bulk_statement:
            try:
                lacking = self.dialect.missing_privileges(self.connection, self.config.table)
            except Exception as error:
                raise self.dialect.classify(error) from error
            if lacking:
                raise RetriableError(
                    f"permission denied for table {self.config.table}: the upsert needs SELECT, INSERT and UPDATE on "
                    f"it; the user lacks {' and '.join(lacking)} (docs/security.md)")
        if missing:
            fixes = "; ".join(self.dialect.add_column(self.config.table, column) for column in missing)
            raise ConfigError(
                f"cdr.database (table {self.config.table})",
                f"no column {', '.join(column.name for column in missing)} in the table; add it: {fixes}",
            )
        if self.calls is not None:
            self._check_call_table(self.calls)

    def _check_call_table(self, calls: CallTable) -> None:
        """The call table: created (with the leg table's call_key index) when missing, else checked."""
        from ..calls import CALL_COLUMNS

        try:
            found = self._columns_of(calls.table)
            if not found and self.create:
                self._create(calls.table, CALL_COLUMNS)
                self._index(calls)
                found = self._columns_of(calls.table)
        except Exception as error:
            raise self.dialect.classify(error) from error
        missing = [column for column in CALL_COLUMNS if column.name not in found]
        if missing:
            fixes = "; ".join(self.dialect.add_column(calls.table, column) for column in missing)
            raise ConfigError(f"cdr.calls (table {calls.table})",
                              f"no column {', '.join(column.name for column in missing)} in the table; add it: {fixes}")

    def _columns_of(self, table: str) -> set[str]:
        sql, parameters = self.dialect.columns_query(table)
        cursor = self.connection.cursor()
        try:
            cursor.execute(sql, parameters)
            found = {str(row[0]).lower() for row in cursor.fetchall()}
        finally:
            cursor.close()
        self.connection.commit()
        return found

    def _create(self, table: str, columns: Sequence[Column]) -> None:
        cursor = self.connection.cursor()
        try:
            cursor.execute(self.dialect.create_table(table, columns))
            self.connection.commit()
        except Exception:
            self._rollback()
            if not self._columns_of(table):
                raise
        finally:
            cursor.close()

    def _index(self, calls: CallTable) -> None:
        """The leg table's call_key index; one already there (another writer made it) is fine."""
        cursor = self.connection.cursor()
        try:
            cursor.execute(calls.index_statement())
            self.connection.commit()
        except Exception as error:  # noqa: BLE001 - already there; a missing index costs only speed
            self._rollback()
            log.info("index on %s.call_key not created (%s)", self.config.table, error)
        finally:
            cursor.close()

    def _create_table(self) -> None:
        """CREATE TABLE; when that fails, the table may have been created meanwhile by another writer
        or another switch (PostgreSQL then reports a unique violation in pg_type, the others "already
        exists"): it is only an error when the table is still missing."""
        cursor = self.connection.cursor()
        try:
            cursor.execute(self.dialect.create_table(self.config.table, self.columns))
            self.connection.commit()
        except Exception:
            self._rollback()
            if not self.existing_columns():
                raise
            log.info("table %s was created meanwhile by another writer or switch (%s)", self.config.table,
                     self.config.describe())
            return
        finally:
            cursor.close()
        log.info("created table %s (%s)", self.config.table, self.config.describe())

    def apply_schema(self) -> list[str]:
        """Create the table, or add the columns it lacks; returns the statements run (``schema --apply``)."""
        self.connection = self.dialect.connect(self.config, self.config.batch.timeout_s)
        found = self.existing_columns()
        if not found:
            statements = [self.dialect.create_table(self.config.table, self.columns)]
        else:
            statements = [self.dialect.add_column(self.config.table, column)
                          for column in self.columns if column.name not in found]
        if self.calls is not None:
            from ..calls import CALL_COLUMNS

            found = self._columns_of(self.calls.table)
            if not found:
                statements += [self.dialect.create_table(self.calls.table, CALL_COLUMNS), self.calls.index_statement()]
            else:
                statements += [self.dialect.add_column(self.calls.table, column)
                               for column in CALL_COLUMNS if column.name not in found]
        for statement in statements:
            cursor = self.connection.cursor()
            try:
                cursor.execute(statement)
            finally:
                cursor.close()
        self.connection.commit()
        return statements

    def rows(self, records: Sequence[CallRecord]) -> list[tuple[Any, ...]]:
        """The batch's parameter rows, in uuid order: two writers (or switches) upserting into one
        table then take their row and gap locks in the same order, which keeps InnoDB from
        deadlocking their multi-row statements on a shared page."""
        names = self.names
        rows = [tuple([record.get(name) for name in names]) for record in records]
        key = self._key
        rows.sort(key=lambda row: row[key] or "")
        return rows

    def write(self, records: Sequence[CallRecord]) -> None:
        connection = self.connection
        if connection is None:
            raise RetriableError("not connected")
        removed = [(record["uuid"],) for record in records if record.get("call_state") == REMOVED]
        if removed:
            records = [record for record in records if record.get("call_state") != REMOVED]
        rows = self.rows(records)
        if rows and not removed and self.bulk_statement and time.monotonic() >= self._bulk_after:
            if self._insert_in_bulk(connection, rows, records):
                return
        try:
            cursor = connection.cursor()
            try:
                if rows:
                    cursor.executemany(self.statement, rows)
                gone = [uuid for (uuid,) in removed]
                keys = self.calls.keys_of(cursor, gone) if self.calls is not None and gone else []
                if removed:
                    cursor.executemany(self.delete_statement, removed)
                if self.calls is not None:
                    self.calls.refresh(cursor, records, gone, keys)
            finally:
                cursor.close()
            connection.commit()
        except Exception as error:
            self._rollback()
            raise self.dialect.classify(error) from error

    def _insert_in_bulk(self, connection: Any, rows: list[tuple[Any, ...]],
                        records: Sequence[CallRecord] = ()) -> bool:
        """The batch as new rows in one bulk statement; False when a row was already there."""
        try:
            self.dialect.insert_in_bulk(connection, self.bulk_statement, rows)
            if self.calls is not None:
                cursor = connection.cursor()
                try:
                    self.calls.refresh(cursor, records)
                finally:
                    cursor.close()
            connection.commit()
            return True
        except Exception as error:
            self._rollback()
            if not self.dialect.is_duplicate(error):
                raise self.dialect.classify(error) from error
        self._bulk_after = time.monotonic() + BULK_PAUSE_S
        log.debug("%s: a batch met rows already in the table; upserting for %.0f s", self.config.describe(),
                  BULK_PAUSE_S)
        return False

    def _rollback(self) -> None:
        try:
            self.connection.rollback()
        except Exception:  # noqa: BLE001 - the connection may be gone; close() follows
            pass

    def close(self) -> None:
        connection, self.connection = self.connection, None
        if connection is not None:
            try:
                connection.close()
            except Exception:  # noqa: BLE001
                pass


def rejected_or_retriable(error: BaseException, rejected: tuple[type, ...]) -> SinkError:
    """The usual rule: data and integrity errors are the record's fault, the rest is the server's; a
    deadlock or serialization failure (SQLSTATE 40001, 40P01) is retried at once."""
    if isinstance(error, rejected):
        return RejectedError(str(error))
    if getattr(error, "sqlstate", None) in TRANSIENT_STATES:
        return TransientError(str(error))
    return RetriableError(str(error))


def dialect_for(name: str, config: Optional[DatabaseConfig] = None) -> Optional[Dialect]:
    """The dialect serving a normalized dbtype; drivers are imported only when connecting.

    ``config`` is the database it will serve, when there is one: dbtype odbc takes its SQL from the
    dialect that ``config.dialect`` names, and the ODBC and Oracle dialects check ``driver`` and the
    connection settings here, so that a mistake stops the configuration rather than every connection.
    """
    from . import mysql, odbc, oracle, postgres, sqlite, sqlserver

    if name == "odbc":
        if config is None or not config.dialect:
            raise ConfigError("cdr.database.dialect", "dbtype odbc needs the dialect its target speaks: "
                                                      "mysql, postgresql, sqlserver, oracle or sqlite")
        if config.dialect == "sqlserver":
            return sqlserver.SqlServer()  # always ODBC: it takes the DSN or connection string as is
        sql = dialect_for(config.dialect)
        if sql is None:
            return None
        rejected = {"mysql": mysql._REJECTED_CODES, "oracle": oracle.REJECTED_CODES}.get(config.dialect, frozenset())
        return odbc.OdbcDialect(sql, config, rejected)
    if name == "sqlite":
        return sqlite.SQLite()
    if name == "mysql":
        return mysql.MySQL()
    if name == "postgresql":
        return postgres.PostgreSQL()
    if name == "sqlserver":
        return sqlserver.SqlServer()
    if name == "oracle":
        return oracle.Oracle(config)
    return None
