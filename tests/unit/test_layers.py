"""The layers of the project, bottom to top, and the rule that holds them: a module imports only from its own layer or
the ones below (function-level imports included). Every module belongs to a declared layer, so a new folder is placed
on purpose."""

from test_imports import _imports, _modules, _packages_of

#: Bottom to top: (layer, the module prefixes in it). A module takes the layer of its longest matching prefix.
LAYERS = (
    ("client", ("cascade_client",)),  # the standalone client package: the wire contract, errors, gRPC clients
    ("core", ("cascade", "cascade.contract", "cascade.errors", "cascade.paths", "cascade.progress", "cascade.results")),
    ("core", ("cascade.crash",)),
    ("runtime", ("cascade.runtime",)),  # ONNX runner, thread sizing
    ("llm", ("cascade.llm", "cascade.embedders")),  # the LLM tiers, and the embedders joined like their weights
    ("gate", ("cascade.gate",)),
    ("repository", ("cascade.repository",)),
    ("server", ("cascade.server",)),  # the supervised tritonserver process
    ("tables", ("cascade.tables",)),
    ("tasks", ("cascade.tasks", "cascade.datasets", "cascade.calibrate")),  # task definitions, datasets; calibration
    ("export", ("cascade_export.build",)),
    ("distill", ("cascade_export", "cascade_export.distill")),
    ("apps", ("cascade.cli", "cascade.ops", "cascade.bench", "cascade.doctor")),
)
ORDER = list(dict.fromkeys(name for name, _ in LAYERS))


def layer_of(module: str) -> str | None:
    best = None
    for name, prefixes in LAYERS:
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > len(best[1])):
                best = (name, prefix)
    return best[0] if best else None


def test_every_module_has_a_layer():
    modules = _modules()
    assert len(modules) > 100 and "cascade.gate.escalate" in modules
    assert [m for m in modules if layer_of(m) is None] == []


def test_no_module_imports_from_a_layer_above_its_own():
    modules = _modules()
    known = set(modules)
    climbs = []
    for name, tree in sorted(modules.items()):
        rank = ORDER.index(layer_of(name))
        for dep in sorted(_imports(tree, known) - {name} - _packages_of(name)):
            if ORDER.index(layer_of(dep)) > rank:
                climbs.append(f"{name} ({layer_of(name)}) imports {dep} ({layer_of(dep)})")
    assert climbs == []


def test_the_rule_catches_a_climb():
    assert layer_of("cascade.gate.lanes") == "gate" and layer_of("cascade.contract") == "core"
    assert layer_of("cascade_client.contract") == "client" and layer_of("cascade_export.distill.active") == "distill"
    assert ORDER.index(layer_of("cascade.tables.local")) > ORDER.index(layer_of("cascade.gate.config"))
    assert ORDER.index(layer_of("cascade_client.grpc_client")) < ORDER.index(layer_of("cascade.errors"))


def test_the_client_package_imports_nothing_but_itself():
    modules = _modules()
    outside = {
        name: sorted(dep for dep in _imports(tree, set(modules)) if not dep.startswith("cascade_client"))
        for name, tree in modules.items()
        if name.startswith("cascade_client")
    }
    assert "cascade_client.grpc_client" in outside
    assert {name: deps for name, deps in outside.items() if deps} == {}


def test_the_wire_contract_does_not_import_the_grpc_client():
    # What the Python backends import of the client package (contract, errors) leaves tritonclient out of their stubs.
    import subprocess
    import sys

    probe = (
        "import sys, cascade.contract, cascade.errors; print(any(m.startswith('tritonclient') for m in sys.modules))"
    )
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "False"
