"""``python -m spineseg``: the CLI as a module, so ``torchrun -m spineseg train …`` works
(torchrun runs a Python script or module, not a console script)."""

from spineseg.cli.main import entry

if __name__ == "__main__":
    entry()
