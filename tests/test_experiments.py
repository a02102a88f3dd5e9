"""``spineseg experiment``: tables as data, end-to-end tiny run, resume, ownership, figures."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from spineseg.cli.main import main
from spineseg.data.phantom import PhantomConfig, case_id_for, generate_phantom, write_phantom_case
from spineseg.data.prepare import PrepareConfig, prepare_dataset
from spineseg.experiments import runner as runner_mod
from spineseg.experiments.profiles import PROFILES
from spineseg.experiments.runner import RESULT_FILE, CellSummary
from spineseg.experiments.specs import (
    LOSS_LABELS,
    LOSSES,
    NETWORK_LABELS,
    NETWORKS,
    TABLES,
    runs_of,
)
from spineseg.experiments.tables import reading
from spineseg.models import ABLATIONS, build_model, config_class


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four tiny phantoms (64×64×24 at 1 mm in-plane): 2 train, 1 val, 1 test."""
    root = tmp_path_factory.mktemp("exp")
    cfg = PhantomConfig(shape=(64, 64, 24), inplane_spacing_mm=(1.0, 1.0), crop_prob=1.0)
    for seed in range(4):
        write_phantom_case(generate_phantom(seed, cfg), root / "src", case_id_for(seed))
    prepare_dataset([root / "src"], root / "ds", PrepareConfig(val="1", test="1"))
    return root / "ds"


def _args(target: str, data: Path, out: Path, *extra: str) -> list[str]:
    return ["experiment", target, "--data", str(data), "--profile", "tiny", "-o", str(out),
            "--device", "cpu", *extra]


@pytest.fixture(scope="module")
def table2_dir(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("exp_out") / "results"
    assert main(_args("table2", dataset, out)) == 0
    return out


def _count_train_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real_train = runner_mod.train

    def counting(config, **kw):  # type: ignore[no-untyped-def]
        calls.append(config.out)
        return real_train(config, **kw)

    monkeypatch.setattr(runner_mod, "train", counting)
    return calls


# --------------------------------------------------------------------------- specs


def _md_rows(text: str, header_start: str) -> list[list[str]]:
    """Body rows of the Markdown table whose header row starts with ``header_start``."""
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(header_start))
    rows = []
    for ln in lines[start + 2:]:
        if not ln.startswith("|"):
            break
        rows.append([c.strip() for c in ln.strip("|").split("|")])
    return rows


def _paper(value: str) -> float | None:
    return None if value == "—" else float(value)


def test_paper_numbers_match_method_md(shared_data: Path) -> None:
    text = (shared_data.parent / "docs" / "method.md").read_text(encoding="utf-8")
    t1 = TABLES["table1"]
    rows1 = _md_rows(text, "| network | metric |")
    assert len(rows1) == 8
    label_to_net = {v: k for k, v in NETWORK_LABELS.items()}
    assert [label_to_net[r[0]] for r in rows1[::2]] == list(NETWORKS)
    for net_label, metric, *vals in rows1:
        net = label_to_net[net_label]
        for loss, v in zip(("focal", "bce", "dice"), vals, strict=True):
            assert getattr(t1.cell(f"{net}-{loss}"), f"paper_{metric.lower()}") == _paper(v)
        assert getattr(t1.cell(f"{net}-dicebce"), f"paper_{metric.lower()}") is None
    for table, header in (("table2", "| case | unit |"), ("table3", "| case | residual")):
        spec = TABLES[table]
        head = [c.strip() for c in next(ln for ln in text.splitlines()
                                         if ln.startswith(header)).strip("|").split("|")]
        rows = _md_rows(text, header)
        assert len(rows) == len(spec.cells)
        n_desc = len(spec.cells[0].columns)
        assert [name for name, _ in spec.cells[0].columns] == head[:n_desc]
        for cell, row in zip(spec.cells, rows, strict=True):
            assert [v for _, v in cell.columns] == row[:n_desc]
            assert cell.paper_dsc == float(row[n_desc])
            if spec.has_iou:
                assert cell.paper_iou == float(row[n_desc + 1])


def test_table1_grid_and_shared_runs_are_the_same_experiment() -> None:
    t1 = TABLES["table1"]
    assert [c.name for c in t1.cells] == [f"{n}-{loss}" for n in NETWORKS for loss in LOSSES]
    assert set(LOSS_LABELS) == set(LOSSES)
    # 16 + 3 new Table 2 runs + 2 new Table 3 runs: shared rows are trained once.
    assert len(runs_of(list(TABLES.values()))) == 21
    msr = config_class("msrunet")
    default = msr().to_dict()
    assert msr(**ABLATIONS["table2_case4"]).to_dict() == default
    assert msr(**ABLATIONS["table3_case3"]).to_dict() == default
    assert TABLES["table2"].cell("case4").run == t1.cell("msrunet-dice").run
    assert TABLES["table3"].cell("case3").run == t1.cell("msrunet-dice").run
    # Table 2 case 1 reuses U-Net: the same modules and the same initial weights per seed.
    torch.manual_seed(3)
    a = build_model("unet", base_width=8, depth=2).state_dict()
    torch.manual_seed(3)
    b = build_model("msrunet", base_width=8, depth=2, **ABLATIONS["table2_case1"]).state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert TABLES["table2"].cell("case1").run == t1.cell("unet-dice").run


def test_profiles_state_their_scale_down() -> None:
    paper = PROFILES["paper"]
    assert (paper.patch_size, paper.batch_size, paper.lr, paper.seeds) == (512, 16, 1e-3, 3)
    assert paper.differences_from_paper() == []
    quick = PROFILES["quick"]
    diffs = " ".join(quick.differences_from_paper())
    assert "patch side 128 (paper profile: 512)" in diffs
    assert quick.patience == 0 and quick.max_steps_per_epoch is not None  # equal budgets
    tc = quick.train_config(TABLES["table3"].cell("case2").run, data="d", out="o", seed=1,
                            device="cpu")
    assert tc.model_config == {**ABLATIONS["table3_case2"], "base_width": 8, "depth": 4}
    assert (tc.seed, tc.loss, tc.epochs) == (1, "dice", quick.epochs)
    # Every run is a valid network under every profile (width divisible by the scale groups…).
    for profile in PROFILES.values():
        for run in runs_of(list(TABLES.values())):
            cfg = profile.train_config(run, data="d", out="o", seed=0, device="cpu")
            config_class(cfg.model).from_dict(cfg.model_config)
    # The step cap cannot be reached on a small training split: the report must say so.
    assert quick.steps_per_epoch(20) == 20 // quick.batch_size
    assert quick.steps_per_epoch(10_000) == quick.max_steps_per_epoch
    assert quick.steps_per_epoch(3) == 1


def _summary(key: str, dsc: list[float]) -> CellSummary:
    import statistics

    return CellSummary(key=key, n=len(dsc), dsc_mean=statistics.mean(dsc),
                       dsc_sd=statistics.stdev(dsc), dsc_min=min(dsc), dsc_max=max(dsc),
                       iou_mean=0.0, iou_sd=0.0, iou_min=0.0, iou_max=0.0,
                       seeds=tuple(range(len(dsc))))


def test_reading_is_computed_from_the_numbers() -> None:
    t3 = TABLES["table3"]
    # Our order equals the paper's (case 3 > case 2 > case 1) with a clear gap for case 1.
    s = {t3.cell("case1").run.key: _summary("a", [90.0, 90.2]),
         t3.cell("case2").run.key: _summary("b", [92.8, 93.6]),
         t3.cell("case3").run.key: _summary("c", [93.5, 93.7])}
    lines = reading(t3, s)
    assert any("same order: reproduces" in ln for ln in lines)
    assert any(ln.startswith("- case 1 vs case 3: -3.50 DSC points (paper -1.57; same sign); "
                             "larger than") for ln in lines)
    assert any(ln.startswith("- case 2 vs case 3: -0.40") and "within" in ln for ln in lines)
    # Swap two cases: the reading must say the order differs.
    s[t3.cell("case1").run.key] = _summary("a", [95.0, 95.2])
    assert any("order differs" in ln for ln in reading(t3, s))


# --------------------------------------------------------------------------- end to end


def test_table2_end_to_end(table2_dir: Path, dataset: Path) -> None:
    md = (table2_dir / "table2.md").read_text(encoding="utf-8")
    rows = _md_rows(md, "| case | unit |")
    spec = TABLES["table2"]
    assert len(rows) == len(spec.cells)
    for cell, row in zip(spec.cells, rows, strict=True):
        assert row[:4] == [v for _, v in cell.columns]
        assert re.fullmatch(r"\d\.\d{4}", row[4])  # one seed: no spread
        assert row[5] == f"{cell.paper_dsc:.4f}"
    assert (f"`spineseg experiment table2 --data {dataset} --profile tiny -o {table2_dir} "
            "--device cpu`") in md
    assert "Scaled down from the paper's protocol" in md and "Hardware: CPU" in md
    assert "test: 1 case (1 phantom" in md
    assert "48 training slices → 2 steps per epoch, 2 updates per run" in md
    # One done-marker per distinct run; shared rows live under Table 1.
    markers = sorted(p.parent.parent.relative_to(table2_dir / "runs").as_posix()
                     for p in (table2_dir / "runs").rglob(RESULT_FILE))
    assert markers == ["table1/msrunet-dice", "table1/unet-dice", "table2/case2",
                       "table2/case3", "table2/case5"]
    result = json.loads(next((table2_dir / "runs").rglob(RESULT_FILE)).read_text(encoding="utf-8"))
    assert 0.0 <= result["dsc"] <= 1.0 and result["test_cases"] == ["phantom_000002"]
    summary = json.loads((table2_dir / "table2.json").read_text(encoding="utf-8"))
    assert [c["cell"] for c in summary["cells"]] == [c.name for c in spec.cells]


def test_second_call_trains_nothing(table2_dir: Path, dataset: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    before = (table2_dir / "runs/table2/case2/seed0/metrics.csv").read_text(encoding="utf-8")
    calls = _count_train_calls(monkeypatch)
    assert main(_args("table2", dataset, table2_dir)) == 0
    assert calls == []
    assert (table2_dir / "runs/table2/case2/seed0/metrics.csv").read_text(encoding="utf-8") == before


def test_interrupted_seed_resumes_without_retraining(table2_dir: Path, dataset: Path,
                                                    tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "copy"
    shutil.copytree(table2_dir, out)
    seed = out / "runs/table2/case3/seed0"
    (seed / RESULT_FILE).unlink()  # stopped after training, before evaluation finished
    (out / "cells/table2/case3/seed0.json").unlink()  # (its archived copy never written)
    epochs_before = (seed / "metrics.csv").read_text(encoding="utf-8")
    calls = _count_train_calls(monkeypatch)
    assert main(_args("table2", dataset, out)) == 0
    assert calls == [str(seed)]  # only the unfinished seed, resumed from its last.pt
    assert (seed / "metrics.csv").read_text(encoding="utf-8") == epochs_before  # no epoch was recomputed
    assert (seed / RESULT_FILE).is_file()


def test_a_result_written_before_a_config_field_existed_still_counts(
        table2_dir: Path, dataset: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Finished seeds of a long campaign were recorded before TrainConfig gained ``precision``;
    # a missing key means that field's default, not another protocol.
    out = tmp_path / "copy"
    shutil.copytree(table2_dir, out)
    for path in [*(out / "runs").rglob(RESULT_FILE), *(out / "cells").rglob("seed*.json")]:
        result = json.loads(path.read_text(encoding="utf-8"))
        del result["train_config"]["precision"]
        path.write_text(json.dumps(result), encoding="utf-8")
    calls = _count_train_calls(monkeypatch)
    assert main(_args("table2", dataset, out)) == 0
    assert calls == []


def test_another_profile_in_the_same_folder_is_refused(table2_dir: Path, dataset: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    calls = _count_train_calls(monkeypatch)
    args = _args("table3", dataset, table2_dir)
    args[args.index("tiny")] = "quick"
    assert main(args) != 0
    assert "another profile" in capsys.readouterr().err
    assert calls == []


def test_unowned_outputs_are_not_overwritten(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "docs"
    out.mkdir()
    (out / "table2.md").write_text("hand-written\n", encoding="utf-8")
    assert main(_args("table2", dataset, out)) != 0
    assert (out / "table2.md").read_text(encoding="utf-8") == "hand-written\n"


def test_figures(table2_dir: Path, dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "figs"
    shutil.copytree(table2_dir, out)
    assert main(_args("fig6", dataset, out)) == 0
    assert (out / "runs/table1/segnet-dice/seed0" / RESULT_FILE).is_file()  # trained for fig6
    assert main(_args("fig7", dataset, out)) == 0
    for name in ("fig6.png", "fig7.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


# --------------------------------------------------------------------------- converged machinery


def test_result_records_patients_curve_and_plateau(table2_dir: Path) -> None:
    seed = table2_dir / "runs/table2/case2/seed0"
    result = json.loads((seed / RESULT_FILE).read_text(encoding="utf-8"))
    assert list(result["patient_dice"]) == ["phantom_000002"]
    assert result["patient_dice"]["phantom_000002"] == pytest.approx(result["dsc"])  # one case
    assert [row["epoch"] for row in result["curve"]] == [1.0]  # tiny: one epoch
    assert result["plateau"]["met"] is False and result["plateau"]["gain"] is None  # too short
    # The archived copy next to the tables is the same record.
    archived = json.loads((table2_dir / "cells/table2/case2/seed0.json").read_text(encoding="utf-8"))
    assert archived == result
    md = (table2_dir / "table2.md").read_text(encoding="utf-8")
    assert "## Convergence per run" in md and "| case 2 | `table2/case2` | 1 | 0/1 |" in md
    assert "- Split by patient, fixed in the dataset before any cell was scored:" in md
    marker = json.loads((table2_dir / "experiment.json").read_text(encoding="utf-8"))
    assert marker["split_patients"]["test"] == ["phantom_000002"]


def test_report_only_trains_nothing_and_tests_the_claims(table2_dir: Path, dataset: Path,
                                                        tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "copy"
    shutil.copytree(table2_dir, out)
    shutil.rmtree(out / "runs")  # only the archived JSON is left: tables rebuild from it
    calls = _count_train_calls(monkeypatch)
    assert main(_args("table1", dataset, out, "--report-only")) == 0
    assert main(_args("curves", dataset, out)) == 0
    assert calls == []
    md = (out / "table1.md").read_text(encoding="utf-8")
    # The two Dice-loss runs Table 2 shares are there; everything else is not run yet.
    assert "Paired test, proposed vs U-Net, Dice loss: Wilcoxon signed-rank over 1 (seed, " \
           "patient) pairs" in md and "cannot reach 0.05" in md
    assert "| SegNet / Dice loss | `table1/segnet-dice` | 0 |" in md
    data = (out / "curves.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_seed_locked_by_another_process_is_left_to_it(table2_dir: Path, dataset: Path,
                                                       tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import fcntl

    out = tmp_path / "copy"
    shutil.copytree(table2_dir, out)
    (out / "runs/table2/case5/seed0" / RESULT_FILE).unlink()
    (out / "cells/table2/case5/seed0.json").unlink()
    calls = _count_train_calls(monkeypatch)
    with (out / "runs/table2/case5/seed0.lock").open("a") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # "another process"
        assert main(_args("table2", dataset, out)) == 0
    assert calls == []
    assert "| case 5 | `table2/case5` | 0 |" in (out / "table2.md").read_text(encoding="utf-8")


def test_a_profile_that_needs_real_test_patients_refuses_phantoms(dataset: Path,
                                                                 tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch
                                                                 ) -> None:
    import dataclasses

    from spineseg.errors import DataError
    from spineseg.experiments import ExperimentConfig, run_experiment

    calls = _count_train_calls(monkeypatch)
    strict = dataclasses.replace(PROFILES["tiny"], name="tiny-converged", min_test_patients=1,
                                 spacing_mm=1.0, sampling="case")
    with pytest.raises(DataError, match="real patients only"):
        run_experiment(ExperimentConfig("table3", dataset, tmp_path / "o", profile=strict,
                                        device="cpu"))
    assert calls == [] and not (tmp_path / "o").exists()
