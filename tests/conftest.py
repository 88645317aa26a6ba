"""Shared test fixtures: where the recorded Asterisk captures live."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.simulator.ami_server import FakeAmi

ROOT = Path(__file__).resolve().parent.parent
CAPTURES = (ROOT.parent / "shared" / "asterisk-captures")
if not CAPTURES.is_dir():  # CI clones the repo with shared/ beside it; allow an override
    import os
    CAPTURES = Path(os.environ.get("CTRACKD_CAPTURES", str(CAPTURES)))


@pytest.fixture(scope="session")
def captures() -> Path:
    if not CAPTURES.is_dir():
        pytest.fail(f"Asterisk captures not found at {CAPTURES} (set CTRACKD_CAPTURES)")
    return CAPTURES


@pytest.fixture
async def ami() -> AsyncIterator[FakeAmi]:
    """Asterisk's AMI side on a free loopback port (user ctrackd, secret "secret")."""
    server = FakeAmi()
    await server.start()
    yield server
    await server.stop()
