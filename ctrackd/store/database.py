"""The daemon's store: aiosqlite with a group-commit writer.

The AGI route answers Asterisk only once the attribution is durable, so the
cost of a commit (an fsync of the WAL) sits on every call's path. One writer
task takes everything queued since its last commit, writes it in ONE
transaction and resolves all the waiters together: 100 AGI sessions arriving
at once cost one commit, not 100, and a lone call costs exactly one.

Nothing is dropped silently: a failed batch fails its waiters with the
exception. A row-specific error (a constraint) would otherwise cost the other
calls of the batch their records, so those are retried one by one; an error
of the database itself (locked, disk full) fails the batch as it is.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosqlite
import structlog

from ctrackd.attribution.records import Attribution, CallProgress
from ctrackd.store import queries
from ctrackd.store.schema import StoreError, migrate

log = structlog.get_logger("ctrackd.store")

#: seconds between WAL checkpoints (off the call path; see _checkpoint_forever)
CHECKPOINT_SECONDS = 5.0

# Errors that belong to a row rather than to the database: worth isolating.
_ROW_ERRORS = (sqlite3.IntegrityError, sqlite3.InterfaceError, sqlite3.ProgrammingError)


@dataclass(slots=True)
class _Write:
    sql: str
    rows: list[dict[str, Any]]
    done: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())


class Store:
    """Use `await Store.open(path)`; every save returns once its rows are committed."""

    def __init__(self, db: aiosqlite.Connection, path: Path) -> None:
        self.path = path
        self.batches_committed = 0  # how many commits the writes cost (tests, metrics)
        self._db = db
        self._pending: list[_Write] = []
        self._wakeup = asyncio.Event()
        self._closing = False
        self._lock = asyncio.Lock()  # a read must not land inside the writer's transaction
        self._inflight: list[_Write] = []
        self._writer = asyncio.create_task(self._write_forever(), name="store-writer")
        self._writer.add_done_callback(self._on_writer_done)
        self._commits_since_checkpoint = 0
        self.checkpoint_errors = 0
        self._checkpointer = asyncio.create_task(
            self._checkpoint_forever(CHECKPOINT_SECONDS), name="store-checkpoint")

    @property
    def writer(self) -> asyncio.Task[None]:
        """The group-commit task: it ends only on close(); if it dies, the store is dead."""
        return self._writer

    @classmethod
    async def open(cls, path: str | Path, *, synchronous: str = "normal") -> Store:
        """Create the folder and the database if needed, migrate, and return once usable."""
        path = Path(path)
        queries.pragmas(synchronous)  # a bad setting fails here, before any file is touched
        # Migrations are short and run once: plain sqlite3, in this thread.
        conn = queries.connect(path, readonly=False, synchronous=synchronous)
        try:
            migrate(conn)
        finally:
            conn.close()
        db = await aiosqlite.connect(path, isolation_level=None)
        ready = False
        try:
            for pragma in queries.pragmas(synchronous):
                await db.execute(pragma)
            # checkpoints happen in _checkpoint_forever, not inside our commits
            await db.execute("PRAGMA wal_autocheckpoint = 0")
            ready = True
        finally:
            if not ready:  # whatever stopped us (even a cancel), the thread ends
                await db.close()
        return cls(db, path)

    async def save_attribution(self, a: Attribution) -> None:
        await self._submit(queries.UPSERT_ATTRIBUTION, [queries.attribution_params(a)])

    async def save_progress(self, progresses: Iterable[CallProgress]) -> None:
        rows = [queries.progress_params(p) for p in progresses]
        if rows:
            await self._submit(queries.UPSERT_PROGRESS_IF_OPEN, rows)

    async def save_pool_usage(self, rows: list[dict[str, Any]]) -> None:
        """Usage buckets of the pools (`queries.UPSERT_POOL_USAGE` columns)."""
        if rows:
            await self._submit(queries.UPSERT_POOL_USAGE, rows)

    async def write(self, sql: str, rows: list[dict[str, Any]]) -> None:
        """Any upsert of the `INSERT ... VALUES (:name, ...) ON CONFLICT ...` shape
        (see queries.multi_row), group-committed like the others; returns once durable."""
        if rows:
            await self._submit(sql, rows)

    async def open_calls(self) -> list[CallProgress]:
        async with self._lock:
            rows = await self._db.execute_fetchall(queries.SELECT_OPEN_PROGRESS)
        return [queries.progress_from_row(row) for row in rows]

    async def close(self) -> None:
        """Write what is queued, then close. Saves after this raise StoreError."""
        if self._closing:
            return
        self._closing = True
        self._wakeup.set()
        self._checkpointer.cancel()
        try:
            await self._writer
        finally:
            await asyncio.gather(self._checkpointer, return_exceptions=True)
            await self._db.close()
            await asyncio.to_thread(_checkpoint, self.path)  # leave a small WAL behind

    async def _submit(self, sql: str, rows: list[dict[str, Any]]) -> None:
        if self._closing:
            raise StoreError("the call store is closed")
        if self._writer.done():  # it died: say so rather than wait forever
            raise StoreError("the call store writer has stopped")
        write = _Write(sql, rows)
        self._pending.append(write)
        self._wakeup.set()
        # shield: a cancelled AGI session must not cancel a write the batch holds.
        await asyncio.shield(write.done)

    async def _write_forever(self) -> None:
        while True:
            if not self._pending:
                if self._closing:
                    return
                await self._wakeup.wait()
                self._wakeup.clear()
                continue
            batch = self._inflight = self._pending
            self._pending = []
            async with self._lock:
                await self._write_batch(batch)
            self._inflight = []

    async def _write_batch(self, batch: list[_Write]) -> None:
        error: Exception | None = None
        try:
            await self._commit(batch)
        except _ROW_ERRORS as exc:
            if len(batch) > 1:  # find the bad write; the others still get committed
                for write in batch:
                    await self._write_batch([write])
                return
            error = exc
        except Exception as exc:  # noqa: BLE001 - handed to every waiter, never lost
            error = exc
        else:
            self.batches_committed += 1
        for write in batch:
            _settle(write.done, error)

    def _on_writer_done(self, task: asyncio.Task[None]) -> None:
        # Cancelled or crashed: nobody may wait forever for a commit that will not come.
        error = StoreError("the call store writer has stopped")
        for write in self._inflight + self._pending:
            _settle(write.done, error)
        self._inflight, self._pending = [], []

    async def _commit(self, batch: list[_Write]) -> None:
        # One multi-row statement per statement kind (autocommit: each is its
        # own atomic transaction, one round trip). Order across kinds does not
        # matter (each side writes its own columns); within a kind it is the
        # arrival order, and a call id twice in one statement upserts in order.
        by_sql: dict[str, list[dict[str, Any]]] = {}
        for write in batch:
            by_sql.setdefault(write.sql, []).extend(write.rows)
        for sql, rows in by_sql.items():
            for start in range(0, len(rows), queries.MAX_ROWS_PER_STATEMENT):
                statement, params = queries.multi_row(
                    sql, rows[start:start + queries.MAX_ROWS_PER_STATEMENT])
                await self._db.execute(statement, params)
        self._commits_since_checkpoint += 1

    async def _checkpoint_forever(self, interval: float) -> None:
        """Checkpoint the WAL off the call path.

        SQLite's automatic checkpoint runs inside a commit every 1000 pages
        and fsyncs: that commit (an AGI session waiting on it) took 7 ms
        instead of 0.5. The writer turns it off; this task checkpoints
        PASSIVE (never blocking a writer) from its own connection and thread.
        """
        while True:
            await asyncio.sleep(interval)
            if self._commits_since_checkpoint:
                self._commits_since_checkpoint = 0
                try:
                    await asyncio.to_thread(_checkpoint, self.path)
                except sqlite3.Error as exc:  # try again next time; the WAL only grows
                    self.checkpoint_errors += 1
                    log.warning("store_checkpoint_failed", error=repr(exc), path=str(self.path))


def _checkpoint(path: Path) -> None:
    conn = sqlite3.connect(path, timeout=1.0)
    try:
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
    finally:
        conn.close()


def _settle(future: asyncio.Future[None], exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is None:
        future.set_result(None)
    else:
        future.set_exception(exc)
