"""The package's shape: imports never run back up the layers (lazy imports included), no import circle, and
docs/import_graph.md is the graph the code has."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import import_graph  # noqa: E402  (tools/import_graph.py: the one parser of the package's imports)

# Lowest first (docs/import_graph.md draws the arrows). A module may import modules of its own layer (no circle) or of
# a lower one, never of a higher one.
LAYERS = {
    "inputs": {"paths", "image", "audio", "media", "maps", "distributed"},
    "protocol": {"metrics", "metrics.protocol", "metrics.ground_truth", "metrics.listening", "metrics.extended"},
    "model": {"configuration_xpl", "backbones", "pretrained", "modeling_xpl", "processing_xpl", "pipeline_xpl",
              "loading", "__init__"},
    "data": {"data", "data.schema", "data.annotations", "data.shards", "data.decoding", "data.augment",
             "data.transforms", "data.loading", "data.streams", "data.synthetic", "data.arrow_exit", "data.checks",
             "data.source", "data.convert", "data.convert.*"},
    "method": {"losses", "pseudo_labels", "curriculum", "method", "objective", "trainer", "model_selection",
               "training_args", "checkpointing", "run_folder", "trunk_features",
               "optimization"},
    "outputs": {"evaluation", "visualization", "evaluate", "hub", "hub.*"},
}


def layer_of(module: str) -> int:
    for index, members in enumerate(LAYERS.values()):
        if module in members or any(m.endswith(".*") and module.startswith(m[:-1]) for m in members):
            return index
    raise AssertionError(f"module {module!r} is in no layer of tests/test_layout.py: place it")


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    names = list(LAYERS)
    return [f"{module} ({names[layer_of(module)]}) imports {target} ({names[layer_of(target)]})"
            for module, targets in sorted(graph.items()) for target in sorted(targets)
            if layer_of(target) > layer_of(module)]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` as a path ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_runs_back_up_the_layers():
    problems = upward_imports(import_graph.import_graph())
    assert not problems, "\n".join(problems)


def test_no_import_circle():
    assert find_cycle(import_graph.import_graph()) is None


def test_dynamic_imports_go_through_a_lazy_table():
    dynamic = {}
    for name, path in import_graph.package_modules().items():
        lines = import_graph.imports_in_source(path.read_text(), name, path.name == "__init__.py")[1]
        if lines:
            dynamic[name] = lines
    assert not dynamic, f"import_module() with a computed name outside a _LAZY table: {dynamic}"


def test_the_checks_see_lazy_imports():
    """Imports inside functions, importlib.import_module strings and _LAZY tables are arrows too: an upward one of
    each kind is caught, and a circle closed by a lazy import is found."""
    source = '''
import importlib

_LAZY = {"Trainer": "..trainer"}

def late():
    from ..evaluation import evaluate_model
    return importlib.import_module("xpl_hf.hub.card"), importlib.import_module("..training_args", __package__)
'''
    imports, _ = import_graph.imports_in_source(source, "data.loading")
    assert {"evaluation", "hub.card", "training_args", "trainer"} <= imports
    problems = upward_imports({"data.loading": imports})
    assert {p.split(" imports ")[1].split(" ")[0] for p in problems} == {"evaluation", "hub.card", "training_args",
                                                                        "trainer"}
    assert find_cycle({"maps": {"image"}, "image": {"audio"}, "audio": {"maps"}}) == ["audio", "maps", "image",
                                                                                        "audio"]
    _, dynamic = import_graph.imports_in_source("import importlib\nimportlib.import_module(name)\n", "maps")
    assert dynamic == [2]


def test_committed_import_graph_is_the_generated_one():
    expected = import_graph.graph_document()
    committed = import_graph.GRAPH_FILE.read_text() if import_graph.GRAPH_FILE.is_file() else ""
    assert committed == expected, "docs/import_graph.md is stale: run `python tools/import_graph.py --write`"


def test_the_version_is_written_once():
    """pyproject.toml reads the version from ``xpl_hf.__version__`` (no second copy), and the installed distribution
    carries it."""
    import importlib.metadata

    try:
        import tomllib
    except ImportError:  # Python 3.10: pytest depends on tomli there
        import tomli as tomllib

    import xpl_hf

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in pyproject["project"] and "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "xpl_hf.__version__"}
    assert importlib.metadata.version("xpl-hf") == xpl_hf.__version__, "reinstall: pip install -e ."
