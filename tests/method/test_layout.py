"""The layout's promises, read from the source: the core and the embedded world import nothing of the harness, no
function takes more than 8 parameters, no module runs past 450 lines."""
import ast
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
CORE = ("dpo.py", "cagrad.py", "dual_solver.py", "raco.py", "world.py")
SOURCES = sorted(p for p in ROOT.rglob("*.py") if not {".ci", ".git", "out"} & set(p.relative_to(ROOT).parts))


def imported_modules(path):
    tree = ast.parse(path.read_text())
    names = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    names += [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module]
    return {name.split(".")[0] for name in names}


@pytest.mark.parametrize("name", CORE)
def test_the_core_and_the_world_import_only_torch_numpy_the_standard_library_and_each_other(name):
    allowed = {"torch", "numpy"} | {core[:-3] for core in CORE} | set(sys.stdlib_module_names)
    assert imported_modules(ROOT / name) <= allowed, name


def test_no_function_takes_more_than_eight_parameters():
    wide = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = node.args
                names = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs]
                count = len(names) - (names[:1] in (["self"], ["cls"])) + bool(args.vararg) + bool(args.kwarg)
                if count > 8:
                    wide.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({count})")
    assert wide == []


def test_no_module_runs_past_450_lines():
    assert [str(p.relative_to(ROOT)) for p in SOURCES if len(p.read_text().splitlines()) > 450] == []
