"""bench/ has one training path: the package's `TrainingStep`. No script steps an optimiser or calls backward itself
(but for the plain baseline that bench/train_step.py times against it), none edits `sys.path` or imports a private
name; the scripts are one package (`python -m bench.<name>`)."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
TRAINING_CALL = re.compile(r"\.backward\(|\boptimizer\.step\(|\bopt\.step\(")
BASELINE = "train_step.py"  # the plain single-model step timed as the baseline of TrainingStep's overhead
SYS_PATH_LEFT: set[str] = set()  # scripts allowed to edit sys.path: none


def scripts() -> list[Path]:
    found = sorted(BENCH.rglob("*.py"))
    assert len(found) > 5, "bench/ not found"
    return found


def test_every_training_step_in_bench_is_the_packages():
    offending = {}
    for path in scripts():
        hits = [f"{n}: {line.strip()}" for n, line in enumerate(path.read_text().splitlines(), 1)
                if TRAINING_CALL.search(line)]
        if path.name == BASELINE:  # exactly one backward and one optimiser step: the plain baseline
            assert len(hits) == 2, hits
            continue
        if hits:
            offending[path.name] = hits
    assert not offending, f"bench/ trains outside xpl_hf.trainer.TrainingStep: {offending}"


def test_bench_edits_no_import_path_and_imports_no_private_name():
    problems = []
    for path in scripts():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr == "path" and getattr(node.value, "id", "") == "sys"
                    and path.name not in SYS_PATH_LEFT):
                problems.append(f"{path.name}:{node.lineno}: sys.path")
            elif isinstance(node, ast.ImportFrom):
                private = [a.name for a in node.names if a.name.startswith("_")]
                if private:
                    problems.append(f"{path.name}:{node.lineno}: imports {private} from {node.module}")
            elif isinstance(node, ast.Import):
                private = [a.name for a in node.names if any(part.startswith("_") for part in a.name.split("."))]
                if private:
                    problems.append(f"{path.name}:{node.lineno}: imports {private}")
    assert not problems, problems


def test_bench_is_a_package_whose_scripts_import_each_other_by_package():
    assert (BENCH / "__init__.py").is_file()
    siblings = {p.stem for p in scripts()}
    for path in scripts():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                assert node.module.split(".")[0] not in siblings, f"{path.name}: from {node.module} (use a . import)"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    assert alias.name.split(".")[0] not in siblings, f"{path.name}: import {alias.name}"
