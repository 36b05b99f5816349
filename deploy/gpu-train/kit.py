"""`enet-serve train-kit ...` without installing the project: for a GPU machine that has torch but
neither network nor the serving dependencies (no pip install there).

pyproject.toml maps the repository's folders to sub-packages (training/ is enet_serve.training); adding
the repository's root to the package's search path gives the same names from a plain checkout.
Spawned run processes import this file again as their main module, so they get the same path.
"""
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
import enet_serve  # noqa: E402

enet_serve.__path__.append(str(REPO))

if __name__ == "__main__":
    from enet_serve.cli import main

    sys.exit(main(["train-kit", *sys.argv[1:]]))
