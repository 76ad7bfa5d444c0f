"""The shipped package's shape: one import name, a pure core, no import cycles.

Read from the source files (no import), so a violation is named by file and line.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import toolflows

REPO = Path(__file__).resolve().parents[1]
# Folder of the repository -> the package it ships as (pyproject's package-dir).
FOLDERS = {
    "flows": "toolflows",
    "blocks": "toolflows.blocks",
    "deployments": "toolflows.deployments",
}


def _modules() -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for folder, package in FOLDERS.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            parts = path.relative_to(REPO / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join((package, *parts))] = path
    return modules


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.Module, *, module_level: bool) -> list[tuple[int, str]]:
    """(line, imported name) of each import; module level skips functions and TYPE_CHECKING."""
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if module_level and isinstance(
                child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda
            ):
                continue
            if module_level and isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, ast.Import):
                found.extend((child.lineno, alias.name) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and not child.level:
                found.append((child.lineno, child.module))
                found.extend((child.lineno, f"{child.module}.{a.name}") for a in child.names)
            visit(child)

    visit(tree)
    return found


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def test_the_folders_map_to_one_package_and_pyproject_agrees():
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"][
        "setuptools"
    ]
    assert setuptools["package-dir"] == {package: folder for folder, package in FOLDERS.items()}
    assert all(package.startswith("toolflows") for package in setuptools["packages"])
    assert Path(toolflows.__file__).parent == REPO / "flows"
    assert (REPO / "flows" / "py.typed").is_file()


def test_no_module_imports_a_top_level_flows_blocks_or_deployments():
    offenders = [
        f"{path.relative_to(REPO)}:{line}: {name}"
        for path in MODULES.values()
        for line, name in _imports(_tree(path), module_level=False)
        if name.split(".")[0] in FOLDERS
    ]
    assert offenders == []


def test_the_core_imports_no_prefect_and_nothing_outside_the_core():
    offenders = [
        f"{path.relative_to(REPO)}:{line}: {name}"
        for module, path in MODULES.items()
        if module.startswith("toolflows.core")
        for line, name in _imports(_tree(path), module_level=False)
        if name.split(".")[0] == "prefect"
        or (name.startswith("toolflows.") and not name.startswith("toolflows.core"))
    ]
    assert offenders == []
    # And at run time: importing every core module loads no Prefect.
    core = [m for m in MODULES if m.startswith("toolflows.core")]
    code = f"import sys; import {', '.join(core)}; print('prefect' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        targets = {name for _, name in _imports(_tree(path), module_level=True)}
        graph[module] = {t for t in targets if t in MODULES and t != module}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the list of modules around it, or None."""
    done: set[str] = set()

    def walk(module: str, trail: list[str]) -> list[str] | None:
        if module in trail:
            return [*trail[trail.index(module) :], module]
        if module in done:
            return None
        for target in sorted(graph[module]):
            if cycle := walk(target, [*trail, module]):
                return cycle
        done.add(module)
        return None

    for module in sorted(graph):
        if cycle := walk(module, []):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_among_the_modules():
    assert _cycle(_graph()) is None


def test_the_public_api():
    assert sorted(toolflows.__all__) == sorted(
        [
            "execute_method",
            "run_tool_method",
            "run_batch",
            "ToolMethod",
            "ToolflowsError",
            "ErrorCode",
            "ToolResult",
            "StoredFile",
        ]
    )
    for name in toolflows.__all__:
        value = getattr(toolflows, name)
        assert value.__name__ == name
        assert value.__module__.startswith("toolflows.")
    with pytest.raises(AttributeError, match="no attribute 'engine_internals'"):
        _ = toolflows.engine_internals
