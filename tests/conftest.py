"""Shared test fixtures.

Tests that need the real CT data in ``../shared/data`` (or ``$SPINESEG_SHARED_DATA``) use the
``shared_data`` fixture. Without the folder they are left out at collection and the run ends with
one line saying how many and why (not one SKIPPED line each); under ``CI=true`` they fail
instead, so CI can never go green without the real-data checks.
"""

from __future__ import annotations

import locale
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _shared_data_dir() -> Path:
    env = os.environ.get("SPINESEG_SHARED_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


def _missing_data_reason() -> str | None:
    path = _shared_data_dir()
    if (path / "README.md").is_file():
        return None
    return f"real CT data not found at {path} (set SPINESEG_SHARED_DATA)"


def _under_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


_LEFT_OUT = pytest.StashKey[int]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _under_ci() or _missing_data_reason() is None:
        return
    needs = [item for item in items if "shared_data" in getattr(item, "fixturenames", ())
             or item.get_closest_marker("shared_data") is not None]
    if needs:
        left_out = set(needs)
        items[:] = [item for item in items if item not in left_out]
        config.hook.pytest_deselected(items=needs)
        config.stash[_LEFT_OUT] = len(needs)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, exitstatus: int,
                            config: pytest.Config) -> None:
    count = config.stash.get(_LEFT_OUT, 0)
    if count:
        terminalreporter.write_line(f"{count} tests that need the real CT data were not run: "
                                    f"{_missing_data_reason()}")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to ``../shared/data`` (override with ``SPINESEG_SHARED_DATA``)."""
    reason = _missing_data_reason()
    if reason is not None:
        if _under_ci():
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)
    return _shared_data_dir()


@pytest.fixture(autouse=True)
def _quiet_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    # Keep tests predictable on 2-core machines.
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "2"))


@pytest.fixture(autouse=True)
def _locale_left_alone():
    # ITK/GDCM writers set the process locale to "C"; a test (or library call) that lets one do
    # so makes every later open() decode ASCII, and the failure shows up in an unrelated test.
    before = locale.setlocale(locale.LC_ALL, None)
    yield
    after = locale.setlocale(locale.LC_ALL, None)
    if after != before:
        locale.setlocale(locale.LC_ALL, before)
        pytest.fail(f"the test changed the process locale ({before!r} -> {after!r}); wrap "
                    "direct SimpleITK writes in spineseg.io.itk_common.preserve_locale()")


def write_tiny_model(path: Path, seed: int = 0) -> Path:
    """A random-weight msrunet model file (width 8, depth 2, 2 mm in-plane); ``seed`` gives other
    weights, hence another SHA-256."""
    import torch

    from spineseg.data.preprocess import Preprocessing
    from spineseg.inference.model_file import save_segmentation_model
    from spineseg.models import build_model

    torch.manual_seed(seed)
    net = build_model("msrunet", base_width=8, depth=2)
    save_segmentation_model(path, model_name="msrunet", model_config=net.config.to_dict(),
                            state_dict=net.state_dict(),
                            preprocessing=Preprocessing(spacing_xy=(2.0, 2.0)))
    return path


@pytest.fixture(scope="session")
def tiny_model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model file: the pipeline's files, geometry and errors can be tested without the
    shipped model's cost."""
    return write_tiny_model(tmp_path_factory.mktemp("model") / "tiny.pt")
