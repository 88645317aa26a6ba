"""Shared test fixtures: where the recorded Asterisk captures live."""

from __future__ import annotations

from pathlib import Path

import pytest

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
