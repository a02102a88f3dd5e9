"""Reproduce the paper's Tables 1–3 and Figures 6–7 (``spineseg experiment``).

- :mod:`.specs`: the tables as data (rows, columns, the paper's numbers, which run fills a cell);
- :mod:`.profiles`: training budgets (``paper``, ``quick``, ``tiny``);
- :mod:`.runner`: trains and evaluates every (run, seed) resumably;
- :mod:`.tables`, :mod:`.figures`: Markdown/JSON tables with a computed reading, Figures 6–7;
- :mod:`.pipeline`: :func:`run_experiment`, one call per target.
"""

from spineseg.experiments.pipeline import (
    TARGETS,
    ExperimentConfig,
    ExperimentOutcome,
    run_experiment,
)
from spineseg.experiments.profiles import PROFILES, Profile, get_profile
from spineseg.experiments.specs import TABLES, Cell, RunSpec, TableSpec, get_table

__all__ = [
    "PROFILES",
    "TABLES",
    "TARGETS",
    "Cell",
    "ExperimentConfig",
    "ExperimentOutcome",
    "Profile",
    "RunSpec",
    "TableSpec",
    "get_profile",
    "get_table",
    "run_experiment",
]
