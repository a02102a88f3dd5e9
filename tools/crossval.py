"""Cross-validation of the shipped recipe on the real patients, scored through ``spineseg.segment``.

    python tools/crossval.py ../shared/data work --base work/run_base/last.pt [--jobs 2]

One network pre-trained on phantoms only (``--base``: it saw no real patient) is fine-tuned once
per fold with the fine-tuning stage of ``tools/train_shipped_model.sh`` on every real patient
outside the fold (plus the phantoms, for whole-body context), and each held-out patient is then
segmented by the product pipeline from its original file, clean and stressed (noise SD 100 HU,
osteoporotic bodies ~60 HU). The same run with no fold held out (``final``) is the model to ship.

Steps, each resumable (a finished step is skipped on a re-run, a killed training resumes):
``prepare`` datasets, ``train`` folds (``--jobs`` at a time, one thread each), ``score``
held-out patients into ``WORK/crossval.json``, ``render`` the Markdown table of the model card.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evaluate_real_cases import score_case
from real_cases import CASES

# Folds are fixed before any scoring: every fold but the last holds out one whole-body or
# thoracolumbar scan beside one lumbar crop, so each fine-tune keeps both kinds in training.
FOLDS: dict[str, tuple[str, ...]] = {
    "fold1": ("ts_chest", "verse005"),
    "fold2": ("ts_abdomen", "verse006"),
    "fold3": ("verse012", "verse007"),
    "fold4": ("verse008",),
}
FINAL = "final"
VAL = "phantom_000201"  # a phantom: validation runs every epoch and must stay cheap
STRESSES = ("clean", "noise100", "osteo60")
# The fine-tuning stage of the shipped recipe (tools/train_shipped_model.sh, stage 2).
FINETUNE = ["--sampling", "case", "--loss", "dicebce", "--patch", "160", "--batch-size", "8",
            "--max-steps-per-epoch", "100", "--foreground-fraction", "0.6", "--patience", "0",
            "--lr", "5e-4", "--seed", "1", "--workers", "1", "--device", "cpu",
            "--context-slices", "1", "--context-mm", "3"]


# Fine-tuning the shipped file rather than the phantom-only base: its stage-3 patch and rate.
FROM_SHIPPED = ["--lr", "3e-4", "--patch", "192"]
# The real patients each released model file was trained on (by SHA-256), which a file does not
# record itself. Fine-tuned from such a file, a fold's patients the file saw are not held out,
# so they are not scored (`held_out_cases`).
SEEN_BY_RELEASE: dict[str, tuple[str, ...]] = {
    # 0709aab8…: stage 3 of the three-patient recipe.
    "0709aab8": ("ts_chest", "ts_abdomen", "verse012"),
    # 0498fed7…: 0709aab8 fine-tuned on all seven patients.
    "0498fed7": tuple(CASES),
}


def seen_by(base_sha256: str) -> tuple[str, ...]:
    """The real patients a released base file was trained on (none for a file of one's own)."""
    return next((v for k, v in SEEN_BY_RELEASE.items() if base_sha256.startswith(k)), ())


def held_out_cases(fold: str, seen: Sequence[str] = ()) -> tuple[str, ...]:
    """The patients ``fold`` holds out that its base did not see either."""
    return tuple(case for case in FOLDS[fold] if case not in seen)


def _shipped_file() -> Path:
    """The shipped model file, checked against its SHA-256 record."""
    from spineseg.inference.model_file import verified_default_model

    return verified_default_model()[0]


def _spineseg() -> list[str]:
    return [str(Path(sys.executable).with_name("spineseg"))]


def prepare(work: Path, folds: Sequence[str]) -> None:
    for fold in folds:
        out = work / f"ds_{fold}"
        if (out / "manifest.json").is_file():
            continue
        test = ",".join(FOLDS.get(fold, ())) or "0"
        subprocess.run([*_spineseg(), "prepare", str(work / "real"), "-o", str(out),
                        "--add-phantom", str(work / "phantoms"), "--val", VAL, "--test", test,
                        "--noise-copies", "4", "--seed", "0", "--no-progress"], check=True)


def whole_body_weights(fold: str, weight: float) -> list[str]:
    """``--patient-weight`` arguments for the whole-body patients that train in ``fold``."""
    if weight == 1.0:
        return []
    held_out = set(FOLDS.get(fold, ()))
    return [arg for case, entry in CASES.items()
            if entry.kind == "whole-body" and case not in held_out
            for arg in ("--patient-weight", f"{case}={weight:g}")]


def continuation_bases(work: Path, folds: Sequence[str], suffix: str,
                       final_fallback: Path | None) -> dict[str, Path]:
    """Each fold's starting weights for ``--continue-from SUFFIX``: its own ``run_<fold>SUFFIX``.

    The final run may continue from ``final_fallback`` (the file released from it) when its
    ``run_final<SUFFIX>`` is not in this work folder. A fold's held-out patients must never be
    seen twice, so a fold without its own run is refused rather than started from another.
    """
    bases: dict[str, Path] = {}
    for fold in folds:
        last = work / f"run_{fold}{suffix}" / "last.pt"
        if last.is_file():
            bases[fold] = last
        elif fold == FINAL and final_fallback is not None:
            bases[fold] = final_fallback
        else:
            raise SystemExit(f"--continue-from {suffix}: {last} is missing; train those runs "
                             "first")
    return bases


def train(work: Path, folds: Sequence[str], base: Path | dict[str, Path], epochs: int,
          jobs: int, variant: str = "", extra: Sequence[str] = (),
          whole_body_weight: float = 1.0) -> None:
    """Fine-tune every fold from ``base`` (one file, or a file per fold)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    pending = list(folds)
    running: list[tuple[str, subprocess.Popen[bytes], Any]] = []
    while pending or running:
        while pending and len(running) < jobs:
            fold = pending.pop(0)
            run = work / f"run_{fold}{variant}"
            if (run / "last.pt").is_file():
                argv = ["train", "--resume", str(run), "--epochs", str(epochs)]
            else:
                init = base[fold] if isinstance(base, dict) else base
                argv = ["train", "--data", str(work / f"ds_{fold}"), "--init-weights", str(init),
                        "--epochs", str(epochs), *FINETUNE, *extra,
                        *whole_body_weights(fold, whole_body_weight), "-o", str(run)]
            log = (work / f"{fold}{variant}.log").open("ab")
            running.append((fold, subprocess.Popen([*_spineseg(), *argv], env=env, stdout=log,
                                                   stderr=subprocess.STDOUT), log))
        fold, proc, log = running.pop(0)
        code = proc.wait()
        log.close()
        if code != 0:
            raise SystemExit(f"{fold}: training failed (exit {proc.returncode}); see "
                             f"{work / (fold + '.log')}")


def score(shared: Path, work: Path, folds: Sequence[str], tta: bool = False,
          variant: str = "", seen: Sequence[str] = ()) -> Path:
    from spineseg.inference.model_file import load_segmentation_model

    out = work / f"crossval{variant}.json"
    result = json.loads(out.read_text("utf-8")) if out.is_file() else {"rows": []}
    done = {(r["fold"], r["case"], r["stress"]) for r in result["rows"]}
    for fold in folds:
        model = load_segmentation_model(work / f"run_{fold}{variant}" / "last.pt")
        for case in held_out_cases(fold, seen):
            if all((fold, case, s) in done for s in STRESSES):
                continue
            for row in score_case(shared, case, model, STRESSES, tta=tta):
                row = {"fold": fold, "model_sha256": model.sha256, **row}
                result["rows"].append(row)
                print(json.dumps(row), flush=True)
            tmp = out.with_suffix(".tmp")
            tmp.write_text(json.dumps(result, indent=2) + "\n", "utf-8")
            tmp.replace(out)
    return out


def run_variant(no_acquisition_augment: bool = False, schedule: str = "plateau", seed: int = 1,
                soup: bool = False, whole_body_weight: float = 1.0,
                from_shipped: bool = False, precision: str = "float32") -> tuple[str, list[str]]:
    """``(suffix of runs, logs and results, extra train arguments)`` of one fine-tune variant.

    Seed 1 is the recipe's own and adds nothing, so the runs made before seeds were a choice keep
    their names; another seed prefixes ``_s<seed>`` (``run_final_s2_noacq_poly``).
    """
    variant, extra = ("_noacq", ["--no-acquisition-augment"]) if no_acquisition_augment \
        else ("", [])
    if schedule == "poly":
        variant, extra = variant + "_poly", [*extra, "--schedule", "poly"]
    if whole_body_weight != 1.0:
        variant += f"_wb{whole_body_weight:g}"
    if from_shipped:  # the shipped file's own stage-3 settings: its patch, a gentler rate
        variant, extra = variant + "_ship", [*extra, *FROM_SHIPPED]
    if precision != "float32":
        variant, extra = variant + "_bf16", [*extra, "--precision", precision]
    seeded = f"_s{seed}" if seed != 1 else ""
    if soup:
        return seeded + "_soup", []
    return seeded + variant, [*extra, "--seed", str(seed)] if seeded else extra


def _mean_sd(values: list[float]) -> str:
    if not values:
        return "–"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} ± {sd:.3f}"


def render(result: dict[str, object]) -> str:
    """The held-out table: one row per patient, then mean ± SD over patients, overall and per kind
    of scan."""
    rows = result["rows"]  # type: ignore[index]
    by = {(r["case"], r["stress"]): r for r in rows}  # type: ignore[union-attr]
    cases = [c for c in CASES if (c, "clean") in by]
    lines = ["| held-out patient | kind | fold | Dice | sens. | prec. | HD95 mm | Dice, noise SD 100 "
             "| Dice, bodies ~60 HU | Dice, no post-processing |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for c in cases:
        r = by[(c, "clean")]
        kind = CASES[c].kind + (", sagittal" if CASES[c].sagittal else "")
        lines.append(f"| {c} | {kind} | {r['fold']} | {r['dice']:.3f} | {r['sensitivity']:.3f} | "
                     f"{r['precision']:.3f} | {r['hd95_mm']:.1f} | "
                     f"{by[(c, 'noise100')]['dice']:.3f} | {by[(c, 'osteo60')]['dice']:.3f} | "
                     f"{r['dice_nopost']:.3f} |")
    groups = {"all patients": cases,
              "whole-body": [c for c in cases if CASES[c].kind == "whole-body"],
              "spine-crop": [c for c in cases if CASES[c].kind == "spine-crop"]}
    for name, members in groups.items():
        if not members:
            continue
        col = {k: [float(by[(c, s)][k]) for c in members]
               for k, s in (("dice", "clean"), ("sensitivity", "clean"),
                            ("precision", "clean"), ("hd95_mm", "clean"))}
        noise = [float(by[(c, "noise100")]["dice"]) for c in members]
        osteo = [float(by[(c, "osteo60")]["dice"]) for c in members]
        nopost = [float(by[(c, "clean")]["dice_nopost"]) for c in members]
        lines.append(f"| **mean ± SD, {name}** (n = {len(members)}) | | | "
                     f"{_mean_sd(col['dice'])} | {_mean_sd(col['sensitivity'])} | "
                     f"{_mean_sd(col['precision'])} | {statistics.fmean(col['hd95_mm']):.1f} | "
                     f"{_mean_sd(noise)} | {_mean_sd(osteo)} | {_mean_sd(nopost)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("shared_data", type=Path)
    ap.add_argument("work", type=Path, help="work folder of tools/train_shipped_model.sh")
    ap.add_argument("--base", type=Path, help="phantom-only pre-trained run's last.pt")
    ap.add_argument("--epochs", type=int, default=12, help="fine-tune epochs of 100 updates")
    ap.add_argument("--jobs", type=int, default=2, help="folds trained at once (one thread each)")
    ap.add_argument("--folds", default=",".join([*FOLDS, FINAL]))
    ap.add_argument("--steps", default="prepare,train,score,render")
    ap.add_argument("--tta", action="store_true", help="score with test-time mirroring")
    ap.add_argument("--no-acquisition-augment", action="store_true",
                    help="ablation: fine-tune without the acquisition augmentations (runs, logs "
                         "and results get the suffix _noacq)")
    ap.add_argument("--schedule", choices=("plateau", "poly"), default="plateau",
                    help="fine-tune learning-rate schedule (poly: runs, logs and results get the "
                         "suffix _poly)")
    ap.add_argument("--seed", type=int, default=1,
                    help="fine-tune seed (sampling and augmentation); another than 1 gives runs, "
                         "logs and results the prefix _s<seed>, e.g. run_final_s2_noacq")
    ap.add_argument("--whole-body-weight", type=float, default=1.0, metavar="W",
                    help="draw each whole-body patient's cases W times as often as a crop's "
                         "(runs, logs and results get the suffix _wb<W>)")
    ap.add_argument("--soup", action="store_true",
                    help="score and render the weight averages tools/weight_soup.py made "
                         "(runs run_<fold>_soup; results get the suffix _soup)")
    ap.add_argument("--from-shipped", action="store_true",
                    help="fine-tune a released file (lr 3e-4, 192 px patches): --base, or the "
                         "shipped file without it; runs, logs and results get the suffix _ship. "
                         "Folds holding out a patient the file was trained on are refused")
    ap.add_argument("--precision", choices=("float32", "bfloat16"), default="float32",
                    help="what fine-tunes compute in (bfloat16: runs, logs and results get the "
                         "suffix _bf16)")
    ap.add_argument("--continue-from", metavar="SUFFIX",
                    help="fine-tune each fold again from its own run_<fold>SUFFIX/last.pt with a "
                         "fresh optimiser (the final run: from run_final<SUFFIX>, else with "
                         "--from-shipped the shipped file); the other flags must be those that "
                         "made SUFFIX. Runs, logs and results get SUFFIX_cont")
    ap.add_argument("--runs", metavar="SUFFIX",
                    help="score and render runs run_<fold>SUFFIX made elsewhere (e.g. by "
                         "tools/weight_soup.py --name SUFFIX) instead of a variant's own")
    args = ap.parse_args()
    if not args.whole_body_weight > 0:
        ap.error("--whole-body-weight must be > 0")
    variant, extra = run_variant(args.no_acquisition_augment, args.schedule, args.seed, args.soup,
                                 args.whole_body_weight, args.from_shipped, args.precision)
    if args.from_shipped and args.base is None:
        args.base = _shipped_file()
    if args.continue_from is not None:
        if args.soup or variant != args.continue_from:
            ap.error(f"--continue-from {args.continue_from}: the other flags make runs "
                     f"{variant or '(none)'}; pass those that made {args.continue_from}")
        variant = args.continue_from + "_cont"
    if args.runs is not None:
        if "train" in args.steps.split(","):
            ap.error("--runs scores runs trained elsewhere; leave train out of --steps")
        variant = args.runs
    folds = args.folds.split(",")
    unknown = [f for f in folds if f not in FOLDS and f != FINAL]
    if unknown:
        ap.error(f"unknown fold(s) {unknown}; choose from {', '.join([*FOLDS, FINAL])}")
    steps = args.steps.split(",")
    if "prepare" in steps:
        prepare(args.work, folds)
    if "train" in steps:
        if args.soup:
            ap.error("--soup scores averages of trained runs; train them without it")
        if args.base is None:
            ap.error("train needs --base")
        start: Path | dict[str, Path] = args.base
        if args.continue_from is not None:
            start = continuation_bases(args.work, folds, args.continue_from,
                                       _shipped_file() if args.from_shipped else None)
        train(args.work, folds, start, args.epochs, args.jobs, variant, extra,
              args.whole_body_weight)
    held_out = [f for f in folds if f in FOLDS]
    seen: tuple[str, ...] = ()
    if args.base is not None:
        from spineseg.inference.model_file import sha256_of

        seen = seen_by(sha256_of(args.base))
        if seen:
            print(f"the base file was trained on {', '.join(seen)}: not scored as held out")
    if "score" in steps:
        score(args.shared_data, args.work, held_out, args.tta, variant, seen)
    if "render" in steps:
        result = json.loads((args.work / f"crossval{variant}.json").read_text("utf-8"))
        table = render(result)
        (args.work / f"crossval{variant}.md").write_text(table, "utf-8")
        print(table)


if __name__ == "__main__":
    main()
