"""The package's import graph, lazy imports included, and its Mermaid picture (docs/import_graph.md).

An import is any reference from one module of ``xpl_hf`` to another: ``import``/``from ... import`` statements at
any depth (inside functions too), ``importlib.import_module("...")`` calls with a string argument, and the values
of a package's ``_LAZY`` table (name -> submodule, resolved by its ``__getattr__``).

    python tools/import_graph.py            # print the Mermaid block
    python tools/import_graph.py --write    # rewrite docs/import_graph.md (tests/test_layout.py compares them)
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "xpl_hf"
GRAPH_FILE = ROOT / "docs" / "import_graph.md"
SKIPPED = ("metrics/avsl_localization",)  # the evaluate metric script: loaded by `evaluate`, imports the package


def module_name(path: Path) -> str:
    """``xpl_hf/data/loading.py`` -> ``data.loading``; a package's ``__init__.py`` -> the package (``data``); the
    top ``xpl_hf/__init__.py`` -> ``__init__``."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def package_modules() -> dict[str, Path]:
    """Every module of the package, by name."""
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))
            if not any(s in p.relative_to(PACKAGE).as_posix() for s in SKIPPED)}


def _exists(parts: list[str]) -> bool:
    base = PACKAGE.joinpath(*parts) if parts else PACKAGE
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _resolve(parts: list[str]) -> str:
    """The longest prefix of ``parts`` that is a module of the package (``["data", "loading", "f"]`` ->
    ``data.loading``); ``__init__`` for the top package."""
    for end in range(len(parts), 0, -1):
        if _exists(parts[:end]):
            return ".".join(parts[:end])
    return "__init__"


def imports_of(path: Path) -> set[str]:
    """Package modules that the file at ``path`` imports, eagerly or lazily."""
    return imports_in_source(path.read_text(), module_name(path), is_package=path.name == "__init__.py")[0]


def imports_in_source(source: str, module: str, is_package: bool = False) -> tuple[set[str], list[int]]:
    """``(package modules imported, lines of dynamic import_module calls)`` of the source of ``module``.

    Args:
        source: Python source text.
        module: its dotted name inside the package (``data.loading``; ``__init__`` for the top package).
        is_package: the source is a package's ``__init__.py``.

    A dynamic ``import_module(...)`` call (its argument is not a string constant) is resolved only through the
    module's ``_LAZY`` table; its line is returned so that a check can refuse dynamic imports without a table.
    """
    parts = [] if module == "__init__" else module.split(".")
    package = parts if is_package else parts[:-1]
    found: set[str] = set()
    dynamic: list[int] = []

    def relative(level: int, dotted: str | None) -> list[str]:
        base = package[: len(package) - (level - 1)] if level > 1 else list(package)
        return [*base, *(dotted.split(".") if dotted else [])]

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                target = relative(node.level, node.module)
            elif node.module and (node.module == "xpl_hf" or node.module.startswith("xpl_hf.")):
                target = node.module.split(".")[1:]
            else:
                continue
            for alias in node.names:  # `from . import loading` names a module; `from .x import f` a name
                found.add(_resolve([*target, alias.name]))
        elif isinstance(node, ast.Import):
            found.update(_resolve(a.name.split(".")[1:]) for a in node.names if a.name.startswith("xpl_hf."))
        elif isinstance(node, ast.Call) and _is_import_module(node.func) and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                name = first.value
                if name.startswith("."):
                    level = len(name) - len(name.lstrip("."))
                    found.add(_resolve(relative(level, name.lstrip(".") or None)))
                elif name.startswith("xpl_hf."):
                    found.add(_resolve(name.split(".")[1:]))
            else:
                dynamic.append(node.lineno)
        elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_LAZY" for t in node.targets):
            if isinstance(node.value, ast.Dict):  # name -> submodule, resolved by the package's __getattr__
                for value in node.value.values:
                    if isinstance(value, ast.Constant) and isinstance(value.value, str):
                        level = max(len(value.value) - len(value.value.lstrip(".")), 1)
                        found.add(_resolve(relative(level, value.value.lstrip("."))))
    if "_LAZY" in source:
        dynamic = []  # resolved through the table above
    return found - {module}, dynamic


def _is_import_module(func: ast.expr) -> bool:
    return (isinstance(func, ast.Attribute) and func.attr == "import_module") or (
        isinstance(func, ast.Name) and func.id == "import_module")


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports (eagerly or lazily)."""
    return {name: imports_of(path) for name, path in package_modules().items()}


def transitive_reduction(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The graph without the edges implied by longer paths (an acyclic graph is assumed), for a readable picture."""
    def reachable(start: str, skip_edge: tuple[str, str]) -> set[str]:
        seen, stack = set(), [t for t in graph.get(start, ()) if (start, t) != skip_edge]
        while stack:
            node = stack.pop()
            if node not in seen:
                seen.add(node)
                stack.extend(graph.get(node, ()))
        return seen

    return {a: {b for b in targets if b not in reachable(a, (a, b))} for a, targets in graph.items()}


def _node_id(name: str) -> str:
    return "m_" + name.replace(".", "_")


def mermaid(graph: dict[str, set[str]]) -> str:
    """A Mermaid flowchart of the transitive reduction, grouped by sub-package; an arrow points to the imported
    module (imports run down the page)."""
    reduced = transitive_reduction(graph)
    packages = {name.split(".")[0] for name in graph if "." in name}
    groups: dict[str, list[str]] = {}
    for name in sorted(graph):
        group = name.split(".")[0] if name.split(".")[0] in packages else ""
        groups.setdefault(group, []).append(name)
    lines = ["```mermaid", "flowchart TD"]
    for group, names in sorted(groups.items()):
        indent = "  "
        if group:
            lines.append(f"  subgraph {_node_id(group)}_pkg [\"{group}/\"]")
            indent = "    "
        for name in names:
            if name == "__init__":
                label = "xpl_hf"
            elif name == group:
                label = "__init__"
            else:
                label = name.split(".", 1)[1] if group else name
            lines.append(f"{indent}{_node_id(name)}[\"{label}\"]")
        if group:
            lines.append("  end")
    for source in sorted(reduced):
        for target in sorted(reduced[source]):
            lines.append(f"  {_node_id(source)} --> {_node_id(target)}")
    lines.append("```")
    return "\n".join(lines) + "\n"


def graph_document(graph: dict[str, set[str]] | None = None) -> str:
    """The content of docs/import_graph.md."""
    graph = import_graph() if graph is None else graph
    edges = sum(len(t) for t in graph.values())
    return (
        "# Import graph of `xpl_hf`\n\n"
        "Generated by `python tools/import_graph.py --write` (do not edit by hand; `tests/test_layout.py` checks that "
        "it matches the code). An arrow points from a module to a module it imports, lazy imports included; edges "
        f"implied by longer paths are left out ({len(graph)} modules, {edges} imports in all).\n\n"
        + mermaid(graph)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help=f"rewrite {GRAPH_FILE.relative_to(ROOT)}")
    args = parser.parse_args(argv)
    document = graph_document()
    if args.write:
        GRAPH_FILE.write_text(document)
        print(f"wrote {GRAPH_FILE.relative_to(ROOT)}")
    else:
        print(mermaid(import_graph()), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
