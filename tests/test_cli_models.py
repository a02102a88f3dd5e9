"""``spineseg models``: JSON and table output agree with the library."""

from __future__ import annotations

import json

from spineseg.cli.main import COMMANDS, main
from spineseg.models import build_model, count_parameters, list_models


def test_models_json_lists_every_network_with_its_real_cost(capsys):
    assert "models" in COMMANDS
    assert main(["models", "--size", "64", "--width", "8", "--repeats", "1", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == list_models()
    for r in rows:
        assert r["size"] == 64
        assert r["config"]["base_width"] == 8
        assert r["parameters"] == count_parameters(build_model(r["name"], **r["config"]))
        assert r["gflops"] > 0 and r["latency_ms"] > 0


def test_models_default_width_json(capsys):
    assert main(["models", "--size", "64", "--json", "--repeats", "1"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert all(r["config"]["base_width"] == 32 for r in rows.values())
    assert rows["msrunet"]["parameters"] < rows["unet"]["parameters"]


def test_models_table(capsys):
    assert main(["models", "--size", "32", "--width", "8", "--repeats", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:4] == ["name", "parameters", "GFLOPs", "CPU"]
    assert [line.split()[0] for line in out[1:]] == list_models()


def test_models_bad_size_is_a_model_error(capsys):
    assert main(["models", "--size", "50", "--width", "8"]) == 5
    assert "divisible by 2**depth" in capsys.readouterr().err
