"""The paper's Tables 1–3 as data: which runs fill which cell, and the numbers the paper printed.

Paper numbers are copied from ``docs/method.md`` (the English restatement of Jin et al. 2021) in
the form the paper printed them: Tables 1 and 3 in percent, Table 2 as a fraction.

Several cells of different tables are the *same* experiment, and the paper itself reports them
with identical numbers (97.17 is Table 1 proposed/Dice, Table 2 case 4 and Table 3 case 3). Such
cells point to one :class:`RunSpec`, so it is trained once and reported in every table:

- Table 2 case 4 and Table 3 case 3 are the proposed network with Dice loss (Table 1's cell);
- Table 2 case 1 ("two 3×3 conv, no shortcut, one per stage") is plain U-Net. ``msrunet`` with
  ``unit="double"`` builds the identical module tree with identical initial weights as ``unet``
  (checked in the tests), so it shares Table 1's U-Net/Dice run.

Tables 2 and 3 use Dice loss: their full-model rows carry Table 1's Dice-loss value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from spineseg.errors import InputError
from spineseg.models import ABLATIONS

__all__ = [
    "LOSSES",
    "LOSS_LABELS",
    "NETWORKS",
    "NETWORK_LABELS",
    "TABLES",
    "Cell",
    "RunSpec",
    "TableSpec",
    "get_table",
    "runs_of",
]

# Column order of Table 1: the paper's three losses, then Dice+BCE, the combination its authors
# propose as future work (no paper numbers for it).
LOSSES: tuple[str, ...] = ("focal", "bce", "dice", "dicebce")
LOSS_LABELS: Mapping[str, str] = MappingProxyType(
    {"focal": "Focal loss", "bce": "BCE", "dice": "Dice loss", "dicebce": "Dice+BCE"})
# Row order of Table 1, as printed.
NETWORKS: tuple[str, ...] = ("segnet", "fcn", "unet", "msrunet")
NETWORK_LABELS: Mapping[str, str] = MappingProxyType(
    {"segnet": "SegNet", "fcn": "FCN", "unet": "U-Net", "msrunet": "proposed"})


@dataclass(frozen=True)
class RunSpec:
    """One trained configuration: network, its ablation switches and the loss.

    ``key`` is ``"<table>/<cell>"``, the folder under ``runs/`` that holds one sub-folder per
    seed. The profile adds width, depth and the training budget.
    """

    key: str
    model: str
    loss: str
    model_config: Mapping[str, Any] = field(default_factory=dict)

    def config_dict(self) -> dict[str, Any]:
        return dict(self.model_config)


@dataclass(frozen=True)
class Cell:
    """One reported cell (Table 1) or row (Tables 2, 3) with the paper's numbers (None: none).

    ``columns`` are the descriptive columns of the printed row, in order.
    """

    name: str
    run: RunSpec
    paper_dsc: float | None
    paper_iou: float | None = None
    columns: tuple[tuple[str, str], ...] = ()
    note: str = ""


@dataclass(frozen=True)
class TableSpec:
    """A table: its cells in printed order and the scale the paper printed (percent or 0–1)."""

    name: str
    title: str
    cells: tuple[Cell, ...]
    percent: bool = True
    has_iou: bool = True

    def cell(self, name: str) -> Cell:
        for c in self.cells:
            if c.name == name:
                return c
        raise InputError(f"{self.name} has no cell {name!r}")


def _t1_run(net: str, loss: str) -> RunSpec:
    return RunSpec(key=f"table1/{net}-{loss}", model=net, loss=loss)


# Table 1 as printed: (DSC, IoU) per network and loss; None where the paper printed "—" or had
# no column (Dice+BCE).
_T1_PAPER: dict[str, dict[str, tuple[float | None, float | None]]] = {
    "segnet": {"focal": (None, None), "bce": (85.23, 76.90), "dice": (91.98, 87.35)},
    "fcn": {"focal": (79.58, 66.92), "bce": (90.12, 82.23), "dice": (94.10, 89.00)},
    "unet": {"focal": (85.41, 75.00), "bce": (94.07, 90.68), "dice": (96.15, 93.48)},
    "msrunet": {"focal": (88.19, 79.07), "bce": (95.81, 92.00), "dice": (97.17, 94.52)},
}

TABLE1 = TableSpec(
    name="table1",
    title="Table 1 — test-set accuracy (%) of four networks trained with four losses",
    cells=tuple(
        Cell(name=f"{net}-{loss}", run=_t1_run(net, loss),
             paper_dsc=_T1_PAPER[net].get(loss, (None, None))[0],
             paper_iou=_T1_PAPER[net].get(loss, (None, None))[1],
             columns=(("network", NETWORK_LABELS[net]), ("loss", LOSS_LABELS[loss])))
        for net in NETWORKS for loss in LOSSES
    ),
)


def _msr_run(key: str, ablation: str) -> RunSpec:
    return RunSpec(key=key, model="msrunet", loss="dice", model_config=dict(ABLATIONS[ablation]))


_UNET_DICE = _t1_run("unet", "dice")
_PROPOSED_DICE = _t1_run("msrunet", "dice")

TABLE2 = TableSpec(
    name="table2",
    title="Table 2 — the basic unit of every stage (DSC, Dice loss)",
    percent=False,
    has_iou=False,
    cells=(
        Cell("case1", _UNET_DICE, 0.9615, None,
             (("case", "1"), ("unit", "two 3×3 conv (plain U-Net)"), ("shortcut", "no"),
              ("units per stage", "1")),
             "same run as Table 1 U-Net / Dice loss (identical network and initial weights)"),
        Cell("case2", _msr_run("table2/case2", "table2_case2"), 0.9560, None,
             (("case", "2"), ("unit", "two 3×3 conv"), ("shortcut", "yes"),
              ("units per stage", "1"))),
        Cell("case3", _msr_run("table2/case3", "table2_case3"), 0.9640, None,
             (("case", "3"), ("unit", "two 3×3 conv"), ("shortcut", "yes"),
              ("units per stage", "2"))),
        Cell("case4", _PROPOSED_DICE, 0.9717, None,
             (("case", "4"), ("unit", "MS-ResUnit (with attention)"), ("shortcut", "yes"),
              ("units per stage", "1")),
             "same run as Table 1 proposed / Dice loss"),
        Cell("case5", _msr_run("table2/case5", "table2_case5"), 0.9628, None,
             (("case", "5"), ("unit", "MS-ResUnit (with attention)"), ("shortcut", "yes"),
              ("units per stage", "2"))),
    ),
)

TABLE3 = TableSpec(
    name="table3",
    title="Table 3 — modules (%, Dice loss)",
    cells=(
        Cell("case1", _msr_run("table3/case1", "table3_case1"), 95.60, 92.33,
             (("case", "1"), ("residual blocks", "yes"), ("attention", "no")),
             "multi-scale residual unit without channel attention (docs/models.md)"),
        Cell("case2", _msr_run("table3/case2", "table3_case2"), 96.80, 94.07,
             (("case", "2"), ("residual blocks", "no"), ("attention", "yes")),
             "one plain 3×3 conv in place of the hierarchy, attention kept (docs/models.md)"),
        Cell("case3", _PROPOSED_DICE, 97.17, 94.52,
             (("case", "3"), ("residual blocks", "yes"), ("attention", "yes")),
             "same run as Table 1 proposed / Dice loss"),
    ),
)

TABLES: Mapping[str, TableSpec] = MappingProxyType(
    {t.name: t for t in (TABLE1, TABLE2, TABLE3)})


def get_table(name: str) -> TableSpec:
    try:
        return TABLES[name]
    except KeyError:
        raise InputError(f"unknown table {name!r}; choose from {', '.join(TABLES)}") from None


def runs_of(tables: list[TableSpec] | tuple[TableSpec, ...]) -> list[RunSpec]:
    """The distinct runs behind ``tables``, in first-use order (shared cells appear once)."""
    seen: dict[str, RunSpec] = {}
    for table in tables:
        for cell in table.cells:
            prev = seen.setdefault(cell.run.key, cell.run)
            if prev != cell.run:
                raise InputError(f"run key {cell.run.key} names two different configurations")
    return list(seen.values())
