"""Lay out the real CT cases of ../shared/data as a "pairs" source for `spineseg prepare`.

    python tools/real_cases_as_pairs.py ../shared/data work/real

writes ``work/real/images/<case>.nii.gz`` and ``work/real/labels/<case>.nii.gz`` (binary spine
masks, left in their own grids: `prepare` aligns them through physical space). The DICOM series is
converted with spineseg's own reader/writer, so its geometry goes through the tested path.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from real_cases import CASES

from spineseg.io import read_image, write_image


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("shared_data", type=Path)
    ap.add_argument("out", type=Path)
    args = ap.parse_args()
    for sub in ("images", "labels"):
        (args.out / sub).mkdir(parents=True, exist_ok=True)
    for case, entry in CASES.items():
        image, mask = entry.image, entry.spine
        img_out = args.out / "images" / f"{case}.nii.gz"
        if not img_out.exists():
            write_image(read_image(args.shared_data / image), img_out)
        lab_out = args.out / "labels" / f"{case}.nii.gz"
        if not lab_out.exists():
            shutil.copyfile(args.shared_data / mask, lab_out)
        print(f"{case}: {img_out}")


if __name__ == "__main__":
    main()
