"""Architecture rules, checked on the source text alone (``ast``; nothing of the project is imported).

The rules (the project's layering: ``unet3d`` knows nothing of search; short functions):

1. No import cycle among the project's modules. Imports inside functions count: a cycle broken only by
   moving an import into a function still couples the two modules.
2. Imports point one way: ``run_search -> search -> spaces -> unet3d``, never back.
3. The ``unet3d.inference``, ``unet3d.evaluation`` and ``unet3d.export`` packages (``PREDICTORS``)
   reach no ``unet3d.training.train`` code, directly or through other project modules (the trainer
   imports the predictor and the scoring, never the reverse: exporting or scoring loads no trainer).
4. No function or method (nested ones included) is longer than ``MAX_FUNCTION_LINES`` lines.
5. No label scheme by default below the CLI: a parameter that takes a scheme (``SCHEME_PARAMS``) in
   ``PACKAGES`` has no default but None. The scheme is resolved where the data is read and passed on;
   a default (BraTS 2019-2021's, once in 11 signatures) would score the next release's data with the
   wrong labels without a word.
6. One home for file names: the names of the files in a run, an export and an experiment folder
   (the constants with an extension of the classes in ``FOLDER_HOMES``) appear as a literal nowhere else
   in the code (docstrings aside); code asks the folder objects for its paths.

Every ``import`` and ``from ... import`` anywhere in a file is an edge (module level, inside functions,
under ``if TYPE_CHECKING:``), and so is ``importlib.import_module("literal")`` / ``__import__("literal")``.
``from pkg import name`` points to ``pkg.name`` when that is a module of the tree, else to ``pkg``;
relative imports are resolved against the importing module's package.

7. One place that knows the engines: no comparison with an engine's name (``spec.engine == "ray"``,
   ``engine in ("ray", ...)``) outside the registry (``ENGINE_REGISTRY``); code asks the engine
   object or the registry's features (``search.engines``).

8. Label values are the label module's: no label-value literal outside ``LABEL_HOME`` (a label, a
   segmentation compared with, tested against or assigned an integer: ``label == 4``,
   ``np.isin(seg, [1, 2, 4])``, ``label[mask] = 2``); code asks the ``LabelScheme``. BraTS has
   changed its values twice (4 -> 3 for ET in 2023, new labels in 2024).

``ROOT`` comes from this file's place, so a copy of the tree with this file in its ``tests/`` checks the
copy. Each test lists every offender in its failure message.
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Layers, lowest first: a module may import from its own layer or a lower one only.
LAYERS: tuple[str, ...] = ("unet3d", "spaces", "search", "run_search")
PACKAGES: tuple[str, ...] = ("unet3d", "spaces", "search")
TOP_MODULES: tuple[str, ...] = ("run_search",)
MAX_FUNCTION_LINES = 60

SCHEME_PARAMS = frozenset({"scheme", "region_classes"})
FOLDER_HOMES = {"unet3d/folders.py": ("RunFolder", "ExportFolder"),
                "search/storage.py": ("ExperimentFolder",)}

ENGINE_REGISTRY = "search/engines.py"
LABEL_HOME = "unet3d/labels.py"
LABEL_WORDS = ("label", "seg", "classes", "truth", "pred")  # (in a variable's or attribute's name)

PREDICTORS = ("unet3d.inference", "unet3d.evaluation", "unet3d.export")
TRAINER = "unet3d.training.train"


@dataclass(frozen=True)
class Edge:
    """One import statement of the tree: ``source`` imports ``target`` at ``path:line``."""

    source: str
    target: str
    path: str
    line: int

    def where(self) -> str:
        return f"{self.path}:{self.line}"


# ---------------------------------------------------------------------------------------------------
# Reading the tree


def _module_files(root: Path) -> dict[str, Path]:
    """Maps each project module's dotted name to its file (``pkg/__init__.py`` is ``pkg``)."""
    modules: dict[str, Path] = {}
    for package in PACKAGES:
        base = root / package
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*.py")):
            rel = path.relative_to(root)
            if "__pycache__" in rel.parts or any(p.startswith(".") for p in rel.parts):
                continue
            parts = list(rel.with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    for name in TOP_MODULES:
        path = root / f"{name}.py"
        if path.is_file():
            modules[name] = path
    return modules


def _is_package(module: str, modules: dict[str, Path]) -> bool:
    return modules[module].name == "__init__.py"


def _resolve_base(module: str, level: int, name: str | None, modules: dict[str, Path]) -> str | None:
    """The absolute dotted name a (possibly relative) ``from`` clause names, or None if out of range."""
    if level == 0:
        return name
    package = module if _is_package(module, modules) else module.rpartition(".")[0]
    parts = package.split(".") if package else []
    if level - 1 >= len(parts):  # beyond the top-level package: an ImportError at run time
        return None
    parts = parts[: len(parts) - (level - 1)]
    if name:
        parts.append(name)
    return ".".join(parts) or None


def _owning_module(dotted: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of ``dotted`` that is a project module (``a.b.c`` -> ``a.b`` if no ``a.b.c``)."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def _targets(node: ast.AST, module: str, modules: dict[str, Path]) -> list[str]:
    """The project modules one AST node imports (empty for other nodes and third-party imports)."""
    names: list[str] = []
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
        base = _resolve_base(module, node.level, node.module, modules)
        if base is None:
            return []
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            names.append(sub if alias.name != "*" and sub in modules else base)
    elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
        func = node.func
        called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if called in ("import_module", "__import__") and isinstance(node.args[0].value, str):
            names = [node.args[0].value]
    owners = (_owning_module(name, modules) for name in names)
    return [owner for owner in owners if owner is not None]


@dataclass(frozen=True)
class Tree:
    """What the rules look at: modules, import edges, parse errors and ASTs."""

    modules: dict[str, Path]
    edges: tuple[Edge, ...]
    syntax_errors: tuple[str, ...]
    trees: dict[str, ast.Module]

    def rel(self, module: str) -> str:
        return self.modules[module].relative_to(ROOT).as_posix()


@functools.lru_cache(maxsize=1)
def _scan() -> Tree:
    modules = _module_files(ROOT)
    edges: list[Edge] = []
    errors: list[str] = []
    trees: dict[str, ast.Module] = {}
    for module, path in modules.items():
        rel = path.relative_to(ROOT).as_posix()
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=rel)
        except SyntaxError as err:
            errors.append(f"{rel}:{err.lineno}: {err.msg}")
            continue
        trees[module] = tree
        for node in ast.walk(tree):
            for target in _targets(node, module, modules):
                if target != module:
                    edges.append(Edge(module, target, rel, node.lineno))
    unique = sorted(set(edges), key=lambda e: (e.path, e.line, e.target))  # one per name imported
    return Tree(modules, tuple(unique), tuple(errors), trees)


def _tree() -> Tree:
    tree = _scan()
    assert not tree.syntax_errors, "cannot parse:\n  " + "\n  ".join(tree.syntax_errors)
    return tree


def _graph(edges: tuple[Edge, ...]) -> dict[str, dict[str, Edge]]:
    """source -> target -> the first import statement making that edge."""
    graph: dict[str, dict[str, Edge]] = {}
    for edge in edges:
        graph.setdefault(edge.source, {}).setdefault(edge.target, edge)
    return graph


def _layer(module: str) -> int:
    return LAYERS.index(module.split(".")[0])


# ---------------------------------------------------------------------------------------------------
# Cycles


def _strongly_connected(graph: dict[str, dict[str, Edge]], nodes: list[str]) -> list[list[str]]:
    """Tarjan's strongly connected components (iterative), each sorted, only those of 2+ modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0
    for start in nodes:
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, {}))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        components.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = counter
                counter += 1
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph.get(child, {})))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return sorted(components)


def _shortest_path(graph: dict[str, dict[str, Edge]], start: str, goals: set[str],
                   allowed: set[str] | None = None) -> list[Edge] | None:
    """Breadth-first: the fewest import edges from ``start`` to any of ``goals`` (within ``allowed``)."""
    previous: dict[str, Edge | None] = {start: None}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for node in frontier:
            for target, edge in sorted(graph.get(node, {}).items()):
                if allowed is not None and target not in allowed:
                    continue
                if target in goals:
                    path = [edge]
                    while (back := previous[path[0].source]) is not None:
                        path.insert(0, back)
                    return path
                if target not in previous:
                    previous[target] = edge
                    following.append(target)
        frontier = following
    return None


def _chain(path: list[Edge]) -> str:
    """``a -> b -> a`` followed by where each import is."""
    names = " -> ".join([path[0].source, *(edge.target for edge in path)])
    steps = "".join(f"\n      {e.source} imports {e.target} at {e.where()}" for e in path)
    return names + steps


def test_no_import_cycles():
    tree = _tree()
    graph = _graph(tree.edges)
    components = _strongly_connected(graph, sorted(tree.modules))
    reports = []
    for component in components:
        members = set(component)
        cycle = _shortest_path(graph, component[0], {component[0]}, allowed=members)
        reports.append(f"  cycle among {', '.join(component)}:\n    {_chain(cycle)}")
    if reports:
        pytest.fail(
            "import cycles (imports inside functions count; break them by moving the shared code to the "
            "lower module, not by hiding the import):\n" + "\n".join(reports), pytrace=False)


def test_imports_point_one_way():
    tree = _tree()
    back = [edge for edge in tree.edges if _layer(edge.target) > _layer(edge.source)]
    lines = [f"  {e.where()}: {e.source} imports {e.target}" for e in back]
    if back:
        pytest.fail(
            f"imports against the layering {' <- '.join(LAYERS)} "
            f"(allowed: {' -> '.join(reversed(LAYERS))}):\n" + "\n".join(lines), pytrace=False)


def test_inference_reaches_no_train_code():
    tree = _tree()
    graph = _graph(tree.edges)
    predictors = [m for m in tree.modules for p in PREDICTORS if m == p or m.startswith(p + ".")]
    trainers = {m for m in tree.modules if m == TRAINER or m.startswith(TRAINER + ".")}
    missing = [p for p in PREDICTORS if p not in tree.modules]
    assert not missing, f"{missing} not found under {ROOT}"
    reports = []
    for predictor in sorted(predictors):
        path = _shortest_path(graph, predictor, trainers)
        if path is not None:
            reports.append("  " + _chain(path))
    if reports:
        pytest.fail(
            f"{', '.join(PREDICTORS)} must not import {TRAINER}, directly or through other modules "
            "(the trainer imports the predictor, never the reverse; move shared helpers below "
            "both):\n"
            + "\n".join(reports), pytrace=False)


# ---------------------------------------------------------------------------------------------------
# Function length


def _long_functions(tree: Tree) -> list[tuple[str, int, str, int]]:
    """(path, line, qualified name, length) of every def longer than MAX_FUNCTION_LINES."""
    found = []

    def visit(node: ast.AST, prefix: str, rel: str) -> None:
        for child in ast.iter_child_nodes(node):
            if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                visit(child, prefix, rel)
                continue
            name = prefix + child.name
            if not isinstance(child, ast.ClassDef):
                length = child.end_lineno - child.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    found.append((rel, child.lineno, name, length))
            visit(child, name + ".", rel)

    for module in sorted(tree.trees):
        visit(tree.trees[module], "", tree.rel(module))
    return sorted(found)


def test_functions_are_short():
    offenders = _long_functions(_tree())
    lines = [f"  {path}:{line} {name}: {length} lines" for path, line, name, length in offenders]
    if offenders:
        pytest.fail(
            f"functions longer than {MAX_FUNCTION_LINES} lines (def line to last line; split them into "
            "named steps):\n" + "\n".join(lines), pytrace=False)


# ---------------------------------------------------------------------------------------------------
# No default label scheme


def _scheme_defaults(tree: Tree) -> list[tuple[str, int, str, str]]:
    """(path, line, function, parameter) of every scheme parameter with a default other than None."""
    found = []
    for module in sorted(tree.trees):
        if not module.startswith(PACKAGES):
            continue
        for node in ast.walk(tree.trees[module]):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            a = node.args
            positional = [*a.posonlyargs, *a.args]
            pairs = [*zip(positional[len(positional) - len(a.defaults):], a.defaults, strict=True),
                     *zip(a.kwonlyargs, a.kw_defaults, strict=True)]
            for arg, default in pairs:
                none = isinstance(default, ast.Constant) and default.value is None
                if arg.arg in SCHEME_PARAMS and default is not None and not none:
                    found.append((tree.rel(module), node.lineno, node.name, arg.arg))
    return found


def test_no_label_scheme_is_a_default_below_the_cli():
    offenders = _scheme_defaults(_tree())
    if offenders:
        pytest.fail("label scheme parameters with a default (pass the scheme the data was read "
                    "with):\n" + "\n".join(f"  {p}:{ln} {fn}({arg}=...)" for p, ln, fn, arg in offenders),
                    pytrace=False)


# ---------------------------------------------------------------------------------------------------
# One home for file names


def _file_names() -> dict[str, str]:
    """name -> "Class.ATTRIBUTE" of every file name (with an extension: a folder's name, "best",
    "run", is also a word of other meanings) the folder classes define."""
    names = {}
    for rel, classes in FOLDER_HOMES.items():
        tree = ast.parse((ROOT / rel).read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, ast.ClassDef) and node.name in classes:
                for stmt in node.body:
                    if (isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.Constant)
                            and isinstance(stmt.value.value, str) and "." in stmt.value.value):
                        names[stmt.value.value] = f"{node.name}.{stmt.targets[0].id}"
    return names


def _file_name_literals(tree: Tree, names: dict[str, str]) -> list[tuple[str, int, str]]:
    found = []
    for module in sorted(tree.trees):
        rel = tree.rel(module)
        if rel in FOLDER_HOMES:
            continue
        docstrings = {id(n.value) for n in ast.walk(tree.trees[module])
                      if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)}
        for node in ast.walk(tree.trees[module]):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                    and node.value in names and id(node) not in docstrings):
                found.append((rel, node.lineno, node.value))
    return found


def test_file_names_live_in_their_folder_classes():
    names = _file_names()
    assert {"config.json", "checkpoint.npz", "model.keras", "search.json", "trials.json"} <= set(names), \
        f"the folder classes of {list(FOLDER_HOMES)} were not read: {names}"
    offenders = _file_name_literals(_tree(), names)
    if offenders:
        pytest.fail("file names written out of their folder class (use the folder object):\n"
                    + "\n".join(f"  {p}:{ln} {v!r}: {names[v]}" for p, ln, v in offenders),
                    pytrace=False)


# ---------------------------------------------------------------------------------------------------
# One place that knows the engines


def _engine_names() -> set[str]:
    """The names of the registry's engines (the first argument of each ``EngineInfo(...)``)."""
    tree = ast.parse((ROOT / ENGINE_REGISTRY).read_text(encoding="utf-8"))
    return {node.args[0].value for node in ast.walk(tree)
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "EngineInfo"
            and node.args and isinstance(node.args[0], ast.Constant)}


def _engine_comparisons(module: ast.Module, engines: set[str]) -> list[int]:
    """Lines comparing something with an engine's name (``==``, ``!=``, ``in``, ``not in`` a
    literal tuple, list or set holding one)."""
    def names(node: ast.AST) -> set[str]:
        items = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else [node]
        return {i.value for i in items if isinstance(i, ast.Constant) and isinstance(i.value, str)}

    return sorted({node.lineno for node in ast.walk(module) if isinstance(node, ast.Compare)
                   and any(names(side) & engines for side in (node.left, *node.comparators))})


def test_only_the_registry_compares_engine_names():
    engines = _engine_names()
    assert engines >= {"ray", "keras-tuner"}, f"{ENGINE_REGISTRY} was not read: {engines}"
    tree = _tree()
    offenders = [f"  {tree.rel(m)}:{line}" for m in sorted(tree.trees)
                 if tree.rel(m) != ENGINE_REGISTRY
                 for line in _engine_comparisons(tree.trees[m], engines)]
    if offenders:
        pytest.fail("engine names compared outside the registry (ask the engine object, or the "
                    "registry's features):\n" + "\n".join(offenders), pytrace=False)
    for source, caught in {'if spec.engine == "ray": pass': True,
                           'x = engine != "keras-tuner"': True,
                           'y = e in ("ray", "other")': True,
                           'z = spec.engine == name': False,
                           'w = scheduler == "race"': False}.items():
        assert bool(_engine_comparisons(ast.parse(source), engines)) == caught, source


# ---------------------------------------------------------------------------------------------------
# Label values only in the label module


def _name_of(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Subscript):
        return _name_of(node.value)
    return ""  # (a call, len(labels) == 3, is not a label)


def _label_like(node: ast.AST) -> bool:
    return any(w in _name_of(node).lower() for w in LABEL_WORDS)


def _int_literals(node: ast.AST) -> list[int]:
    items = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else [node]
    return [i.value for i in items
            if isinstance(i, ast.Constant) and type(i.value) is int and i.value >= 1]


def _label_literals(module: ast.Module) -> list[int]:
    """Lines where a label (by name) meets a label value written as a number."""
    found = set()
    for node in ast.walk(module):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
        elif isinstance(node, ast.Call) and _name_of(node.func) == "isin":
            operands = list(node.args)
        elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Subscript) for t in node.targets):
            operands = [*node.targets, node.value]
        else:
            continue
        if any(_label_like(o) for o in operands) and any(_int_literals(o) for o in operands):
            found.add(node.lineno)
    return sorted(found)


def test_label_values_live_in_the_label_module():
    tree = _tree()
    offenders = [f"  {tree.rel(m)}:{line}" for m in sorted(tree.trees) if tree.rel(m) != LABEL_HOME
                 for line in _label_literals(tree.trees[m])]
    if offenders:
        pytest.fail("label values written as numbers outside the label module (ask the "
                    "LabelScheme):\n" + "\n".join(offenders), pytrace=False)
    for source, caught in {"if label == 4: pass": True, "x = np.isin(seg, [1, 2, 4])": True,
                           "label[mask] = 2": True, "y = case.label_values == (1, 2, 4)": True,
                           'label[x] = values["edema"]': False, "n = len(labels) == 3": False,
                           "z = crop == 4": False}.items():
        assert bool(_label_literals(ast.parse(source))) == caught, source


# ---------------------------------------------------------------------------------------------------
# The scanner itself: guards against the rules passing on an empty or misread tree.


def test_scanner_sees_the_tree():
    tree = _tree()
    for name in (*PACKAGES, *TOP_MODULES):
        assert name in tree.modules, f"{name} not found under {ROOT}; ROOT or the layout is wrong"
    for name in PREDICTORS:
        assert name in tree.modules, f"{name} not found under {ROOT}"
    modules = {"pkg": Path("pkg/__init__.py"), "pkg.sub": Path("pkg/sub/__init__.py"),
               "pkg.sub.leaf": Path("pkg/sub/leaf.py"), "pkg.other": Path("pkg/other.py")}
    cases = {
        "from pkg.sub import leaf": ["pkg.sub.leaf"],
        "from pkg.sub import function": ["pkg.sub"],
        "import pkg.sub.leaf as x": ["pkg.sub.leaf"],
        "from . import leaf": ["pkg.sub.leaf"],
        "from . import name": ["pkg.sub"],
        "from .. import other": ["pkg.other"],
        "from ..other import thing": ["pkg.other"],
        "from .leaf import *": ["pkg.sub.leaf"],
        "from ... import other": [],
        "importlib.import_module('pkg.other')": ["pkg.other"],
        "import numpy": [],
    }
    for source, expected in cases.items():
        node = ast.parse(source).body[0]
        node = node.value if isinstance(node, ast.Expr) else node
        got = _targets(node, "pkg.sub.leaf", modules)
        assert got == expected, f"{source!r} from pkg.sub.leaf resolved to {got}, expected {expected}"
