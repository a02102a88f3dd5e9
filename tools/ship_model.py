"""Package a trained checkpoint as the shipped default model (float16 weights + SHA-256 record).

    python tools/ship_model.py work/run_final/best.pt --note "tools/train_shipped_model.sh ..."
    python tools/ship_model.py work/snaps/e20.pt ... work/snaps/e25.pt   # weight average

Writes src/spineseg/weights/spineseg-default.pt (tensors + JSON-able metadata only, loadable with
torch.load(weights_only=True)) and spineseg-default.json holding its SHA-256, which
`load_segmentation_model()` checks before every use.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from spineseg.data.preprocess import Preprocessing
from spineseg.inference.model_file import (
    DEFAULT_MODEL_NAME,
    read_model_payload,
    save_segmentation_model,
)
from spineseg.io import write_text_atomic
from spineseg.training.checkpoint import average_checkpoints

WEIGHTS = Path(__file__).resolve().parents[1] / "src" / "spineseg" / "weights"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path, nargs="+",
                    help="a checkpoint, or several of one run whose weights are averaged")
    ap.add_argument("--note", default="", help="how it was trained (command line)")
    args = ap.parse_args()
    ckpts = args.checkpoint
    payload = (read_model_payload(ckpts[0]) if len(ckpts) == 1
               else average_checkpoints(ckpts))
    meta = {
        "trained_from": ",".join(c.name for c in ckpts),
        "epoch": int(payload.get("epoch", -1)),
        "averaged_epochs": payload.get("averaged_epochs", []),
        "train_config": payload.get("train_config", {}),
        "training_note": args.note,
    }
    target = WEIGHTS / DEFAULT_MODEL_NAME
    sha = save_segmentation_model(
        target, model_name=str(payload["model_name"]), model_config=dict(payload["model_config"]),
        state_dict=payload["state_dict"], preprocessing=Preprocessing.from_dict(
            payload["preprocessing"]), threshold=float(payload.get("threshold", 0.5)),
        meta=meta, half=True, overwrite=True)
    record = {"file": DEFAULT_MODEL_NAME, "sha256": sha, "model_name": payload["model_name"],
              "model_config": payload["model_config"], "preprocessing": payload["preprocessing"],
              "epoch": meta["epoch"], "averaged_epochs": meta["averaged_epochs"]}
    write_text_atomic(WEIGHTS / "spineseg-default.json", json.dumps(record, indent=2) + "\n",
                      overwrite=True)
    print(f"{target}: {target.stat().st_size / 1e6:.2f} MB, sha256 {sha}")


if __name__ == "__main__":
    main()
