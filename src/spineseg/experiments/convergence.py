"""Did a cell train to its plateau, and do two cells differ beyond chance on the same patients?

- :func:`plateau`: the stated convergence criterion, computed from a run's per-epoch validation
  DSC (``metrics.csv``): the best validation DSC reached in the last fifth of the updates may
  exceed the best reached before it by at most 1 DSC point. Best-so-far values are compared, so
  a noisy dip costs nothing and a late noisy spike counts as gain (the criterion errs towards
  "not met"). A run with fewer than five validations cannot show a plateau.
- :func:`paired_test`: Wilcoxon's signed-rank test on per-(seed, test patient) DSC differences
  of two cells. Seeds are paired because seed ``k`` of every cell starts from the same sampling
  stream; patients because both cells segment the same scans.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import wilcoxon

from spineseg.errors import DataError, InputError

__all__ = [
    "PLATEAU_CRITERION",
    "PairedTest",
    "Plateau",
    "paired_test",
    "plateau",
    "read_curve",
]

CURVE_COLUMNS: tuple[str, ...] = ("epoch", "train_loss", "val_loss", "val_dice", "lr")


@dataclass(frozen=True)
class PlateauCriterion:
    """Window (fraction of the run's validations, at the end) and the gain it may still show."""

    window_fraction: float = 0.2
    max_gain: float = 0.01  # DSC as a fraction: 1 point
    min_validations: int = 5

    def describe(self) -> str:
        return (f"best validation DSC in the last {self.window_fraction:.0%} of the epochs at most "
                f"{100 * self.max_gain:g} DSC point above the best before them")


PLATEAU_CRITERION = PlateauCriterion()


@dataclass(frozen=True)
class Plateau:
    """Verdict of the criterion on one run. ``gain`` in DSC points (None: too few validations)."""

    met: bool
    gain: float | None
    window_epochs: int
    validations: int
    best_before: float | None
    best_at_end: float | None
    criterion: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Plateau:
        try:
            return cls(**d)
        except TypeError as exc:
            raise DataError(f"malformed plateau record: {exc}") from exc


def plateau(val_dice: Sequence[float],
            criterion: PlateauCriterion = PLATEAU_CRITERION) -> Plateau:
    """Apply ``criterion`` to one run's validation DSC per epoch (fractions, in epoch order).

    Every epoch has the same number of updates under a fixed-budget profile, so the last fifth
    of the epochs is the last fifth of the updates.
    """
    values = [float(v) for v in val_dice]
    if any(not math.isfinite(v) for v in values):
        raise DataError("validation DSC curve holds a non-finite value")
    n = len(values)
    window = max(1, math.ceil(criterion.window_fraction * n))
    if n < criterion.min_validations or n - window < 1:
        return Plateau(False, None, window, n, None, None, criterion.describe())
    before, end = max(values[:n - window]), max(values)
    gain = end - before
    return Plateau(gain <= criterion.max_gain + 1e-12, 100.0 * gain, window, n, before, end,
                   criterion.describe())


def read_curve(metrics_csv: Path) -> list[dict[str, float]]:
    """The per-epoch rows of a trainer's ``metrics.csv`` (the columns the report uses)."""
    try:
        with Path(metrics_csv).open(encoding="utf-8", newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise DataError(f"{metrics_csv}: unreadable ({exc})") from exc
    try:
        return [{k: float(r[k]) for k in CURVE_COLUMNS} for r in rows]
    except (KeyError, ValueError, TypeError) as exc:
        raise DataError(f"{metrics_csv}: not a training metrics file ({exc})") from exc


@dataclass(frozen=True)
class PairedTest:
    """Wilcoxon signed-rank test of cell A − cell B on matched (seed, patient) DSC, in points.

    ``p`` is None when every difference is zero. ``min_p`` is the smallest two-sided p the exact
    test can give at this ``n`` (2 / 2ⁿ): when it exceeds 0.05, no outcome could be significant.
    """

    n: int
    median_diff: float
    mean_diff: float
    a_better: int
    p: float | None
    min_p: float
    patients: int
    seeds: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        p = "p undefined (all differences zero)" if self.p is None else f"p = {self.p:.3g}"
        text = (f"Wilcoxon signed-rank over {self.n} (seed, patient) pairs ({self.seeds} seeds × "
                f"{self.patients} patients): median {self.median_diff:+.2f}, mean "
                f"{self.mean_diff:+.2f} DSC points, A better in {self.a_better}/{self.n}, {p}")
        if self.min_p > 0.05:
            text += (f"; at n = {self.n} even a unanimous result gives p = {self.min_p:.3g}, so "
                     "the test cannot reach 0.05")
        return text + (". Pairs share patients (and seeds), so they are not independent: p is "
                       "optimistic for new patients")


def paired_test(a: Mapping[int, Mapping[str, float]],
                b: Mapping[int, Mapping[str, float]]) -> PairedTest:
    """Test cell ``a`` against cell ``b``; each maps seed → {test case: DSC as a fraction}.

    Only (seed, case) pairs present in both are used; none in common is an :class:`InputError`.
    """
    pairs = [(s, c) for s in sorted(set(a) & set(b)) for c in sorted(set(a[s]) & set(b[s]))]
    if not pairs:
        raise InputError("no (seed, test case) pair in common: nothing to pair")
    diff = np.array([100.0 * (a[s][c] - b[s][c]) for s, c in pairs])
    n = len(diff)
    p: float | None
    if np.all(diff == 0):
        p = None
    else:
        p = float(wilcoxon(diff, alternative="two-sided").pvalue)
    return PairedTest(n=n, median_diff=float(np.median(diff)), mean_diff=float(diff.mean()),
                      a_better=int((diff > 0).sum()), p=p, min_p=float(min(1.0, 2.0 / 2 ** n)),
                      patients=len({c for _, c in pairs}), seeds=len({s for s, _ in pairs}))
