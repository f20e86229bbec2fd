"""bench/ as the package it is (``python -m bench.<name>`` from the repository root), for the tests of its scripts."""

import importlib
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load(name: str):
    """The module ``bench.<name>`` (its relative imports resolved inside the bench package)."""
    if "bench" not in sys.modules:
        spec = importlib.util.spec_from_file_location("bench", ROOT / "bench" / "__init__.py",
                                                      submodule_search_locations=[str(ROOT / "bench")])
        package = importlib.util.module_from_spec(spec)
        sys.modules["bench"] = package
        spec.loader.exec_module(package)
    return importlib.import_module(f"bench.{name}")
