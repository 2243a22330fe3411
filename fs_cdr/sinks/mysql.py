"""MySQL and MariaDB through mysqlclient (the C connector): utf8mb4, multi-row upserts.

mysqlclient rewrites ``executemany`` of ``INSERT ... VALUES (...) ON DUPLICATE KEY UPDATE`` into
multi-row statements of at most ``max_stmt_length`` bytes, which is what makes batching pay here.
"""

from __future__ import annotations

from typing import Any, Sequence

from ..config import DatabaseConfig
from ..errors import RejectedError, RetriableError, SinkError
from ..schema import Column
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
    }

    def quote(self, identifier: str) -> str:
        return f"`{identifier}`"

    def create_table(self, table: str, columns: Sequence[Column]) -> str:
        return super().create_table(table, columns) + " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin"

    def upsert(self, table: str, names: Sequence[str]) -> str:
        columns = ", ".join(self.quote(name) for name in names)
        values = ", ".join("%s" for _ in names)
        updates = ", ".join(f"{self.quote(name)} = VALUES({self.quote(name)})" for name in names if name != "uuid")
        return f"INSERT INTO {self.quote(table)} ({columns}) VALUES ({values}) ON DUPLICATE KEY UPDATE {updates}"

    def columns_query(self, table: str) -> tuple[str, tuple[Any, ...]]:
        return (
            "SELECT column_name FROM information_schema.columns WHERE table_schema = DATABASE() AND table_name = %s",
            (table,),
        )

    def connect(self, config: DatabaseConfig, timeout_s: float) -> Any:
        import MySQLdb

        timeout = max(1, int(round(timeout_s)))
        return MySQLdb.connect(
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
        )

    def classify(self, error: BaseException) -> SinkError:
        import MySQLdb

        args = getattr(error, "args", ())
        code = args[0] if args and isinstance(args[0], int) else None
        if code in _REJECTED_CODES or isinstance(error, (MySQLdb.DataError, MySQLdb.IntegrityError)):
            return RejectedError(str(error))
        return RetriableError(str(error))
