"""Ad spend: the `spend` table (imports) and the config's budgets, as one list of day rows.

A row is an amount spent on one local calendar day, with whatever ad keys
it was reported by (channel, source, medium, campaign, term); a key left
NULL means "not split by it". Imports (`ctrackd spend import`) are stored;
the config's budgets (`spend.budgets`) are not: they are spread over the
days a report asks for, each time, so that editing the config changes the
next report and nothing stale is left in the store. Where imported rows
exist on a budget's day whose keys include every key the budget names (same
values; they may be finer: by campaign and keyword under a channel's
budget), the imported rows (what the ad system says was spent) replace the
budget (what was planned) for that day.

Writes are the CLI's: one short IMMEDIATE transaction with the busy timeout
(the daemon and ctrackd-agi write the same file; WAL lets readers on), an
upsert on the table's unique key (day and keys), so importing a day again
replaces it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import date, timedelta

from ctrackd.configcalls import SPEND_KEYS, SpendConfig
from ctrackd.store.queries import transaction

KEYS = SPEND_KEYS
#: the columns of a row, in the table's order
COLUMNS = ("day", *KEYS, "amount", "currency", "origin")

UPSERT_SPEND = f"""
INSERT INTO spend (day, channel, source, medium, campaign, term, amount, currency, origin,
                   imported_at)
VALUES (:day, :channel, :source, :medium, :campaign, :term, :amount, :currency, :origin,
        :imported_at)
ON CONFLICT (day, {', '.join(f"IFNULL({k}, '')" for k in KEYS)}) DO UPDATE SET
    amount = excluded.amount, currency = excluded.currency, origin = excluded.origin,
    imported_at = excluded.imported_at
"""
_EXISTS = ("SELECT 1 FROM spend WHERE day = ? AND "
           + " AND ".join(f"IFNULL({k}, '') = ?" for k in KEYS))


@dataclass(frozen=True, slots=True)
class SpendRow:
    day: str                        # ISO date, local calendar day
    amount: float
    channel: str | None = None
    source: str | None = None
    medium: str | None = None
    campaign: str | None = None
    term: str | None = None
    currency: str | None = None
    origin: str = "config"          # "config" or the imported file's name

    @property
    def key(self) -> tuple[str, ...]:
        """(day, keys...) as the table's unique index sees it (NULL and '' alike)."""
        return (self.day, *(getattr(self, k) or "" for k in KEYS))

    def as_dict(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in COLUMNS}


def save(conn: sqlite3.Connection, rows: Sequence[SpendRow], *, now: float) -> tuple[int, int]:
    """Write `rows` in one transaction: (rows added, rows replaced)."""
    replaced = 0
    with transaction(conn):
        for row in rows:
            replaced += conn.execute(_EXISTS, row.key).fetchone() is not None
            conn.execute(UPSERT_SPEND, {**row.as_dict(), "imported_at": now})
    return len(rows) - replaced, replaced


def existing(conn: sqlite3.Connection, rows: Iterable[SpendRow]) -> int:
    """How many of `rows` would replace a stored row (`spend import --dry-run`)."""
    return sum(conn.execute(_EXISTS, row.key).fetchone() is not None for row in rows)


def stored(conn: sqlite3.Connection, first: str | None = None,
           last: str | None = None) -> list[SpendRow]:
    """Imported rows with first <= day <= last (ISO days; None: no bound), by day."""
    clauses = [(sql, v) for sql, v in (("day >= ?", first), ("day <= ?", last)) if v]
    where = " WHERE " + " AND ".join(sql for sql, _ in clauses) if clauses else ""
    sql = f"SELECT {', '.join(COLUMNS)} FROM spend{where} ORDER BY day, {', '.join(KEYS)}"
    return [SpendRow(**dict(zip(COLUMNS, row))) for row in
            conn.execute(sql, [v for _, v in clauses])]


def stored_days(conn: sqlite3.Connection) -> tuple[str | None, str | None]:
    """(first, last) day of the imported rows (None, None when there are none)."""
    first, last = conn.execute("SELECT MIN(day), MAX(day) FROM spend").fetchone()
    return first, last


def budget_rows(config: SpendConfig, first: date, last: date,
                currency: str | None) -> list[SpendRow]:
    """The config's budgets as day rows from `first` to `last` (inclusive).

    Two budgets with the same keys on a day add up (a monthly budget and a
    campaign's one-off push, say).
    """
    rows: dict[tuple[str, ...], SpendRow] = {}
    day = first
    while day <= last:
        for budget in config.budgets:
            amount = budget.on(day)
            if amount <= 0:
                continue
            row = SpendRow(day=day.isoformat(), amount=amount, currency=currency,
                           **dict(budget.keys))
            if row.key in rows:
                row = replace(row, amount=rows[row.key].amount + amount)
            rows[row.key] = row
        day += timedelta(days=1)
    return list(rows.values())


def spend_rows(conn: sqlite3.Connection, config: SpendConfig, first: date, last: date,
               currency: str | None) -> list[SpendRow]:
    """Every day row from `first` to `last`: imported rows, and budgets where none replaces them."""
    imported = stored(conn, first.isoformat(), last.isoformat())
    by_day: dict[str, list[SpendRow]] = {}
    for row in imported:
        by_day.setdefault(row.day, []).append(row)
    budgets = [row for row in budget_rows(config, first, last, currency)
               if not any(_covers(done, row) for done in by_day.get(row.day, ()))]
    return sorted(imported + budgets, key=lambda r: r.key)


def _covers(imported: SpendRow, budget: SpendRow) -> bool:
    """Whether an imported row replaces a budget on its day: it names every key the budget
    names, with the same value (and may name more: a Direct report by campaign and keyword,
    imported with --channel yandex-direct, replaces the channel's budget, not adds to it)."""
    return all(getattr(imported, k) == getattr(budget, k)
               for k in KEYS if getattr(budget, k) is not None)
