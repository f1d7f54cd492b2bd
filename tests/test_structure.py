"""The package's shape: layers that import one way, no import cycles among rest/ modules, no module over 500 lines.

Read from the source with ``ast`` (imports inside functions count too: a lazy import
hides a cycle or a wrong-way import, it does not remove it). Nothing is on an allow-list.

The layers (``LAYERS``) and what each may import (``MAY_IMPORT``):
- ``core`` (one training run): the foundation only;
- ``study`` (Ray Tune): the foundation and ``core``;
- ``report`` (the read-only reader): the foundation and the study's modules that never reach Ray's
  runtime (those that import nothing of Ray but ``ray.tune.ExperimentAnalysis``, Ray's reader of
  experiment files, neither themselves nor through the rest modules they import: the on-storage
  contract and the trial reader); of Ray itself only ``ray.tune.ExperimentAnalysis``, inside a function;
- ``deploy`` (model files, inference): the foundation and ``core``;
- ``cli``, ``rest.api`` and ``rest`` itself: anything.
"""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "rest"
MAX_LINES = 500
KNOWN_CYCLES: list[set[str]] = []  # none: keep it that way
KNOWN_LONG: set[str] = set()  # none: keep it that way
FOUNDATION = {
    "rest.errors", "rest.settings", "rest.selection", "rest.storage", "rest.storage_retry", "rest.tables",
    "rest.legacy",  # no import statement of a rest module: it imports old names' new homes by string, on demand
}  # fmt: skip
LAYERS = ("core", "study", "report", "deploy", "cli")
MAY_IMPORT = {  # layer -> the layers it may import; "study:ray-free": study modules that never reach Ray's runtime
    "core": {"foundation", "core"},
    "study": {"foundation", "core", "study"},
    "report": {"foundation", "report", "study:ray-free"},
    "deploy": {"foundation", "core", "deploy"},
}
REPORT_RAY = {"ray.tune.ExperimentAnalysis"}  # all of Ray the report layer may reach (lazily): a reader of files


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(path: Path, package: str, modules: dict[str, Path]) -> list[tuple[list[str], bool]]:
    """([imported names], at module top?) per import statement; ``from a import b`` names ``a.b``."""
    tree = ast.parse(path.read_text())
    top = set(map(id, _top_level(tree.body)))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            if base.startswith("rest"):
                submodules = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]
                targets = submodules or [base]
            else:
                targets = [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        found.append((targets, id(node) in top))
    return found


def _top_level(body: list[ast.stmt]):
    """The statements run when the module is imported: its body, into if/try/with blocks, never into a def or class."""
    for node in body:
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            for field in ("body", "orelse", "finalbody", "handlers"):
                yield from _top_level(getattr(node, field, []))


def _package(name: str, path: Path) -> str:
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def import_graph() -> dict[str, set[str]]:
    """module -> the rest/ modules it imports anywhere in its body."""
    modules = _modules()
    return {
        name: {t for targets, _ in _imports(path, _package(name, path), modules) for t in targets}
        & set(modules) - {name}
        for name, path in modules.items()
    }


def external_imports(top_only: bool = False) -> dict[str, set[str]]:
    """module -> the names it imports from outside rest/ (``ray.tune.ExperimentAnalysis``), anywhere or at its top."""
    modules = _modules()
    return {
        name: {
            t for targets, top in _imports(path, _package(name, path), modules) for t in targets
            if not t.startswith("rest") and (top or not top_only)
        }
        for name, path in modules.items()
    }  # fmt: skip


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [{"a", "b", "c"}]


def test_the_graph_sees_top_and_lazy_imports():
    graph = import_graph()
    assert "rest.cli.common" in graph["rest.cli.prepare"]  # from rest.cli.common import ..., at the top
    assert "rest.core.prepare" in graph["rest.cli.prepare"]  # from rest.core.prepare import check_tree, in a handler
    assert "rest.storage" in graph["rest.core.prepare.atomic"]  # from rest.storage import fresh_dir
    lazy, top = external_imports(), external_imports(top_only=True)
    assert "ray.tune.ExperimentAnalysis" in lazy["rest.study.trials"]  # inside experiment_analysis()
    assert not any(n.startswith("ray") for n in top["rest.study.trials"])
    assert "ray.tune.schedulers.TrialScheduler" in top["rest.study.rungs"]  # at its top


def test_no_new_import_cycle():
    new = [c for c in cycles(import_graph()) if c not in KNOWN_CYCLES]
    assert not new, f"import cycles among rest/ modules: {new}"


def test_no_new_module_over_500_lines():
    long = {name for name, path in _modules().items() if len(path.read_text().splitlines()) > MAX_LINES}
    assert long <= KNOWN_LONG, f"modules over {MAX_LINES} lines: {sorted(long - KNOWN_LONG)}"


# ------------------------------------------------------------------ layers


def layer_of(module: str) -> str:
    if module in FOUNDATION:
        return "foundation"
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else "api"  # rest, rest.api


def ray_modules(graph: dict[str, set[str]], external: dict[str, set[str]]) -> set[str]:
    """The rest/ modules that import of ``ray`` more than its file reader (``REPORT_RAY``), or import
    (transitively, lazily or not) a rest module that does."""
    found = {m for m, names in external.items() if any(n.split(".")[0] == "ray" and n not in REPORT_RAY for n in names)}
    while True:
        more = {m for m, deps in graph.items() if m not in found and deps & found}
        if not more:
            return found
        found |= more


def layer_violations(graph: dict[str, set[str]], external: dict[str, set[str]]) -> list[str]:
    """Every import that breaks the layer rule, one line each ("importer -> imported: why")."""
    with_ray = ray_modules(graph, external)

    def kind(module: str) -> str:
        layer = layer_of(module)
        return "study:ray-free" if layer == "study" and module not in with_ray else layer

    out = []
    for module, deps in sorted(graph.items()):
        allowed = MAY_IMPORT.get(layer_of(module))
        if allowed is None:  # cli and the API may import anything
            continue
        for dep in sorted(deps):
            if layer_of(dep) not in allowed and kind(dep) not in allowed:
                why = "imports Ray (transitively)" if kind(dep) == "study" else f"{layer_of(dep)} layer"
                out.append(f"{module} -> {dep}: {layer_of(module)} may not import it ({why})")
        if layer_of(module) == "report":
            out += [f"{module} -> {n}: report imports of Ray only {sorted(REPORT_RAY)}"
                    for n in sorted(external[module]) if n.split(".")[0] == "ray" and n not in REPORT_RAY]  # fmt: skip
    return out


def test_the_layer_rule_finds_wrong_way_and_ray_imports():
    graph = {
        "rest.errors": set(),
        "rest.core.train": {"rest.errors"},
        "rest.study.contract": {"rest.errors"},
        "rest.study.tune_ext": set(),
        "rest.study.driver": {"rest.study.tune_ext"},
        "rest.report.results": {"rest.study.contract", "rest.study.driver"},
        "rest.deploy.model_file": {"rest.core.train", "rest.report.results"},
        "rest.cli.main": {"rest.report.results", "rest.study.driver"},
    }
    external = {m: set() for m in graph} | {
        "rest.study.tune_ext": {"ray.tune.Callback"},
        "rest.report.results": {"ray.tune.ExperimentAnalysis", "ray.train.Checkpoint"},
    }
    assert ray_modules(graph, external) == {
        "rest.study.tune_ext", "rest.study.driver", "rest.report.results", "rest.deploy.model_file", "rest.cli.main"
    }  # fmt: skip
    assert layer_violations(graph, external) == [
        "rest.deploy.model_file -> rest.report.results: deploy may not import it (report layer)",
        "rest.report.results -> rest.study.driver: report may not import it (imports Ray (transitively))",
        "rest.report.results -> ray.train.Checkpoint: report imports of Ray only ['ray.tune.ExperimentAnalysis']",
    ]


def test_layers_import_one_way():
    violations = layer_violations(import_graph(), external_imports())
    assert not violations, "imports against the layer rule:\n" + "\n".join(violations)


def test_report_and_the_contract_import_no_ray_at_their_top_and_the_contract_no_pandas():
    top = external_imports(top_only=True)
    checked = [m for m in top if layer_of(m) == "report"] + ["rest.study.contract", "rest.study.trials"]
    at_top = {m: sorted(n for n in top[m] if n.split(".")[0] == "ray") for m in checked}
    assert not {m: names for m, names in at_top.items() if names}, "Ray imported at module top"
    graph, external = import_graph(), external_imports()
    assert "rest.study.contract" not in ray_modules(graph, external)
    reach, todo = set(), ["rest.study.contract"]
    while todo:
        m = todo.pop()
        reach.add(m)
        todo += [d for d in graph[m] if d not in reach]
    assert not [(m, n) for m in reach for n in external[m] if n.split(".")[0] in ("pandas", "ray")]
