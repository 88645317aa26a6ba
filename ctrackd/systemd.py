"""systemd integration: readiness, reload and watchdog notifications (Type=notify).

READY=1 is sent only once the FastAGI port is bound, so `systemctl start`
returns when Asterisk can really reach us. The watchdog ping runs as a task
on the daemon's own event loop: if the loop stalls, pings stop and systemd
restarts the daemon, which is what we want from a tracker that must never
sit half alive on the call path.
"""

from __future__ import annotations

import asyncio
import os
import time

import sdnotify


class SystemdNotifier:
    def __init__(self) -> None:
        self._notifier = sdnotify.SystemdNotifier()
        self._watchdog: asyncio.Task[None] | None = None

    def ready(self, status: str) -> None:
        self._notifier.notify(f"READY=1\nSTATUS={status}")

    def reloading(self) -> None:
        monotonic_usec = int(time.monotonic() * 1_000_000)
        self._notifier.notify(f"RELOADING=1\nMONOTONIC_USEC={monotonic_usec}")

    def stopping(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        self._notifier.notify("STOPPING=1")

    def start_watchdog(self) -> None:
        """Ping at half of WatchdogSec (systemd passes it as WATCHDOG_USEC)."""
        usec = os.environ.get("WATCHDOG_USEC")
        if not usec or not usec.isdigit() or self._watchdog is not None:
            return
        self._watchdog = asyncio.create_task(self._ping(int(usec) / 2_000_000))

    async def _ping(self, interval: float) -> None:
        while True:
            self._notifier.notify("WATCHDOG=1")
            await asyncio.sleep(interval)
