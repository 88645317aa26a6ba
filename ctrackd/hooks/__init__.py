"""Hooks: events sent outside the daemon (webhooks, commands) from a durable outbox.

`outbox` holds the SQL (plain sqlite3, callable from any transaction);
`dispatcher` is the daemon's task that delivers and retries. An event is
written to the outbox in the same transaction that decides it, so a receiver
that is down, or a daemon that restarts, loses nothing; delivery happens off
the call's path. See docs/hooks.md.
"""
