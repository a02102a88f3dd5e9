"""``spineseg benchmark`` times the shipped model unless told otherwise, and says which."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from spineseg.benchmark import BenchmarkConfig
from spineseg.cli.main import main
from spineseg.errors import InputError
from spineseg.inference.model_file import load_segmentation_model, verified_default_model

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "src" / "spineseg" / "benchmark"
# The smallest run that still goes through the whole pipeline once (no peers, no mesh).
TINY = ["benchmark", "--tiny", "--threads", "1", "--no-peers"]


def _model_card_parameters() -> int:
    text = (REPO / "docs" / "model-card.md").read_text(encoding="utf-8")
    return int(re.search(r"([\d,]{5,})\s+parameters", text).group(1).replace(",", ""))


def test_default_benchmark_times_the_shipped_model(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*TINY, "--json"]) == 0
    timed = json.loads(capsys.readouterr().out)["ours"]["model"]
    _, sha = verified_default_model()
    shipped = load_segmentation_model(None)
    assert timed["source"] == "shipped default" and timed["random_weights"] is False
    assert timed["sha256"] == sha and Path(timed["file"]).name == "spineseg-default.pt"
    assert timed["parameters"] == sum(p.numel() for p in shipped.network.parameters())
    assert timed["parameters"] == _model_card_parameters()
    assert timed["config"]["in_channels"] == shipped.preprocessing.channels


def test_text_report_names_the_timed_model(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(TINY) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("model:"))
    _, sha = verified_default_model()
    assert "shipped default spineseg-default.pt" in line and sha[:12] in line
    assert f"{_model_card_parameters():,} parameters" in line
    assert "RANDOM" not in out


def test_random_weights_only_when_asked(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([*TINY, "--random-weights", "--model", "m.pt"])
    assert exc.value.code == 2
    capsys.readouterr()
    with pytest.raises(InputError, match="exclude"):
        BenchmarkConfig(model_path="m.pt", random_weights=True)


def _imports(path: Path) -> set[str]:
    """Modules of the benchmark package that ``path`` imports, at any depth of its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m.rsplit(".", 1)[1] for m in found if m.startswith("spineseg.benchmark.")}


def test_benchmark_modules_import_without_a_cycle() -> None:
    graph = {p.stem: _imports(p) for p in BENCH.glob("*.py") if p.stem != "__init__"}

    def reaches(start: str, goal: str, seen: frozenset[str] = frozenset()) -> bool:
        return any(n == goal or (n not in seen and reaches(n, goal, seen | {n}))
                   for n in graph.get(start, ()))

    cycles = [m for m in graph if reaches(m, m)]
    assert graph["memory"] and not cycles, graph
