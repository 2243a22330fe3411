"""Monthly partitions of a CDR table (``"partition": "month"``), and retention by whole partitions
(``"retention_days": N``), for MySQL/MariaDB and PostgreSQL.

A partitioned table is split by ``start_stamp`` into one partition per calendar month (UTC). Its keys
must hold the partitioning column, so the uuid key is ``(uuid, start_stamp)``: a channel's start never
changes from one record of it to the next (hangup record, real-time update, replay, import), so the
upsert still finds the row of that uuid, and each insert checks the uuid against the current month's
index alone, which stays small however many months the table holds. ``start_stamp`` is NOT NULL in
such a table: a record without a start time is refused (and set aside, as any refused record).

Partitions are created ahead (this month and the next ``AHEAD_MONTHS``) when the sink opens and again
every ``CHECK_INTERVAL_S``; a catch-all (MySQL's ``MAXVALUE`` partition, PostgreSQL's DEFAULT one)
takes a row dated beyond them, so no row is ever refused for its date. The first month's partition
also takes every older row (an import of last year's CDR files).

Retention drops a month's partition once every day of it is older than ``retention_days``, and never
this month's or last month's (a call that started on the last evening of the month may still be
written, or replayed from the spool, after midnight). Each drop is logged at WARNING, before and
after.
"""

from __future__ import annotations

import datetime
import logging
import time
from typing import Any, Callable

log = logging.getLogger("fs_cdr.sinks.partitions")

AHEAD_MONTHS = 3
CHECK_INTERVAL_S = 3600.0


def month_start(moment: datetime.datetime, months: int = 0) -> datetime.datetime:
    """The first instant of the month ``months`` after the one ``moment`` is in."""
    index = moment.year * 12 + moment.month - 1 + months
    return datetime.datetime(index // 12, index % 12 + 1, 1)


def partition_name(table: str, upper: datetime.datetime) -> str:
    """The partition of the month that ends at ``upper``: ``p202612`` (MySQL names partitions per
    table), ``cdr_p202612`` (PostgreSQL's are tables)."""
    month = month_start(upper, -1)
    return f"p{month.year:04d}{month.month:02d}" if not table else f"{table}_p{month.year:04d}{month.month:02d}"


def now_utc() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


class MonthlyPartitions:
    """The partitions of one table: the DDL that creates them, and the upkeep (ahead, retention)."""

    def __init__(self, dialect: Any, table: str, retention_days: int = 0,
                 clock: Callable[[], datetime.datetime] = now_utc) -> None:
        self.dialect = dialect
        self.table = table
        self.retention_days = retention_days
        self.clock = clock
        self._next_check = 0.0
        self.mysql = dialect.name == "mysql"

    # -- DDL -------------------------------------------------------------------------------------

    def uppers(self) -> list[datetime.datetime]:
        """The upper bounds of the partitions that must exist now: this month's and the next ones'."""
        now = self.clock()
        return [month_start(now, months) for months in range(1, AHEAD_MONTHS + 2)]

    def table_suffix(self) -> str:
        """What follows CREATE TABLE's closing parenthesis."""
        quote = self.dialect.quote
        if self.mysql:
            parts = [f"PARTITION {quote(partition_name('', upper))} VALUES LESS THAN ('{upper:%Y-%m-%d}')"
                     for upper in self.uppers()]
            parts.append(f"PARTITION {quote('pmax')} VALUES LESS THAN (MAXVALUE)")
            return f" PARTITION BY RANGE COLUMNS({quote('start_stamp')}) (\n  " + ",\n  ".join(parts) + "\n)"
        return f" PARTITION BY RANGE ({quote('start_stamp')})"

    def create_statements(self) -> list[str]:
        """After CREATE TABLE: PostgreSQL's partitions (MySQL's are in the table's own statement)."""
        if self.mysql:
            return []
        quote = self.dialect.quote
        statements = []
        lower = "MINVALUE"
        for upper in self.uppers():
            statements.append(f"CREATE TABLE {quote(partition_name(self.table, upper))} PARTITION OF "
                              f"{quote(self.table)} FOR VALUES FROM ({lower}) TO ('{upper:%Y-%m-%d}')")
            lower = f"'{upper:%Y-%m-%d}'"
        statements.append(f"CREATE TABLE {quote(self.table + '_pdefault')} PARTITION OF {quote(self.table)} DEFAULT")
        return statements

    # -- upkeep ----------------------------------------------------------------------------------

    def existing(self, connection: Any) -> dict[str, datetime.datetime | None]:
        """Partition name -> its upper bound (``None``: the catch-all)."""
        cursor = connection.cursor()
        try:
            if self.mysql:
                cursor.execute("SELECT partition_name, partition_description FROM information_schema.partitions "
                               "WHERE table_schema = DATABASE() AND table_name = %s AND partition_name IS NOT NULL",
                               (self.table,))
            else:
                cursor.execute("SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
                               "JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent "
                               "WHERE p.relname = %s AND p.relnamespace = current_schema()::regnamespace",
                               (self.table,))
            found = {}
            for name, bound in cursor.fetchall():
                found[str(name)] = _upper_bound(str(bound or ""))
        finally:
            cursor.close()
        connection.commit()
        return found

    def due(self) -> bool:
        return time.monotonic() >= self._next_check

    def maintain(self, connection: Any) -> list[str]:
        """Create the partitions ahead that are missing, drop those past retention; the statements run."""
        self._next_check = time.monotonic() + CHECK_INTERVAL_S
        existing = self.existing(connection)
        if not existing:
            return []  # not a partitioned table (one created before "partition" was set)
        statements = self._ahead(existing) + self._expired(existing)
        for statement in statements:
            dropping = " DROP " in f" {statement} " and "PARTITION" in statement or statement.startswith("DROP TABLE")
            if dropping:
                log.warning("table %s: retention of %d days: dropping a month of rows: %s", self.table,
                            self.retention_days, statement)
            cursor = connection.cursor()
            try:
                cursor.execute(statement)
            finally:
                cursor.close()
            connection.commit()
            if dropping:
                log.warning("table %s: dropped (%s)", self.table, statement)
            else:
                log.info("table %s: %s", self.table, statement)
        return statements

    def _ahead(self, existing: dict[str, datetime.datetime | None]) -> list[str]:
        quote, table = self.dialect.quote, self.dialect.quote(self.table)
        bounds = sorted(upper for upper in existing.values() if upper is not None)
        last = bounds[-1] if bounds else None
        wanted = [upper for upper in self.uppers() if last is None or upper > last]
        if not wanted:
            return []
        if last is not None:  # one partition a month, also for the months the sink did not run
            wanted = [month_start(last, months) for months in range(1, 12 * (wanted[-1].year - last.year)
                                                                    + wanted[-1].month - last.month + 1)]
        if self.mysql:
            parts = [f"PARTITION {quote(partition_name('', upper))} VALUES LESS THAN ('{upper:%Y-%m-%d}')"
                     for upper in wanted]
            parts.append(f"PARTITION {quote('pmax')} VALUES LESS THAN (MAXVALUE)")
            return [f"ALTER TABLE {table} REORGANIZE PARTITION {quote('pmax')} INTO ({', '.join(parts)})"]
        statements = []
        lower = last
        for upper in wanted:
            start = f"'{lower:%Y-%m-%d}'" if lower is not None else "MINVALUE"
            statements.append(f"CREATE TABLE {quote(partition_name(self.table, upper))} PARTITION OF {table} "
                              f"FOR VALUES FROM ({start}) TO ('{upper:%Y-%m-%d}')")
            lower = upper
        return statements

    def _expired(self, existing: dict[str, datetime.datetime | None]) -> list[str]:
        if self.retention_days <= 0:
            return []
        now = self.clock()
        # never this month's or last month's partition, whatever the retention says
        limit = min(now - datetime.timedelta(days=self.retention_days), month_start(now, -1))
        quote, table = self.dialect.quote, self.dialect.quote(self.table)
        expired = sorted((upper, name) for name, upper in existing.items() if upper is not None and upper <= limit)
        if self.mysql:
            return [f"ALTER TABLE {table} DROP PARTITION {quote(name)}" for _, name in expired]
        return [f"DROP TABLE {quote(name)}" for _, name in expired]


def _upper_bound(text: str) -> datetime.datetime | None:
    """The upper bound of a partition from MySQL's partition_description (``'2027-01-01 00:00:00'``,
    ``MAXVALUE``) or PostgreSQL's bound (``FOR VALUES FROM (...) TO ('2027-01-01 00:00:00')``, ``DEFAULT``)."""
    if "TO (" in text:
        text = text.rsplit("TO (", 1)[1]
    text = text.strip().strip(")").strip().strip("'")
    if not text or text.upper() in ("MAXVALUE", "DEFAULT"):
        return None
    try:
        return datetime.datetime.fromisoformat(text[:19])
    except ValueError:
        return None
