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
from ..realtime import LOST, LOST_SEQ, OPEN_STATES, REMOVED
from ..record import CallRecord
from ..schema import ADDED_COLUMNS, INDEXES, Column, Index

if TYPE_CHECKING:
    from ..calls import CallTable
from .database import DatabaseConfig
from .partitions import Partitions

log = logging.getLogger("fs_cdr.sinks.sql")

#: SQLSTATEs of a transaction rolled back to resolve a conflict with another: serialization failure
#: (SQL Server's deadlock victim 1205 too), PostgreSQL's deadlock_detected.
TRANSIENT_STATES = frozenset({"40001", "40P01"})
#: After a batch of new rows met a row already in the table (a replay after a crash, an import, the
#: same calls again), the sink upserts for this long before it tries the bulk path again.
BULK_PAUSE_S = 60.0
#: How long ``schema --apply`` lets one statement run.
APPLY_TIMEOUT_S = 3 * 3600.0


class Dialect:
    """The SQL one database speaks. Subclasses set the class attributes and override as needed."""

    name = "sql"
    #: DB-API placeholder for one parameter.
    placeholder = "%s"
    #: Column kind (see ``schema.Column``) to column type.
    types: dict[str, str] = {}

    #: Whether the table is stored in the order of its primary key (InnoDB, SQL Server's clustered
    #: index): there a random uuid as the key puts every new row on a random page once the table
    #: outgrows memory, so such a table gets an ever-growing ``id`` as its key and ``uuid`` a UNIQUE
    #: index (the upsert's key, as before). PostgreSQL's and Oracle's heaps and SQLite's rowid
    #: tables append new rows whatever the key, and keep ``uuid`` as the primary key.
    clustered = False
    #: The column type of the ``id`` key, for a clustered dialect.
    id_type = ""

    def quote(self, identifier: str) -> str:
        return f'"{identifier}"'

    def placeholders(self, count: int) -> list[str]:
        """``count`` parameter marks for one statement (numbered where the driver wants: Oracle)."""
        if self.placeholder.startswith(":"):
            return [f":{index}" for index in range(1, count + 1)]
        return [self.placeholder] * count

    def key_lines(self, columns: Sequence[Column], partitioned: bool = False) -> list[str]:
        """The lines of CREATE TABLE after the columns: the keys. A partitioned table's keys hold the
        partitioning column (partitions.py)."""
        also = f", {self.quote('start_stamp')}" if partitioned else ""
        if self.clustered and not any(column.name == "id" for column in columns):
            return [f"  {self.quote('id')} {self.id_type}", f"  PRIMARY KEY ({self.quote('id')}{also})",
                    f"  UNIQUE ({self.quote('uuid')}{also})"]
        return [f"  PRIMARY KEY ({self.quote('uuid')}{also})"]

    def create_table(self, table: str, columns: Sequence[Column], partitions: Optional[Partitions] = None) -> str:
        lines = [f"  {self.quote(column.name)} {self.types[column.kind]}"
                 + (" NOT NULL" if partitions is not None and column.name == "start_stamp" else "")
                 for column in columns]
        keys = self.key_lines(columns, partitions is not None)
        if keys[0].startswith(f"  {self.quote('id')} "):  # the id column first, then the rest
            lines.insert(0, keys.pop(0))
        lines.extend(keys)
        return f"CREATE TABLE {self.quote(table)} (\n" + ",\n".join(lines) + "\n)" + self.table_options() + (
            partitions.table_suffix() if partitions is not None else "")

    def table_options(self) -> str:
        """What follows CREATE TABLE's closing parenthesis (MySQL's engine and character set)."""
        return ""

    def indexes_for(self, columns: Sequence[Column]) -> list[Index]:
        """The recommended indexes (``schema.INDEXES``) whose columns this table has."""
        names = {column.name for column in columns}
        return [index for index in INDEXES if all(name in names for name in index.columns)]

    def create_index(self, table: str, index: Index) -> str:
        columns = ", ".join(self.quote(name) for name in index.columns)
        return f"CREATE INDEX {self.quote(index.name(table))} ON {self.quote(table)} ({columns})"

    def schema_statements(self, table: str, columns: Sequence[Column],
                          partitions: Optional[Partitions] = None) -> list[str]:
        """Everything a new table needs: CREATE TABLE (and its partitions), then its indexes."""
        return ([self.create_table(table, columns, partitions)]
                + (partitions.create_statements() if partitions is not None else [])
                + [self.create_index(table, index) for index in self.indexes_for(columns)])

    def create_index_online(self, table: str, index: Index) -> str:
        """The index, added to a table in use without blocking its writers where the database can."""
        return self.create_index(table, index)

    def rebuild_statements(self, connection: Any, table: str) -> list[str]:
        """What an existing table needs that rewrites all of it (the clustered ``id`` key), for the
        operator to run at a quiet hour: ``schema --apply`` prints these and does not run them."""
        return []

    def indexes_query(self, table: str) -> Optional[tuple[str, tuple[Any, ...]]]:
        """A query whose rows are (index name, column name) for every index of ``table``, in the
        order of each index's columns; ``None`` when the dialect cannot list them."""
        return None

    def add_column(self, table: str, column: Column) -> str:
        return f"ALTER TABLE {self.quote(table)} ADD {self.quote(column.name)} {self.types[column.kind]}"

    def upsert(self, table: str, names: Sequence[str]) -> str:
        raise NotImplementedError

    def on_conflict_upsert(self, table: str, names: Sequence[str], incoming: str,
                           conflict: Sequence[str] = ("uuid",)) -> str:
        """``INSERT ... ON CONFLICT (uuid) DO UPDATE ... WHERE fresher``: PostgreSQL's and SQLite's
        upsert (``incoming`` is how each spells the new row: ``EXCLUDED`` / ``excluded``)."""
        quote = self.quote
        columns = ", ".join(quote(name) for name in names)
        values = ", ".join(self.placeholder for _ in names)
        updates = ", ".join(f"{quote(name)} = {incoming}.{quote(name)}" for name in names if name != "uuid")
        guard = f" WHERE {self.fresher(quote(table), incoming)}" if "event_seq" in names else ""
        return (f"INSERT INTO {quote(table)} ({columns}) VALUES ({values}) "
                f"ON CONFLICT ({', '.join(quote(name) for name in conflict)}) DO UPDATE SET {updates}{guard}")

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
        #: every column this configuration writes; ``columns`` and ``names`` are those the table has
        self.wanted = tuple(columns)
        self._use(self.wanted)
        self.delete_statement = (f"DELETE FROM {dialect.quote(config.table)} "
                                 f"WHERE {dialect.quote('uuid')} = {dialect.placeholder}")
        self.create = create
        self.connection: Any = None
        self._bulk_after = 0.0
        self.partitions = (Partitions(dialect, config.table, config.retention_days, period=config.partition)
                           if config.partition else None)
        #: the standard columns added since the table was created (``schema.ADDED_COLUMNS``), which it
        #: is written without
        self.lacking: tuple[str, ...] = ()
        self.calls: Optional[CallTable] = None
        if calls_table:
            from ..calls import CallTable

            self.calls = CallTable(dialect, calls_table, config.table)

    def _use(self, columns: Sequence[Column]) -> None:
        """Write these columns: the statements for them."""
        dialect, config = self.dialect, self.config
        self.columns = tuple(columns)
        self.names = tuple(column.name for column in columns)
        self.statement = dialect.upsert(config.table, self.names)
        if config.partition and dialect.name == "postgresql":  # the key of a partitioned table (partitions.py)
            self.statement = dialect.on_conflict_upsert(config.table, self.names, "EXCLUDED", ("uuid", "start_stamp"))
        self._key = self.names.index("uuid")
        self.bulk_statement = None if config.real else dialect.bulk_insert(config.table, self.names)

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
        return self._columns_of(self.config.table)

    def check_table(self) -> None:
        """Create the table when it is missing; refuse to start when a configured column is not there.
        A table made before the newer standard columns (``schema.ADDED_COLUMNS``) is written without
        them, and said so once (``fs-cdr schema --apply`` adds them)."""
        try:
            found = self.existing_columns()
            if not found and self.create:
                self._create_table()
                found = self.existing_columns()
        except Exception as error:
            raise self.dialect.classify(error) from error
        lacking = tuple(column.name for column in self.wanted if column.name not in found and column.name in ADDED_COLUMNS)
        if lacking != self.lacking or len(self.columns) != len(self.wanted) - len(lacking):
            if lacking and found:
                log.warning("table %s (%s) has no column %s (added in a later release): written without them; "
                            "`fs-cdr schema --apply` adds them", self.config.table, self.config.describe(),
                            ", ".join(lacking))
            self.lacking = lacking
            self._use([column for column in self.wanted if column.name not in lacking])
        missing = [column for column in self.columns if column.name not in found]
        if not missing and self.partitions is not None:
            try:
                self.partitions.maintain(self.connection)
            except Exception as error:
                self._rollback()
                raise self.dialect.classify(error) from error
        if not missing and self.bulk_statement:
            try:
                lacking_privileges = self.dialect.missing_privileges(self.connection, self.config.table)
            except Exception as error:
                raise self.dialect.classify(error) from error
            if lacking_privileges:
                raise RetriableError(
                    f"permission denied for table {self.config.table}: the upsert needs SELECT, INSERT and UPDATE on "
                    f"it; the user lacks {' and '.join(lacking_privileges)} (docs/security.md)")
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

    def existing_indexes(self) -> Optional[list[tuple[str, ...]]]:
        """The columns of each index of the table, in order (``None``: the dialect cannot say)."""
        query = self.dialect.indexes_query(self.config.table)
        if query is None:
            return None
        cursor = self.connection.cursor()
        try:
            cursor.execute(*query)
            rows = cursor.fetchall()
        finally:
            cursor.close()
        self.connection.commit()
        indexes: dict[str, list[str]] = {}
        for name, column in rows:
            indexes.setdefault(str(name), []).append(str(column).lower())
        return [tuple(columns) for columns in indexes.values()]

    def lacking_indexes(self) -> Optional[list[Index]]:
        """The recommended indexes (``schema.INDEXES``) the table has nothing as good as: an index
        whose first columns are the recommended one's. ``None``: the dialect cannot list indexes."""
        existing = self.existing_indexes()
        if existing is None:
            return None
        wanted = self.dialect.indexes_for(self.wanted)
        return [index for index in wanted
                if not any(columns[:len(index.columns)] == index.columns for columns in existing)]

    def _create_table(self) -> None:
        """CREATE TABLE and its indexes; when that fails, the table may have been created meanwhile by
        another writer or another switch (PostgreSQL then reports a unique violation in pg_type, the
        others "already exists"): it is only an error when the table is still missing."""
        cursor = self.connection.cursor()
        try:
            for statement in self.dialect.schema_statements(self.config.table, self.wanted, self.partitions):
                cursor.execute(statement)
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

    def apply_schema(self) -> tuple[list[str], list[str]]:
        """Create the table, or add the columns and indexes it lacks (``schema --apply``): the
        statements run, and those left to the operator (``Dialect.rebuild_statements``: changes
        that rewrite the whole table, which this does not do on a live table)."""
        # an index on a big table takes minutes (and PostgreSQL's CONCURRENTLY waits for every older
        # transaction first): no statement or read timeout of a writer's here
        self.connection = self.dialect.connect(self.config, APPLY_TIMEOUT_S)
        found = self.existing_columns()
        if not found:
            statements = self.dialect.schema_statements(self.config.table, self.wanted, self.partitions)
            left: list[str] = []
        else:
            statements = [self.dialect.add_column(self.config.table, column)
                          for column in self.wanted if column.name not in found]
            lacking = self.lacking_indexes() or []
            statements += [self.dialect.create_index_online(self.config.table, index) for index in lacking]
            left = self.dialect.rebuild_statements(self.connection, self.config.table)
        if self.calls is not None:
            from ..calls import CALL_COLUMNS

            found = self._columns_of(self.calls.table)
            if not found:
                statements += [self.dialect.create_table(self.calls.table, CALL_COLUMNS), self.calls.index_statement()]
            else:
                statements += [self.dialect.add_column(self.calls.table, column)
                               for column in CALL_COLUMNS if column.name not in found]
        for statement in statements:
            # PostgreSQL builds an index CONCURRENTLY only outside a transaction
            outside = "CONCURRENTLY" in statement and hasattr(self.connection, "autocommit")
            if outside:
                self.connection.autocommit = True
            cursor = self.connection.cursor()
            try:
                cursor.execute(statement)
            finally:
                cursor.close()
                if outside:
                    self.connection.autocommit = False
            self.connection.commit()
        return statements, left

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
        if self.partitions is not None and self.partitions.due():
            self._maintain()
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
                gone = [str(uuid) for (uuid,) in removed]
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

    def _maintain(self) -> None:
        """Partitions ahead and retention, once an hour; a failure is logged and tried again in an
        hour: rows dated beyond the partitions go to the catch-all partition meanwhile."""
        assert self.partitions is not None
        try:
            self.partitions.maintain(self.connection)
        except Exception as error:  # noqa: BLE001 - the batch is written all the same
            self._rollback()
            log.warning("table %s (%s): partition upkeep failed, tried again in an hour: %s", self.config.table,
                        self.config.describe(), error)

    def _insert_in_bulk(self, connection: Any, rows: list[tuple[Any, ...]],
                        records: Sequence[CallRecord] = ()) -> bool:
        """The batch as new rows in one bulk statement; False when a row was already there."""
        try:
            assert self.bulk_statement is not None
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

    def close_lost(self, switchname: str, core_uuid: str) -> int:
        """Real-time rows of ``switchname`` that an earlier run of it (``core_uuid`` differs) left open —
        FreeSWITCH was killed mid-call — become ``lost``; returns how many. ``end_epoch`` is the time
        of the row's last update (an update's ``duration`` runs from the start to its event), else the
        last time the row knows; ``event_seq`` is set above any update, so none from that run (replayed
        from a spool) reopens the row, while its completed record still replaces it."""
        quote = self.dialect.quote
        quote_table = quote(self.config.table)
        marks = self.dialect.placeholders(4 + len(OPEN_STATES))
        statement = (
            f"UPDATE {quote_table} SET {quote('call_state')} = {marks[0]}, {quote('end_epoch')} = "
            f"COALESCE({quote('end_epoch')}, {quote('start_epoch')} + {quote('duration')}, {quote('answer_epoch')}, "
            f"{quote('start_epoch')}), "
            f"{quote('event_seq')} = {marks[1]} WHERE {quote('switchname')} = {marks[2]} AND "
            f"{quote('core_uuid')} <> {marks[3]} AND {quote('call_state')} IN ({', '.join(marks[4:])})"
        )
        cursor = self.connection.cursor()
        try:
            cursor.execute(statement, (LOST, LOST_SEQ, switchname, core_uuid, *OPEN_STATES))
            count = cursor.rowcount
        except Exception as error:
            self._rollback()
            raise self.dialect.classify(error) from error
        finally:
            cursor.close()
        self.connection.commit()
        return max(0, count or 0)

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
