"""The package's import graph: no circles, and layers import downwards only (../shared/STYLE.md).

The graph is read from the source with `ast`, not by importing it. Every `import` and
`from ... import` of a `transferlab` module is an edge, wherever it stands: at module level, inside
a function (a deferred import is still a dependency, only a later one) and under
`if TYPE_CHECKING:` (a type-only circle is still a circle in the design). `from pkg import name`
is an edge to `pkg.name` when that is a module, else to the package `pkg` itself.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "transferlab"

# Lowest first. A module belongs to the layer of its longest listed prefix. Modules the style
# guide does not name sit where their imports put them: config, predict and export use data and
# models and serve training and the commands; evaluation reads a finished run (its predictions,
# best.pt, its dataset) and writes RUN_DIR/evaluation/ with its own figures, below the report,
# which reads those files; results is the shared reader of the files that compare / sweep write
# and the report reads. The package itself (`import transferlab as tl`) is the public face over
# the API, so it sits in the api layer, as itself only (`ROOT`).
ROOT = "transferlab"
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("base", ("transferlab._version", "transferlab.errors", "transferlab.io", "transferlab.choices",
              "transferlab.logs", "transferlab.runfiles", "transferlab.metrics", "transferlab.threads")),
    ("data", ("transferlab.data",)),
    ("models", ("transferlab.models",)),
    ("training", ("transferlab.training", "transferlab.config", "transferlab.recipes", "transferlab.predict",
                  "transferlab.export")),
    ("results", ("transferlab.results",)),
    ("compare/sweep", ("transferlab.compare", "transferlab.sweep", "transferlab.ranking",
                       "transferlab.audit")),
    ("evaluation", ("transferlab.evaluation",)),
    ("report", ("transferlab.report",)),
    ("api", ("transferlab.api", ROOT)),
    ("commands", ("transferlab.commands", "transferlab.cli", "transferlab.__main__")),
)


def package_modules(src: Path = SRC, package: str = PACKAGE) -> dict[str, tuple[Path, bool]]:
    """{dotted module name: (file, is a package __init__)} for every .py file of the package."""
    modules = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        modules[".".join(parts)] = (path, is_package)
    return modules


def import_graph(modules: Mapping[str, tuple[Path, bool]]) -> dict[str, set[str]]:
    """{module: modules of the package it imports}, from every import statement in its source."""
    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: resolve against this module's package
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[: len(base) - node.level + 1]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                for alias in node.names:
                    child = f"{module}.{alias.name}"
                    targets.add(child if child in modules else module)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def layer_of(module: str, layers: tuple[tuple[str, tuple[str, ...]], ...] = LAYERS) -> int | None:
    """Index of the module's layer (longest matching prefix; the root package matches only
    itself), None when no layer lists it."""
    best: tuple[int, int] | None = None  # (prefix length, layer index)
    for i, (_, prefixes) in enumerate(layers):
        for prefix in prefixes:
            if module == prefix or (prefix != ROOT and module.startswith(prefix + ".")):
                if best is None or len(prefix) > best[0]:
                    best = (len(prefix), i)
    return None if best is None else best[1]


def upward_imports(graph: Mapping[str, Iterable[str]],
                   layers: tuple[tuple[str, tuple[str, ...]], ...] = LAYERS) -> list[str]:
    """Every edge from a lower layer to a higher one, as readable lines."""
    bad = []
    for source, targets in sorted(graph.items()):
        for target in sorted(targets):
            a, b = layer_of(source, layers), layer_of(target, layers)
            if a is not None and b is not None and b > a:
                bad.append(f"{source} ({layers[a][0]}) imports {target} ({layers[b][0]})")
    return bad


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(package_modules())


def test_the_walker_sees_the_package(graph: dict[str, set[str]]) -> None:
    # Function-level imports count: compare imports training inside default_train_fn only.
    assert "transferlab.training" in graph["transferlab.compare"]
    assert "transferlab.training.run" in graph["transferlab.training"]
    assert len(graph) > 50


def test_no_import_circles(graph: dict[str, set[str]]) -> None:
    found = cycles(graph)
    assert not found, "import circles (make one side import the other, not both): " + "; ".join(
        " <-> ".join(c) for c in found)


def test_every_module_has_a_layer(graph: dict[str, set[str]]) -> None:
    missing = sorted(m for m in graph if layer_of(m) is None)
    assert not missing, (f"modules in no layer: {missing}; add each (or its package) to LAYERS in "
                         "tests/test_imports.py, at the lowest layer its imports allow")


def test_layers_import_downwards_only(graph: dict[str, set[str]]) -> None:
    bad = upward_imports(graph)
    assert not bad, ("upward imports (data -> models -> training -> results -> compare/sweep -> "
                     "report -> api -> commands):\n" + "\n".join(bad))


def test_the_checks_catch_a_circle_and_an_upward_import() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    layers = (("low", ("p.low",)), ("high", ("p.high",)))
    assert upward_imports({"p.low.x": {"p.high"}, "p.high": {"p.low.x"}}, layers) == [
        "p.low.x (low) imports p.high (high)"]


def test_relative_and_from_package_imports_resolve(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from . import leaf\n")
    (pkg / "sub" / "leaf.py").write_text("def f():\n    from ..top import g\n")
    (pkg / "top.py").write_text("from pkg.sub import leaf, something\n")
    graph = import_graph(package_modules(tmp_path, "pkg"))
    assert graph["pkg.sub"] == {"pkg.sub.leaf"}
    assert graph["pkg.sub.leaf"] == {"pkg.top"}
    assert graph["pkg.top"] == {"pkg.sub.leaf", "pkg.sub"}
    assert cycles(graph) == [["pkg.sub", "pkg.sub.leaf", "pkg.top"]]
