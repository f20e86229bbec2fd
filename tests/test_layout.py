"""The package's import graph: no circle, and every import goes down the layers (a module never imports one above)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "xpl_hf"

# Lowest first. A module may import only modules of strictly lower layers; layer 0 holds building blocks with no
# package import (data.schema excepted: it is the data layer's base).
LAYERS = [
    {"maps", "distributed", "paths", "image", "audio", "losses", "backbones", "configuration_xpl", "metrics.protocol",
     "data.annotations", "data.augment", "data.convert.archive"},
    {"metrics.ground_truth"},
    {"metrics", "data.schema"},
    {"data.shards", "pseudo_labels", "curriculum", "modeling_xpl", "processing_xpl",
     "data.decoding", "data", "visualization", "data.convert.report"},
    {"data.loading", "data.synthetic", "data.streams", "data.transforms", "method", "pretrained", "loading", "hub",
     "pipeline_xpl", "data.convert.samples"},
    {"evaluation", "trainer", "checkpointing", "__init__", "data.convert.sources", "data.convert.video",
     "data.convert.writer"},
    {"evaluate", "training_args", "data.convert.folder", "data.convert.flickr", "data.convert.vggss"},
    {"data.convert.cli"},
    {"data.convert"},
    {"data.prepare", "data.convert.__main__"},
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def package_imports(path: Path) -> set[str]:
    """Intra-package modules imported by a file (absolute `xpl_hf.x` or relative `.x`, `..x`), lazy ones included."""
    here = module_name(path).split(".")
    package = here[:-1] if path.name != "__init__.py" else here
    if path.name == "__init__.py" and here == ["__init__"]:
        package = []
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                target = [*base, *(node.module.split(".") if node.module else [])]
            elif node.module and node.module.startswith("xpl_hf"):
                target = node.module.split(".")[1:]
            else:
                continue
            names = [".".join([*target, alias.name]) for alias in node.names]
            candidates = [name for name in names if (PACKAGE / (name.replace(".", "/") + ".py")).is_file()
                          or (PACKAGE / name.replace(".", "/") / "__init__.py").is_file()]
            found.update(candidates or [".".join(target) or "__init__"])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".", 1)[1] for a in node.names if a.name.startswith("xpl_hf."))
    return {name for name in found if name} - {module_name(path)}


def layer_of(name: str) -> int:
    for index, layer in enumerate(LAYERS):
        if name in layer:
            return index
    raise AssertionError(f"module {name!r} is in no layer of tests/test_layout.py: place it")


def test_imports_go_down_the_layers_without_circles():
    files = [p for p in PACKAGE.rglob("*.py") if "avsl_localization" not in p.parts]
    graph = {module_name(p): package_imports(p) for p in files}
    problems = []
    for module, imports in graph.items():
        for target in imports:
            if layer_of(target) >= layer_of(module):
                problems.append(f"{module} (layer {layer_of(module)}) imports {target} (layer {layer_of(target)})")
    assert not problems, "\n".join(problems)


def test_modules_stay_small_except_the_generator_and_converters():
    too_long = {module_name(p): n for p in PACKAGE.rglob("*.py")
                if (n := len(p.read_text().splitlines())) > 480 and module_name(p) not in ("data.synthetic",
                                                                                           "data.prepare")}
    assert not too_long, too_long
