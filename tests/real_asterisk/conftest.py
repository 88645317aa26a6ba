"""The `pbx` fixture: a real Asterisk and ctrackd, started, stopped after the test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.real_asterisk.pbx import Pbx


@pytest.fixture
async def pbx(tmp_path: Path) -> AsyncIterator[Pbx]:
    made = Pbx(tmp_path)
    try:
        await made.asterisk.start()
        made.ctrackd.start()
        yield made
    finally:
        made.ctrackd.stop()
        await made.asterisk.stop()
    assert made.ctrackd.problems() == []
