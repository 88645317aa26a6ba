"""Small asyncio helpers every adapter may use (a shared leaf: it imports nothing of ours).

`wait_event` exists because `asyncio.wait_for` on Python 3.11 swallows a
cancel that arrives in the same loop step as the awaited result: a task
waiting for "an event or a timeout" in a loop then never ends, and
`Daemon.stop()` waited forever for it (seen as a CI run hanging in a test's
teardown). `asyncio.timeout()` propagates the cancel.
"""

from __future__ import annotations

import asyncio


async def wait_event(event: asyncio.Event, timeout: float | None) -> bool:
    """Wait until `event` is set (True) or `timeout` seconds pass (False); None: no limit."""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True
