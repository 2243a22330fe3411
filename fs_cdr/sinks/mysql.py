"""MySQL and MariaDB through mysqlclient (the C connector): utf8mb4, multi-row upserts.

mysqlclient rewrites ``executemany`` of ``INSERT ... VALUES (...) ON DUPLICATE KEY UPDATE`` into
multi-row statements of at most ``max_stmt_length`` bytes, which is what makes batching pay here.

A statement longer than the server's ``max_allowed_packet`` is refused with error 1153 *and the
connection dropped*, so a single huge row would take its whole batch, and every retry, down with it.
The connection :meth:`MySQL.connect` returns therefore measures a batch before sending it: a row that
cannot fit is refused as that record's fault (a ``DataError`` carrying 1153, raised without sending
anything, so the connection stays up) and set aside by the writer, and multi-row statements are kept
below the limit.
"""

from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

from ..errors import RejectedError, RetriableError, SinkError, TransientError
from ..schema import Index
from .database import DatabaseConfig
from .sql import Dialect

#: Server error codes that are the record's fault, not the server's.
_REJECTED_CODES = frozenset(
    {
        1048,  # column cannot be null
        1062,  # duplicate entry (a unique key other than uuid)
        1264,  # out of range value
        1265,  # data truncated
        1292,  # incorrect value
        1366,  # incorrect string value (bad UTF-8 for the column's charset)
        1406,  # data too long for column
        1452,  # foreign key constraint
    }
)
#: The server rolled the transaction back to resolve a lock conflict: the batch is retried at once.
_TRANSIENT_CODES = frozenset(
    {
        1213,  # deadlock found when trying to get lock
        1205,  # lock wait timeout exceeded
    }
)
#: ssl_mode values under which a connection must be encrypted.
_TLS_REQUIRED = frozenset({"REQUIRED", "VERIFY_CA", "VERIFY_IDENTITY"})
#: Room left in a packet for the protocol's own bytes.
_PACKET_MARGIN = 1024


def _upper_bound(row: Sequence[Any]) -> int:
    """Bytes a row can take in a statement at most: 4 UTF-8 bytes a character, each escaped to 2."""
    return sum(8 * len(value) + 3 if isinstance(value, str) else 32 for value in row) + 2 * len(row)


@functools.lru_cache(maxsize=None)
def _cursor_class() -> type:
    """A cursor that will not send a statement the server must refuse for its size."""
    import MySQLdb
    import MySQLdb.cursors

    class PacketCheckedCursor(MySQLdb.cursors.Cursor):
        def executemany(self, query: Any, args: Any) -> Any:
            limit = getattr(self.connection, "fs_cdr_max_packet", 0)
            if limit and args:
                room = limit - _PACKET_MARGIN - len(query)
                # Multi-row statements stop short of the limit; only one row alone can exceed it.
                self.max_stmt_length = max(1, min(MySQLdb.cursors.Cursor.max_stmt_length, room))
                literal = self.connection.literal
                for row in args:
                    if _upper_bound(row) <= room:
                        continue
                    size = sum(len(literal(value)) + 2 for value in row)
                    if size > room:  # a DataError: classify() calls it the record's fault
                        raise MySQLdb.DataError(
                            1153,
                            f"a record of {size} bytes does not fit the server's max_allowed_packet "
                            f"({limit} bytes); not sent",
                        )
            return super().executemany(query, args)

    return PacketCheckedCursor


class MySQL(Dialect):
    name = "mysql"
    types = {
        "key": "VARCHAR(64) NOT NULL",
        "short": "VARCHAR(64)",
        "text": "VARCHAR(255)",
        "long": "LONGTEXT",
        "int": "BIGINT",
        "number": "DOUBLE",
        "json": "LONGTEXT",
        "stamp": "DATETIME(3)",
    }
    clustered = True
    id_type = "BIGINT UNSIGNED NOT NULL AUTO_INCREMENT"

    def quote(self, identifier: str) -> str:
        return f"`{identifier}`"

    def table_options(self) -> str:
        return " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"

    def create_index_online(self, table: str, index: Index) -> str:
        columns = ", ".join(self.quote(name) for name in index.columns)
        return (f"ALTER TABLE {self.quote(table)} ADD INDEX {self.quote(index.name(table))} ({columns}), "
                "ALGORITHM=INPLACE, LOCK=NONE")

    def indexes_query(self, table: str) -> Optional[tuple[str, tuple[Any, ...]]]:
        return ("SELECT index_name, column_name FROM information_schema.statistics "
                "WHERE table_schema = DATABASE() AND table_name = %s ORDER BY index_name, seq_in_index", (table,))

    def rebuild_statements(self, connection: Any, table: str) -> list[str]:
        """A table of the first release has the uuid as its clustered primary key: the change to the
        ``id`` key rewrites every row (measured: docs/performance.md) and, adding an auto-increment
        column, blocks writers while it runs (LOCK=SHARED: readers go on), so it is printed, not run."""
        cursor = connection.cursor()
        try:
            cursor.execute("SELECT column_name FROM information_schema.key_column_usage WHERE table_schema = DATABASE() "
                           "AND table_name = %s AND constraint_name = 'PRIMARY'", (table,))
            key = [str(row[0]).lower() for row in cursor.fetchall()]
        finally:
            cursor.close()
        connection.commit()
        if key != ["uuid"]:
            return []
        quote = self.quote
        return [f"ALTER TABLE {quote(table)} DROP PRIMARY KEY, ADD {quote('id')} {self.id_type} FIRST, "
                f"ADD PRIMARY KEY ({quote('id')}), ADD UNIQUE ({quote('uuid')}), ALGORITHM=INPLACE, LOCK=SHARED"]

    def upsert(self, table: str, names: Sequence[str]) -> str:
        columns = ", ".join(self.quote(name) for name in names)
        values = ", ".join("%s" for _ in names)
        quote = self.quote
        if "event_seq" in names:
            # MySQL applies the assignments left to right, each seeing the ones before: the condition
            # reads call_state and event_seq, so those two are assigned last (event_seq first: once it
            # holds the new value the condition is still true for call_state, see Dialect.fresher).
            condition = (f"(VALUES({quote('call_state')}) = 'completed' OR (({quote('call_state')} IS NULL OR "
                         f"{quote('call_state')} <> 'completed') AND COALESCE(VALUES({quote('event_seq')}), 0) >= "
                         f"COALESCE({quote('event_seq')}, 0)))")
            ordered = [name for name in names if name not in ("uuid", "event_seq", "call_state")] + ["event_seq", "call_state"]
            updates = ", ".join(f"{quote(name)} = IF({condition}, VALUES({quote(name)}), {quote(name)})" for name in ordered)
        else:
            updates = ", ".join(f"{quote(name)} = VALUES({quote(name)})" for name in names if name != "uuid")
        return f"INSERT INTO {quote(table)} ({columns}) VALUES ({values}) ON DUPLICATE KEY UPDATE {updates}"

    def columns_query(self, table: str) -> tuple[str, tuple[Any, ...]]:
        return (
            "SELECT column_name FROM information_schema.columns WHERE table_schema = DATABASE() AND table_name = %s",
            (table,),
        )

    def connect(self, config: DatabaseConfig, timeout_s: float) -> Any:
        import MySQLdb

        timeout = max(1, int(round(timeout_s)))
        # TLS from the URL's query (checked by database._sql_options): ssl_mode, and the files as
        # mysqlclient's ssl={"ca": ..., "cert": ..., "key": ...}. Passed only when set, so a
        # configuration without TLS still works with a mysqlclient that predates ssl_mode.
        tls: dict[str, Any] = {}
        ssl_mode = config.options.get("ssl_mode", "")
        if ssl_mode:
            tls["ssl_mode"] = ssl_mode
        files = {key: config.options[f"ssl_{key}"] for key in ("ca", "cert", "key") if config.options.get(f"ssl_{key}")}
        if files:
            tls["ssl"] = files
        connection = MySQLdb.connect(
            host=config.host,
            port=config.port,
            user=config.username or "root",
            # passwd/db: the spellings every mysqlclient accepts, Debian 12's 1.4.6 included.
            passwd=config.password,
            db=config.database,
            charset="utf8mb4",
            connect_timeout=timeout,
            read_timeout=timeout,
            write_timeout=timeout,
            autocommit=False,
            cursorclass=_cursor_class(),
            **tls,
        )
        try:
            cursor = connection.cursor()
            try:
                cursor.execute("SELECT @@max_allowed_packet")
                (limit,) = cursor.fetchone()
                if ssl_mode in _TLS_REQUIRED:
                    # With MariaDB's Connector/C, mysqlclient's ssl_mode=REQUIRED does not refuse a
                    # server without TLS (VERIFY_CA and VERIFY_IDENTITY do): check that this session
                    # is encrypted before anything is written over it.
                    cursor.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
                    found = cursor.fetchone()
                    if not found or not found[1]:
                        raise MySQLdb.OperationalError(
                            2026, f"TLS/SSL error: ssl_mode={ssl_mode}, but the server did not encrypt the "
                                  "connection (it offers no TLS); nothing was written over it")
            finally:
                cursor.close()
            connection.commit()
            connection.fs_cdr_max_packet = int(limit)
        except Exception:
            connection.close()
            raise
        return connection

    def classify(self, error: BaseException) -> SinkError:
        import MySQLdb

        args = getattr(error, "args", ())
        code = args[0] if args and isinstance(args[0], int) else None
        if code in _REJECTED_CODES or isinstance(error, (MySQLdb.DataError, MySQLdb.IntegrityError)):
            return RejectedError(str(error))
        if code in _TRANSIENT_CODES:
            return TransientError(str(error))
        return RetriableError(str(error))
