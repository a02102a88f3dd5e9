"""Average the weights of fine-tunes that started from one base network (a uniform "model soup").

    python tools/weight_soup.py work --variants ,_noacq,_noacq_poly --folds fold1,fold2,fold3,fold4

For every fold, ``WORK/run_<fold><variant>/last.pt`` of each variant are averaged into
``WORK/run_<fold>_soup/last.pt``, which ``tools/crossval.py``'s score step reads like any run
(``score(..., variant="_soup")``). Fine-tunes of one pre-trained network stay in one basin of the
loss, so their mean is a network of its own rather than a blur (Wortsman et al., 2022); it costs
one network at inference, unlike an ensemble.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from spineseg.training.checkpoint import average_checkpoints, save_checkpoint


def soup(work: Path, fold: str, variants: list[str], name: str = "_soup") -> Path:
    paths = [work / f"run_{fold}{v}" / "last.pt" for v in variants]
    out = work / f"run_{fold}{name}" / "last.pt"
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out, average_checkpoints(paths))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("work", type=Path)
    ap.add_argument("--variants", default=",_noacq,_noacq_poly",
                    help="comma-separated run suffixes to average ('' = the plain run)")
    ap.add_argument("--folds", default="fold1,fold2,fold3,fold4")
    ap.add_argument("--name", default="_soup",
                    help="suffix of the averaged run (run_<fold><name>), e.g. _s2_soup for "
                         "the fine-tunes of crossval.py --seed 2")
    args = ap.parse_args()
    for fold in args.folds.split(","):
        print(soup(args.work, fold, args.variants.split(","), args.name))


if __name__ == "__main__":
    main()
