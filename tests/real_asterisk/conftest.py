"""The `pbx` fixture: a real Asterisk and ctrackd, started, stopped after the test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.real_asterisk.pbx import Pbx, running


@pytest.fixture
async def pbx(tmp_path: Path) -> AsyncIterator[Pbx]:
    async with running(Pbx(tmp_path)) as made:
        yield made
