"""PostgreSQL through psycopg 3: a batch of new rows goes in by ``COPY ... FROM STDIN`` when the table
has no ``details`` column; the upsert (``executemany`` in pipeline mode, one round trip per batch) takes
batches with rows already there, real-time updates, and every batch of a table with ``details``.

For such rows COPY costs the server a quarter of a row-by-row INSERT ... ON CONFLICT (no statement
per row, no speculative insertion), and psycopg formats the rows in C. It needs INSERT on the table only,
like the upsert, and no temporary table: the rows go straight in, and a unique violation (one uuid
already in the table) makes the whole COPY write nothing, so the batch is simply upserted instead.

``details`` is ``json`` (not ``jsonb``): it keeps the text exactly as written, and accepts the
``\\u0000`` escapes that a hostile caller name can produce, which ``jsonb`` refuses.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from ..errors import SinkError
from ..schema import Index
from .database import DatabaseConfig
from .sql import Dialect, rejected_or_retriable


class PostgreSQL(Dialect):
    name = "postgresql"
    types = {
        "key": "VARCHAR(64) NOT NULL",
        "short": "VARCHAR(64)",
        "text": "VARCHAR(255)",
        "long": "TEXT",
        "int": "BIGINT",
        "number": "DOUBLE PRECISION",
        "json": "JSON",
        "stamp": "TIMESTAMP(3)",
    }

    def create_index(self, table: str, index: Index) -> str:
        columns = ", ".join(self.quote(name) + (" varchar_pattern_ops" if name in index.prefixed else "")
                            for name in index.columns)
        return f"CREATE INDEX {self.quote(index.name(table))} ON {self.quote(table)} ({columns})"

    def create_index_online(self, table: str, index: Index) -> str:
        # CONCURRENTLY: writers go on while it is built (it must run outside a transaction)
        return self.create_index(table, index).replace("CREATE INDEX", "CREATE INDEX CONCURRENTLY IF NOT EXISTS", 1)

    def indexes_query(self, table: str) -> Optional[tuple[str, tuple[Any, ...]]]:
        return ("SELECT i.relname, a.attname FROM pg_index x JOIN pg_class t ON t.oid = x.indrelid "
                "JOIN pg_class i ON i.oid = x.indexrelid "
                "JOIN LATERAL unnest(x.indkey) WITH ORDINALITY AS k(attnum, position) ON true "
                "JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum "
                "WHERE t.relname = %s AND t.relnamespace = current_schema()::regnamespace "
                "ORDER BY i.relname, k.position", (table,))

    def upsert(self, table: str, names: Sequence[str]) -> str:
        return self.on_conflict_upsert(table, names, "EXCLUDED")

    def bulk_insert(self, table: str, names: Sequence[str]) -> Optional[str]:
        if "details" in names:
            # Measured (bench/run.py): with 10 KB of details a row, the server's cost is TOAST and
            # the JSON check, and COPY (whose bulk-write buffer ring makes the backend write out its
            # own pages) costs it as much or more than the upsert; without details it costs a
            # quarter of it.
            return None
        columns = ", ".join(self.quote(name) for name in names)
        return f"COPY {self.quote(table)} ({columns}) FROM STDIN"

    def insert_in_bulk(self, connection: Any, statement: str, rows: Sequence[tuple[Any, ...]]) -> None:
        with connection.cursor() as cursor:
            with cursor.copy(statement) as copy:
                write = copy.write_row
                for row in rows:
                    write(row)

    def is_duplicate(self, error: BaseException) -> bool:
        import psycopg

        return isinstance(error, psycopg.errors.UniqueViolation)

    def missing_privileges(self, connection: Any, table: str) -> list[str]:
        # has_any_column_privilege: the table's privilege, or the column grants a careful DBA may give
        query = "SELECT has_any_column_privilege(%s, 'SELECT'), has_any_column_privilege(%s, 'UPDATE')"
        with connection.cursor() as cursor:
            cursor.execute(query, (self.quote(table), self.quote(table)))
            found = cursor.fetchone()
        connection.commit()
        return [name for name, held in zip(("SELECT", "UPDATE"), found) if not held]

    def columns_query(self, table: str) -> tuple[str, tuple[Any, ...]]:
        return (
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = %s",
            (table,),
        )

    def connect(self, config: DatabaseConfig, timeout_s: float) -> Any:
        import psycopg

        timeout_ms = int(timeout_s * 1000)
        # The URL's query (libpq keywords, checked by database._sql_options): TLS and the rest, as they are;
        # the server options given there come before fs_cdr's statement_timeout, which must hold.
        options: dict[str, Any] = dict(config.options)
        server_options = " ".join(filter(None, (options.pop("options", ""), f"-c statement_timeout={timeout_ms}")))
        application_name = options.pop("application_name", "fs_cdr")
        return psycopg.connect(
            host=config.host,
            port=config.port,
            dbname=config.database,
            user=config.username or None,
            password=config.password or None,
            connect_timeout=max(1, int(round(timeout_s))),
            # A server that stops answering must not hold a writer forever: the kernel gives up on
            # unacknowledged data after tcp_user_timeout, the server cancels long statements.
            tcp_user_timeout=timeout_ms,
            keepalives=1,
            keepalives_idle=max(1, int(timeout_s)),
            keepalives_interval=1,
            keepalives_count=3,
            options=server_options,
            application_name=application_name,
            **options,
        )

    def classify(self, error: BaseException) -> SinkError:
        import psycopg

        return rejected_or_retriable(error, (psycopg.DataError, psycopg.IntegrityError))
