"""The converged profile's machinery without training: plateau criterion, paired test, the split
on real patients, the protocol record, the training order and the curves figure."""

from __future__ import annotations

import dataclasses
import math

import pytest

from spineseg.data.manifest import CaseEntry, Manifest
from spineseg.errors import DataError, InputError
from spineseg.experiments.convergence import paired_test, plateau, read_curve
from spineseg.experiments.figures import figure_curves
from spineseg.experiments.profiles import PROFILES, check_real_patient_split
from spineseg.experiments.runner import SeedResult, schedule, summarize
from spineseg.experiments.specs import TABLES, runs_of
from spineseg.experiments.tables import reading


def test_plateau_met_on_a_flat_tail_and_not_on_a_rising_one() -> None:
    flat = [0.2, 0.5, 0.7, 0.78, 0.80, 0.805, 0.80, 0.806, 0.81, 0.809]  # +0.4 points at the end
    v = plateau(flat)
    assert v.met and v.window_epochs == 2 and v.validations == 10
    assert v.gain == pytest.approx(0.4) and v.best_before == pytest.approx(0.806)
    rising = [0.2, 0.3, 0.4, 0.5, 0.55, 0.6, 0.65, 0.7, 0.72, 0.74]  # +4 points in the last fifth
    v = plateau(rising)
    assert not v.met and v.gain == pytest.approx(4.0)
    # A dip at the end is no gain (best-so-far); a late spike above 1 point is.
    assert plateau([0.5, 0.7, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.6, 0.5]).met
    assert not plateau([0.5, 0.7, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.83]).met
    # Too few validations cannot show a plateau.
    short = plateau([0.1, 0.9, 0.9, 0.9])
    assert not short.met and short.gain is None
    with pytest.raises(DataError):
        plateau([0.1, math.nan, 0.2, 0.3, 0.4])


def test_read_curve_parses_metrics_csv(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,train_loss,val_loss,val_dice,lr,seconds\n1,0.9,0.8,0.25,0.001,3.0\n"
                    "2,0.7,0.6,0.5,0.001,3.1\n", encoding="utf-8")
    assert [r["val_dice"] for r in read_curve(path)] == [0.25, 0.5]
    path.write_text("epoch,loss\n1,0.5\n", encoding="utf-8")
    with pytest.raises(DataError):
        read_curve(path)


def test_paired_test_on_known_inputs() -> None:
    b = {s: {p: 0.70 + 0.01 * i for i, p in enumerate(("p1", "p2", "p3"))} for s in (0, 1)}
    a = {s: {p: v + 0.02 * (1 + s) for p, v in b[s].items()} for s in b}
    t = paired_test(a, b)
    # Six pairs, all in A's favour: the exact two-sided p is 2 / 2^6.
    assert (t.n, t.a_better, t.patients, t.seeds) == (6, 6, 3, 2)
    assert t.p == pytest.approx(2 / 64) and t.min_p == pytest.approx(2 / 64)
    assert t.median_diff == pytest.approx(3.0) and t.mean_diff == pytest.approx(3.0)
    assert "cannot reach" not in t.describe()
    # Reversed, the same p and the opposite sign.
    r = paired_test(b, a)
    assert r.p == pytest.approx(t.p) and r.a_better == 0 and r.median_diff < 0
    # Only (seed, patient) pairs both cells have are used; three pairs can never reach 0.05.
    few = paired_test({0: {"p1": 0.9, "p2": 0.8, "p3": 0.7}}, {0: {"p1": 0.8, "p2": 0.7,
                                                                   "p3": 0.6, "p4": 0.1}})
    assert few.n == 3 and few.min_p == pytest.approx(0.25) and "cannot reach 0.05" in few.describe()
    assert paired_test({0: {"p1": 0.5}}, {0: {"p1": 0.5}}).p is None
    with pytest.raises(InputError):
        paired_test({0: {"p1": 0.5}}, {1: {"p1": 0.5}})


def _case(split: str, kind: str, patient: str) -> CaseEntry:
    return CaseEntry(split=split, kind=kind, patient=patient, source="-", shape=[1, 1, 1],
                     spacing=[2.0, 2.0, 1.0], slices=1, fg_slices=1, image_sha256="",
                     mask_sha256="")


def _manifest(**cases: CaseEntry) -> Manifest:
    return Manifest(preprocessing={"spacing_xy": [2.0, 2.0]}, cases=dict(cases))


def test_real_patient_split_check() -> None:
    good = dict(a=_case("test", "real", "ts_abdomen"), b=_case("test", "real", "ts_chest"),
                c=_case("test", "real", "verse005"), d=_case("val", "real", "verse008"),
                e=_case("train", "real", "verse012"), f=_case("train", "phantom", "phantom_1"))
    check_real_patient_split(_manifest(**good))
    PROFILES["converged"].check_dataset(_manifest(**good))
    # A noise copy of a test patient in training is a leak.
    with pytest.raises(DataError, match="verse005 also in training"):
        check_real_patient_split(_manifest(**good, g=_case("train", "real", "verse005")))
    with pytest.raises(DataError, match="also in training or validation"):
        check_real_patient_split(_manifest(**{**good, "d": _case("val", "real", "ts_chest")}))
    with pytest.raises(DataError, match="phantom"):
        check_real_patient_split(_manifest(**good, g=_case("test", "phantom", "phantom_2")))
    with pytest.raises(DataError, match="phantom"):
        check_real_patient_split(_manifest(**{**good, "d": _case("val", "phantom", "ph")}))
    with pytest.raises(DataError, match="at least 3"):
        check_real_patient_split(_manifest(**{k: v for k, v in good.items() if k != "c"}))
    with pytest.raises(DataError, match="validation"):
        check_real_patient_split(_manifest(**{k: v for k, v in good.items() if k != "d"}))
    # The converged profile also insists on its grid.
    one_mm = _manifest(**good)
    one_mm.preprocessing["spacing_xy"] = [1.0, 1.0]
    with pytest.raises(InputError, match="--spacing 2"):
        PROFILES["converged"].check_dataset(one_mm)


def test_converged_profile_is_an_equal_plateau_budget() -> None:
    c = PROFILES["converged"]
    assert c.updates(10_000) >= 1500 and c.patience == 0  # equal, fixed budget per cell
    assert (c.seeds, c.patch_size, c.spacing_mm, c.sampling) == (3, 128, 2.0, "case")
    assert 8 <= c.base_width <= 16
    tc = c.train_config(runs_of(list(TABLES.values()))[0], data="d", out="o", seed=2,
                        device="cpu")
    assert (tc.sampling, tc.schedule, tc.seed) == ("case", c.schedule, 2)
    assert "2 mm grid" in c.budget() and "every case equally likely" in c.budget()
    # Folders written before the later fields existed keep their protocol record.
    assert "schedule" not in PROFILES["quick"].protocol()
    assert c.protocol()["spacing_mm"] == 2.0 and c.protocol()["min_test_patients"] == 3
    assert dataclasses.replace(c, lr_patience=4).protocol() != c.protocol()


def test_schedule_is_seed_major() -> None:
    runs = runs_of(list(TABLES.values()))
    order = schedule(runs, 3)
    assert len(order) == 3 * len(runs)
    assert [s for _, s in order[:len(runs)]] == [0] * len(runs)
    assert order[len(runs)] == (runs[0], 1)


def _result(key: str, seed: int, curve: list[float] | None) -> SeedResult:
    rows = None if curve is None else [
        {"epoch": i + 1.0, "train_loss": 0.5, "val_loss": 0.5, "val_dice": v, "lr": 1e-3}
        for i, v in enumerate(curve)]
    return SeedResult(key=key, seed=seed, dsc=0.5, iou=0.3, mean_slice_dice=0.5,
                      test_cases=("p1",), test_kinds=("real",), case_dice={"p1": 0.5},
                      epochs_completed=len(curve or ()), best_epoch=1, best_val_dice=0.5,
                      train_seconds=1.0, eval_seconds=1.0, patient_dice={"p1": 0.5},
                      curve=rows, plateau=None if curve is None else plateau(curve).to_dict())


def test_curves_figure(tmp_path) -> None:  # type: ignore[no-untyped-def]
    results = {"table1/unet-dice": [_result("table1/unet-dice", s, [0.1, 0.4, 0.6, 0.7, 0.7, 0.7])
                                    for s in (0, 1)],
               "table3/case1": [_result("table3/case1", 0, None)]}
    again = SeedResult.from_dict(results["table1/unet-dice"][0].to_dict())
    assert again.plateau_verdict is not None and again.plateau_verdict.met
    out = figure_curves(results, tmp_path / "curves.png",
                        keys=["table1/unet-dice", "table3/case1", "table3/case2"])
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    with pytest.raises(DataError):
        figure_curves({}, tmp_path / "none.png")


def test_reading_compares_runs_on_the_seeds_all_of_them_finished() -> None:
    t3 = TABLES["table3"]
    keys = [t3.cell(c).run.key for c in ("case1", "case2", "case3")]

    def res(key: str, seed: int, dsc: float) -> SeedResult:
        r = _result(key, seed, None)
        return dataclasses.replace(r, dsc=dsc, iou=dsc / 2)

    # case 1 has a lucky second seed; on seed 0 alone it is clearly worst.
    results = {keys[0]: [res(keys[0], 0, 0.80), res(keys[0], 1, 0.99)],
               keys[1]: [res(keys[1], 0, 0.88)], keys[2]: [res(keys[2], 0, 0.90)]}
    summaries = {k: summarize(k, v) for k, v in results.items()}
    lines = reading(t3, summaries, results)
    assert lines[0].startswith("- Compared on seed 0, the ones every run")
    assert any(ln.startswith("- case 1 vs case 3: -10.00 DSC points") for ln in lines)
    # The mixed means (89.5 against 90.0 and 88.0) would have ranked case 1 above case 2.
    assert any("ours case 3 > case 2 > case 1" in ln for ln in lines)
    # All runs at the same seeds: no note, the summaries as given.
    equal = {k: v[:1] for k, v in results.items()}
    lines = reading(t3, {k: summarize(k, v) for k, v in equal.items()}, equal)
    assert not lines[0].startswith("- Compared on")


def test_table_header_says_how_many_seeds_stand_behind_each_cell_while_a_campaign_runs() -> None:
    from spineseg.experiments.tables import ReportContext, table_markdown

    t3 = TABLES["table3"]
    keys = [t3.cell(c).run.key for c in ("case1", "case2", "case3")]
    results = {keys[0]: [_result(keys[0], s, None) for s in (0, 1)],
               keys[1]: [_result(keys[1], 0, None)], keys[2]: [_result(keys[2], 0, None)]}
    summaries = {k: summarize(k, v) for k, v in results.items()}
    ctx = ReportContext(command="c", date="d", hardware="h", dataset=(), profile=PROFILES["converged"],
                        seeds=3, test_cases=("p1",), test_note="", train_slices=10)
    md = table_markdown(t3, summaries, ctx)
    assert ("over the seeds each cell has finished, of 3 (0…2): 1 cell at 2 seeds, 2 cells at "
            "1 seed; a number without ± is one seed") in md
    assert "over 3 seeds (0…2)" not in md
    full = {k: summarize(k, [_result(k, s, None) for s in (0, 1, 2)]) for k in keys}
    assert "over 3 seeds (0…2)" in table_markdown(t3, full, ctx)
