"""SQLite: the embedded default. One file, no server; the table is created on first use.

WAL mode with ``synchronous=FULL``: a committed batch survives a power cut, and readers (reports,
``sqlite3`` on the command line) never block the writer.
"""

from __future__ import annotations

import os
import sqlite3
from typing import Any, Optional, Sequence

from ..errors import SinkError
from .database import DatabaseConfig
from .sql import Dialect, rejected_or_retriable


class SQLite(Dialect):
    name = "sqlite"
    placeholder = "?"
    types = {
        "key": "TEXT NOT NULL",
        "short": "TEXT",
        "text": "TEXT",
        "long": "TEXT",
        "int": "INTEGER",
        "number": "REAL",
        "json": "TEXT",
        # ISO 8601 text in UTC: sorts as time does, and SQLite's date functions read it
        "stamp": "TEXT",
    }

    def indexes_query(self, table: str) -> Optional[tuple[str, tuple[Any, ...]]]:
        return ("SELECT l.name, i.name FROM pragma_index_list(?) AS l, pragma_index_info(l.name) AS i "
                "ORDER BY l.name, i.seqno", (table,))

    def upsert(self, table: str, names: Sequence[str]) -> str:
        return self.on_conflict_upsert(table, names, "excluded")

    def columns_query(self, table: str) -> tuple[str, tuple[Any, ...]]:
        return "SELECT name FROM pragma_table_info(?)", (table,)

    def connect(self, config: DatabaseConfig, timeout_s: float) -> Any:
        os.makedirs(os.path.dirname(os.path.abspath(config.path)), exist_ok=True)
        connection = sqlite3.connect(config.path, timeout=timeout_s, check_same_thread=False)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=FULL")
        return connection

    def classify(self, error: BaseException) -> SinkError:
        # UnicodeEncodeError (a lone surrogate) and OverflowError (an integer past 64 bits) are the
        # record's fault: retrying cannot help, so they are set aside like a refused row.
        return rejected_or_retriable(error, (sqlite3.IntegrityError, sqlite3.DataError, sqlite3.InterfaceError,
                                             UnicodeEncodeError, OverflowError))
