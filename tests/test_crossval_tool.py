"""tools/crossval.py: folds hold every real patient out exactly once, and the held-out table's
means and SDs are over patients, overall and per kind of scan."""

from __future__ import annotations

import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import crossval  # a tool script, importable once tools/ is on the path
import real_cases


def test_every_real_patient_is_held_out_exactly_once():
    held = [c for cases in crossval.FOLDS.values() for c in cases]
    assert sorted(held) == sorted(real_cases.CASES)
    kinds = {real_cases.CASES[c].kind for c in held}
    assert kinds == {"whole-body", "spine-crop"}


def _rows(dice: dict[str, float]) -> list[dict[str, object]]:
    rows = []
    for case, d in dice.items():
        fold = next(f for f, cs in crossval.FOLDS.items() if case in cs)
        for stress, off in (("clean", 0.0), ("noise100", -0.1), ("osteo60", -0.05)):
            row = {"fold": fold, "case": case, "stress": stress, "dice": d + off,
                   "sensitivity": 0.5, "precision": 0.9, "hd95_mm": 10.0}
            if stress == "clean":
                row["dice_nopost"] = d - 0.01
            rows.append(row)
    return rows


def test_render_means_over_patients_and_per_kind():
    dice = {"ts_chest": 0.70, "ts_abdomen": 0.80, "verse005": 0.90, "verse006": 0.60}
    table = crossval.render({"rows": _rows(dice)})
    lines = table.splitlines()
    assert sum(line.startswith("| ts_") or line.startswith("| verse") for line in lines) == 4
    overall = next(line for line in lines if "all patients" in line)
    mean, sd = statistics.fmean(dice.values()), statistics.stdev(dice.values())
    assert f"{mean:.3f} ± {sd:.3f}" in overall and "(n = 4)" in overall
    whole = next(line for line in lines if "whole-body" in line and "mean" in line)
    assert "0.750 ± 0.071" in whole  # ts_chest and ts_abdomen only
    crop = next(line for line in lines if "spine-crop" in line and "mean" in line)
    assert "0.750 ± 0.212" in crop
    assert "sagittal" in next(line for line in lines if line.startswith("| verse006"))


def test_weight_soup_averages_each_folds_runs_into_a_soup_run(tmp_path):
    import torch
    import weight_soup

    from spineseg.training.checkpoint import load_checkpoint, save_checkpoint
    from test_checkpoint import _payload

    states = []
    for variant in ("", "_noacq"):
        run = tmp_path / f"run_fold1{variant}"
        run.mkdir()
        states.append(load_checkpoint(save_checkpoint(run / "last.pt", _payload()))["state_dict"])
    out = weight_soup.soup(tmp_path, "fold1", ["", "_noacq"])
    assert out == tmp_path / "run_fold1_soup" / "last.pt"
    soup = load_checkpoint(out)["state_dict"]
    torch.testing.assert_close(soup["weight"], (states[0]["weight"] + states[1]["weight"]) / 2)


def test_run_variants_name_seeds_without_renaming_the_recipes_own_runs():
    from crossval import run_variant

    assert run_variant() == ("", [])
    assert run_variant(True, "poly") == ("_noacq_poly", ["--no-acquisition-augment",
                                                          "--schedule", "poly"])
    variant, extra = run_variant(True, "poly", seed=2)
    assert variant == "_s2_noacq_poly" and extra[-2:] == ["--seed", "2"]
    assert run_variant(seed=2, soup=True) == ("_s2_soup", [])
    assert run_variant(soup=True) == ("_soup", [])
    assert run_variant(True, whole_body_weight=3)[0] == "_noacq_wb3"
    assert run_variant(from_shipped=True) == ("_ship", ["--lr", "3e-4", "--patch", "192"])
    assert run_variant(from_shipped=True, precision="bfloat16") == (
        "_ship_bf16", ["--lr", "3e-4", "--patch", "192", "--precision", "bfloat16"])


def test_whole_body_weights_only_for_the_folds_training_patients():
    from crossval import whole_body_weights

    assert whole_body_weights("fold1", 1.0) == []
    assert whole_body_weights("fold1", 3.0) == ["--patient-weight", "ts_abdomen=3"]
    assert whole_body_weights("fold2", 2.5) == ["--patient-weight", "ts_chest=2.5"]
    assert sorted(whole_body_weights("final", 3.0)[1::2]) == ["ts_abdomen=3", "ts_chest=3"]


def test_weight_soup_names_its_output_run(tmp_path):
    import weight_soup

    from spineseg.training.checkpoint import save_checkpoint
    from test_checkpoint import _payload

    for variant in ("_s2", "_s2_noacq"):
        run = tmp_path / f"run_final{variant}"
        run.mkdir()
        save_checkpoint(run / "last.pt", _payload())
    out = weight_soup.soup(tmp_path, "final", ["_s2", "_s2_noacq"], name="_s2_soup")
    assert out == tmp_path / "run_final_s2_soup" / "last.pt" and out.is_file()
    assert not (tmp_path / "run_final_soup").exists()


def test_nested_threshold_choice_never_sees_the_patients_it_scores():
    import threshold_selection as ts

    # Patient "a" alone prefers 0.7, the others do not: scored held out, "a" gets the choice
    # made on the others (0.3), and each fold's choice is made without its own patient.
    groups = {"f1": ("a",), "f2": ("b",), "f3": ("c",)}
    dice = {"a": {0.3: 0.60, 0.5: 0.70, 0.7: 0.75},
            "b": {0.3: 0.85, 0.5: 0.80, 0.7: 0.60},
            "c": {0.3: 0.84, 0.5: 0.80, 0.7: 0.70}}
    out = ts.nested(groups, dice, (0.3, 0.5, 0.7))
    assert out["chosen"] == {"f1": 0.3, "f2": 0.5, "f3": 0.5}
    assert out["nested_dice"] == {"a": 0.60, "b": 0.80, "c": 0.80}
    assert abs(out["worst_change"] + 0.10) < 1e-12
    assert out["mean_at_0.5"] == (0.70 + 0.80 + 0.80) / 3


def test_patients_a_released_base_saw_are_not_scored_as_held_out():
    from crossval import held_out_cases, seen_by

    from spineseg.inference.model_file import verified_default_model

    # The shipped file saw all seven patients: fine-tuned from it, no fold holds anyone out.
    seen = seen_by(verified_default_model()[1])
    assert all(held_out_cases(fold, seen) == () for fold in ("fold1", "fold2", "fold3", "fold4"))
    # The release before it saw the two whole-body scans and verse012, not the other crops.
    seen = seen_by("0709aab8" + "0" * 56)
    assert held_out_cases("fold1", seen) == ("verse005",)
    assert held_out_cases("fold3", seen) == ("verse007",)
    assert held_out_cases("fold4", seen) == ("verse008",)
    # A base of one's own (the phantom-only one): nothing is known, every fold patient counts.
    assert held_out_cases("fold1", seen_by("f" * 64)) == ("ts_chest", "verse005")


def test_a_continuation_starts_each_fold_from_its_own_run(tmp_path):
    import pytest

    for fold in ("fold1", "fold2"):
        (tmp_path / f"run_{fold}_ship").mkdir()
        (tmp_path / f"run_{fold}_ship" / "last.pt").write_bytes(b"x")
    released = tmp_path / "released.pt"
    bases = crossval.continuation_bases(tmp_path, ["fold1", "fold2", "final"], "_ship", released)
    assert bases == {"fold1": tmp_path / "run_fold1_ship" / "last.pt",
                     "fold2": tmp_path / "run_fold2_ship" / "last.pt", "final": released}
    # A fold without its own run must not start from anything else: it would see its
    # held-out patients through another fold's weights.
    with pytest.raises(SystemExit, match="run_fold3_ship"):
        crossval.continuation_bases(tmp_path, ["fold3"], "_ship", released)
    with pytest.raises(SystemExit, match="run_final_ship"):
        crossval.continuation_bases(tmp_path, ["final"], "_ship", None)


def _run_tool(work: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """tools/crossval.py as a user runs it, on an empty shared-data and work folder."""
    return subprocess.run([sys.executable, str(Path(crossval.__file__)), str(work), str(work),
                           *args], capture_output=True, text=True)


def test_a_continuation_must_repeat_the_settings_of_the_runs_it_continues(tmp_path):
    proc = _run_tool(tmp_path, "--continue-from", "_ship", "--steps", "train")
    assert proc.returncode == 2
    assert "the other flags make runs (none); pass those that made _ship" in proc.stderr


def test_runs_made_elsewhere_are_scored_not_trained(tmp_path):
    proc = _run_tool(tmp_path, "--runs", "_mix", "--steps", "train,score")
    assert proc.returncode == 2
    assert "--runs scores runs trained elsewhere" in proc.stderr
    # Render reads the named runs' results, not a variant's own.
    (tmp_path / "crossval_mix.json").write_text('{"rows": []}', "utf-8")
    proc = _run_tool(tmp_path, "--runs", "_mix", "--steps", "render")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "crossval_mix.md").is_file()
