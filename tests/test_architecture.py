"""The layout is the architecture (docs/architecture.md), and these tests keep it so.

The import graph is read from the source with ``ast`` (every import, at module level or
inside a function; those under ``if TYPE_CHECKING:`` are annotations and never run, so they
are left out): no circle, no engine module that imports a plugin, each wing of the engine
importing only from the wings below it, plugins importing only the public API, and no module
over 600 lines. The lint rule that refuses an internal import from plugins/ and examples/ is
run on a probe to show it catches one.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import medadapt.engine

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"medadapt.engine": ROOT / "engine", "medadapt.plugins": ROOT / "plugins"}
#: The engine's wings, lowest first: a module may import its own wing and those before it.
#: Modules of the top floor (batch, cluster, shift, the command line) may import any wing.
WINGS = ["contracts", "output", "profile", "data", "models", "training", "adaptation|validation"]
TOP = {"batch", "cli", "cluster", "shift", "__main__"}
LONGEST = 600


def _modules() -> dict[str, Path]:
    found = {}
    for prefix, root in PACKAGES.items():
        for path in sorted(root.rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([prefix, *parts])] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The medadapt modules that ``name`` imports when it runs."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    annotations_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for statement in node.body
        for inner in ast.walk(statement)
    }
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in annotations_only:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full if full in MODULES else base)
    return {module for module in found if module in MODULES and module != name}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return circles


def _floor(module: str) -> int | None:
    """The wing's place in :data:`WINGS`, or None for the top floor and the public face."""
    parts = module.split(".")
    if len(parts) < 3 or parts[2] in TOP:
        return None
    return next(i for i, wings in enumerate(WINGS) if parts[2] in wings.split("|"))


def test_the_circle_finder_finds_a_circle():
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circle():
    assert _circles(GRAPH) == []


def test_no_engine_module_imports_a_plugin():
    wrong = {
        (name, other)
        for name, imported in GRAPH.items()
        if name.startswith("medadapt.engine")
        for other in imported
        if other.startswith("medadapt.plugins")
    }
    assert wrong == set()


def test_every_engine_module_lies_in_a_wing_or_on_the_top_floor():
    lost = [
        name
        for name in MODULES
        if name.count(".") >= 2
        and name.startswith("medadapt.engine")
        and name.split(".")[2] not in TOP
        and not any(name.split(".")[2] in wings.split("|") for wings in WINGS)
    ]
    assert lost == []


def test_each_wing_imports_only_from_the_wings_below_it():
    upward = []
    for name, imported in GRAPH.items():
        if not name.startswith("medadapt.engine.") or _floor(name) is None:
            continue
        for other in imported:
            if other == "medadapt.engine" or _floor(other) is None:
                upward.append((name, other))  # the public face and the top floor sit above
                continue
            same_floor_other_wing = (
                _floor(other) == _floor(name) and other.split(".")[2] != name.split(".")[2]
            )
            if _floor(other) > _floor(name) or same_floor_other_wing:
                upward.append((name, other))
    assert upward == []


def test_plugins_import_only_the_public_api():
    internal = {
        (name, other)
        for name, imported in GRAPH.items()
        if name.startswith("medadapt.plugins")
        for other in imported
        if other.startswith("medadapt.engine.")
    }
    assert internal == set()


@pytest.mark.parametrize("name", sorted(MODULES), ids=str)
def test_no_module_is_over_600_lines(name):
    lines = len(MODULES[name].read_text(encoding="utf-8").splitlines())
    assert lines <= LONGEST, f"{MODULES[name].relative_to(ROOT)}: {lines} lines"


def test_every_public_name_resolves():
    missing = [name for name in medadapt.engine.__all__ if not hasattr(medadapt.engine, name)]
    assert missing == []


@pytest.mark.parametrize("folder", ["plugins", "examples"])
def test_the_lint_rule_bans_every_internal_module(folder):
    config = tomllib.loads((ROOT / folder / "ruff.toml").read_text())
    banned = set(config["lint"]["flake8-tidy-imports"]["banned-api"])
    internal = {
        f"medadapt.engine.{path.stem if path.is_file() else path.name}"
        for path in (ROOT / "engine").iterdir()
        if (path.suffix == ".py" and path.stem not in {"__init__", "__main__"})
        or (path.is_dir() and (path / "__init__.py").exists())
    }
    assert banned == internal
    assert "TID251" in config["lint"]["extend-select"]


@pytest.mark.parametrize(
    ("where", "line", "caught"),
    [
        ("plugins/probe.py", "from medadapt.engine.data.samples import SiteData", True),
        ("plugins/probe.py", "import medadapt.engine.validation.metrics", True),
        ("examples/probe/probe.py", "from medadapt.engine.contracts import components", True),
        ("plugins/probe.py", "from medadapt.engine import SelectionScore", False),
        ("engine/probe.py", "from medadapt.engine.data.samples import SiteData", False),
    ],
)
def test_make_lint_fails_on_an_internal_import_from_plugins_or_examples(where, line, caught):
    bound = line.split()[1].split(".")[0] if line.startswith("import ") else line.split()[-1]
    probe = f'{line}\n\n__all__ = ["{bound}"]\n'
    done = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--stdin-filename", where, "--no-cache", "-"],
        input=probe,
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert ("TID251" in done.stdout) is caught, done.stdout + done.stderr
    assert (done.returncode != 0) is caught, done.stdout + done.stderr


def test_pyproject_lists_every_package_of_the_engine_and_the_plugins():
    # setuptools installs only the packages named (the package-dir mapping rules out
    # find_packages); a folder left out is missing from the wheel (tests/test_packaging.py).
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(config["tool"]["setuptools"]["packages"])
    packages = {name for name, path in MODULES.items() if path.name == "__init__.py"}
    assert packages <= listed
