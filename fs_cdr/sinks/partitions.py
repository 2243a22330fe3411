"""Partitions of a CDR table by day, week or month of ``start_stamp`` (``"partition": "day" | "week" |
"month"``), and retention by whole partitions (``"retention_days": N``), for MySQL/MariaDB and PostgreSQL.

A partitioned table is split by ``start_stamp`` into one partition per calendar day, ISO week (Monday
to Sunday) or calendar month, all in UTC. Its keys must hold the partitioning column, so the uuid key
is ``(uuid, start_stamp)``: a channel's start never changes from one record of it to the next (hangup
record, real-time update, replay, import), so the upsert still finds the row of that uuid, and each
insert checks the uuid against the current partition's index alone, which stays small however many
partitions the table holds. That is what keeps the write rate of a growing table: the partition's
random indexes (uuid, call_uuid, destination) must fit in the server's memory, so choose the period
by the volume (docs/performance.md): a month of a few hundred thousand legs, a week or a day beyond.
``start_stamp`` is NOT NULL in such a table: a record without a start time is refused (and set aside,
as any refused record).

Partitions are created ahead (this period and the next ``AHEAD[period]``) when the sink opens and
again every ``CHECK_INTERVAL_S``; a catch-all (MySQL's ``MAXVALUE`` partition, PostgreSQL's DEFAULT
one) takes a row dated beyond them, so no row is ever refused for its date. The first partition also
takes every older row (an import of last year's CDR files).

Retention drops a partition once every day of it is older than ``retention_days``, and never this
period's or the one before (a call that started on the last evening of it may still be written, or
replayed from the spool, after midnight). Each drop is logged at WARNING, before and after.
"""

from __future__ import annotations

import datetime
import logging
import time
from typing import Any, Callable

log = logging.getLogger("fs_cdr.sinks.partitions")

PERIODS = ("day", "week", "month")
#: How many periods ahead of this one exist (and are created every CHECK_INTERVAL_S): two weeks or more.
AHEAD = {"day": 14, "week": 4, "month": 3}
CHECK_INTERVAL_S = 3600.0
#: Partitions one MySQL statement creates at most (0.4 s here on a table of 400 partitions; a year of
#: days at once took 4.3 s, beyond what a loaded server answers within the connection's timeout).
REORGANIZE_AT_MOST = 31


def period_start(moment: datetime.datetime, period: str = "month", count: int = 0) -> datetime.datetime:
    """The first instant of the day, ISO week (Monday) or month ``count`` periods after the one
    ``moment`` is in."""
    if period == "month":
        index = moment.year * 12 + moment.month - 1 + count
        return datetime.datetime(index // 12, index % 12 + 1, 1)
    day = datetime.datetime(moment.year, moment.month, moment.day)
    if period == "week":
        return day - datetime.timedelta(days=day.weekday() - 7 * count)
    return day + datetime.timedelta(days=count)


def partition_name(table: str, upper: datetime.datetime, period: str = "month") -> str:
    """The partition of the period that ends at ``upper``, named by its first day: ``p202612`` for a
    month, ``p20261130`` for a week or a day (MySQL names partitions per table), ``cdr_p202612``
    (PostgreSQL's are tables)."""
    first = period_start(upper, period, -1)
    name = f"p{first:%Y%m}" if period == "month" else f"p{first:%Y%m%d}"
    return f"{table}_{name}" if table else name


def now_utc() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


class Partitions:
    """The partitions of one table: the DDL that creates them, and the upkeep (ahead, retention)."""

    def __init__(self, dialect: Any, table: str, retention_days: int = 0,
                 clock: Callable[[], datetime.datetime] = now_utc, period: str = "month") -> None:
        if period not in PERIODS:
            raise ValueError(f"partition period {period!r}")
        self.dialect = dialect
        self.table = table
        self.retention_days = retention_days
        self.clock = clock
        self.period = period
        self._next_check = 0.0
        self.mysql = dialect.name == "mysql"

    # -- DDL -------------------------------------------------------------------------------------

    def uppers(self) -> list[datetime.datetime]:
        """The upper bounds of the partitions that must exist now: this period's and the next ones'."""
        now = self.clock()
        return [period_start(now, self.period, count) for count in range(1, AHEAD[self.period] + 2)]

    def name(self, upper: datetime.datetime, table: str = "") -> str:
        return partition_name(table, upper, self.period)

    def table_suffix(self) -> str:
        """What follows CREATE TABLE's closing parenthesis."""
        quote = self.dialect.quote
        if self.mysql:
            parts = [f"PARTITION {quote(self.name(upper))} VALUES LESS THAN ('{upper:%Y-%m-%d}')"
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
            statements.append(f"CREATE TABLE {quote(self.name(upper, self.table))} PARTITION OF "
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
                log.warning("table %s: retention of %d days: dropping a %s of rows: %s", self.table,
                            self.retention_days, self.period, statement)
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
        horizon = self.uppers()
        wanted = [upper for upper in horizon if last is None or upper > last]
        if not wanted:
            return []
        if last is not None:  # one partition a period, also for the periods the sink did not run
            wanted = [period_start(last, self.period, 1)]
            while wanted[-1] < horizon[-1]:
                wanted.append(period_start(wanted[-1], self.period, 1))
        if self.mysql:  # a month of days at most per statement: each stays well within the timeout
            statements = []
            for first in range(0, len(wanted), REORGANIZE_AT_MOST):
                parts = [f"PARTITION {quote(self.name(upper))} VALUES LESS THAN ('{upper:%Y-%m-%d}')"
                         for upper in wanted[first:first + REORGANIZE_AT_MOST]]
                parts.append(f"PARTITION {quote('pmax')} VALUES LESS THAN (MAXVALUE)")
                statements.append(f"ALTER TABLE {table} REORGANIZE PARTITION {quote('pmax')} INTO ({', '.join(parts)})")
            return statements
        statements = []
        lower = last
        for upper in wanted:
            start = f"'{lower:%Y-%m-%d}'" if lower is not None else "MINVALUE"
            statements.append(f"CREATE TABLE {quote(self.name(upper, self.table))} PARTITION OF {table} "
                              f"FOR VALUES FROM ({start}) TO ('{upper:%Y-%m-%d}')")
            lower = upper
        return statements

    def _expired(self, existing: dict[str, datetime.datetime | None]) -> list[str]:
        if self.retention_days <= 0:
            return []
        now = self.clock()
        # never this period's partition or the one before, whatever the retention says
        limit = min(now - datetime.timedelta(days=self.retention_days), period_start(now, self.period, -1))
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
