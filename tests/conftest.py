"""Shared test fixtures.

Tests that need the real CT data in ``../shared/data`` use the ``shared_data`` fixture: without the
folder they skip (saying why); under ``CI=true`` they fail instead, so CI can never go green by
skipping the real-data checks.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _shared_data_dir() -> Path:
    env = os.environ.get("SPINESEG_SHARED_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to ``../shared/data`` (override with ``SPINESEG_SHARED_DATA``)."""
    path = _shared_data_dir()
    if not (path / "README.md").is_file():
        reason = f"real CT data not found at {path} (set SPINESEG_SHARED_DATA)"
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)
    return path


@pytest.fixture(autouse=True)
def _quiet_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    # Keep tests predictable on 2-core machines.
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "2"))
