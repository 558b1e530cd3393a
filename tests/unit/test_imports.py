"""No import cycles among the project's modules, function-level (lazy) imports included: a lazy import that
closes a circle hides a layering mistake (cascade.cli.main <-> cascade.bench.table, cascade_export.build.commands <->
cascade_export.distill.commands)."""

import ast

from cascade.paths import CHECKOUT

#: The folders holding the project's packages: cascade/, client/cascade_client/, export/cascade_export/.
ROOTS = (CHECKOUT, CHECKOUT / "client", CHECKOUT / "export")


def _modules() -> dict[str, ast.Module]:
    found = {}
    for root in ROOTS:
        for path in sorted(root.glob("cascade*/**/*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = ast.parse(path.read_text(), str(path))
    return found


def _imports(tree: ast.Module, known) -> set[str]:
    """The project modules ``tree`` imports anywhere, with the packages whose ``__init__`` that runs."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        else:
            continue
        for target in targets:
            parts = target.split(".")
            out |= {".".join(parts[:k]) for k in range(1, len(parts) + 1)} & known
    return out


def _packages_of(name: str) -> set[str]:
    parts = name.split(".")
    return {".".join(parts[:k]) for k in range(1, len(parts))}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return path[path.index(dep) :] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycles():
    modules = _modules()
    # A module's own packages are left out: their __init__ has already begun when a submodule is imported.
    graph = {name: _imports(tree, set(modules)) - {name} - _packages_of(name) for name, tree in modules.items()}
    assert (
        len(graph) > 40 and "cascade_export.build.commands" in graph["cascade_export.distill.commands"]
    )  # the walk sees imports
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


#: Packages a server runs (the repository's writer included: the server recovers and refreshes it at start),
#: which must not import the build side (``cascade_export``: torch, training, the teachers).
SERVING_SIDE = ("cascade.repository", "cascade.server", "cascade.gate", "cascade.llm")


def test_the_serving_side_imports_nothing_from_the_build_side():
    modules = _modules()
    climbs = {
        name: sorted(dep for dep in _imports(tree, set(modules)) if dep.split(".")[0] == "cascade_export")
        for name, tree in modules.items()
        if name.startswith(SERVING_SIDE)
    }
    assert "cascade.repository.writer" in climbs  # the walk sees the writer where it lives
    assert {name: deps for name, deps in climbs.items() if deps} == {}


def test_the_build_imports_nothing_from_distillation():
    # Distillation labels, then calls the build; the build reads a labels file and never reaches back.
    modules = _modules()
    graph = {name: _imports(tree, set(modules)) for name, tree in modules.items()}
    build = [name for name in graph if name.startswith("cascade_export.build")]
    assert "cascade_export.build.train" in build and "cascade_export.distill.commands" in modules
    climbs = {name: sorted(d for d in graph[name] if d.startswith("cascade_export.distill")) for name in build}
    assert {name: deps for name, deps in climbs.items() if deps} == {}
