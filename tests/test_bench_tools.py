"""tools/bench_training_throughput.py: trainer variants parse to the flags `spineseg train` takes."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import bench_training_throughput as bench  # a tool script, importable once tools/ is on the path


@pytest.mark.parametrize(("text", "variant"), [
    ("float32:1", ("float32", 1, False)),
    ("bfloat16:0", ("bfloat16", 0, False)),
    ("bfloat16:1:compile", ("bfloat16", 1, True)),
])
def test_variants_parse(text, variant):
    assert bench._variant(text) == variant


@pytest.mark.parametrize("text", ["bfloat16", "float16:1", "float32:x", "float32:1:jit",
                                  "float32:1:compile:x"])
def test_malformed_variants_are_refused(text):
    with pytest.raises(argparse.ArgumentTypeError, match="PRECISION:WORKERS"):
        bench._variant(text)


def test_variant_names_are_distinct():
    names = {bench._name(v) for v in [("float32", 1, False), ("bfloat16", 1, False),
                                      ("bfloat16", 1, True), ("bfloat16", 0, False)]}
    assert len(names) == 4
