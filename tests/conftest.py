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


@pytest.fixture(scope="session")
def tiny_model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight msrunet model file (width 8, depth 2, 2 mm in-plane): the pipeline's
    files, geometry and errors can be tested without the shipped model's cost."""
    import torch

    from spineseg.data.preprocess import Preprocessing
    from spineseg.inference.model_file import save_segmentation_model
    from spineseg.models import build_model

    torch.manual_seed(0)
    net = build_model("msrunet", base_width=8, depth=2)
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    save_segmentation_model(path, model_name="msrunet", model_config=net.config.to_dict(),
                            state_dict=net.state_dict(),
                            preprocessing=Preprocessing(spacing_xy=(2.0, 2.0)))
    return path
