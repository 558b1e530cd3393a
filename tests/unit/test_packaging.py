"""A non-editable install works: the wheel carries the shipped folders, and the package finds them without a
checkout."""

import ast
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from cascade.paths import CHECKOUT, RESOURCES

PROBE = """
import json, cascade, cascade_client, cascade_export
from cascade import paths
from cascade.tasks import load_split, load_task
task = load_task("sst2")
texts, labels = load_split(task, "validation", limit=5)
print(json.dumps({
    "package": cascade.__file__, "checkout": str(paths.CHECKOUT), "tasks": str(paths.TASKS_DIR),
    "gate": (paths.BACKENDS_DIR / "gate" / "model.py").is_file(), "locustfile": paths.LOCUSTFILE.is_file(),
    "intents": (paths.BENCH_DATA_DIR / "intents77.csv").is_file(), "rows": len(texts),
    "chart": (paths.CHART_DIR / "Chart.yaml").is_file(),
    "runs": str(paths.RUNS_DIR), "repo": str(paths.DEFAULT_REPO),
}))
"""


def test_setup_py_ships_the_folders_paths_reads():
    tree = ast.parse((CHECKOUT / "setup.py").read_text())
    shipped = next(
        ast.literal_eval(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "RESOURCES"
    )
    assert tuple(shipped) == RESOURCES
    assert all((CHECKOUT / name).is_dir() for name in RESOURCES)


def test_the_wheel_runs_without_the_checkout(tmp_path):
    wheels, target, cwd = tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
    cwd.mkdir()
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    source = tmp_path / "source"  # a copy: building in the checkout would leave build/ and *.egg-info there
    source.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md", "cascade", "client", "export", *RESOURCES):
        copy = shutil.copytree if (CHECKOUT / name).is_dir() else shutil.copy
        copy(CHECKOUT / name, source / name, **({"dirs_exist_ok": True} if copy is shutil.copytree else {}))
    # The project's wheel and the client package's (client/, its own pyproject): the project imports the client.
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", wheels, source, source / "client"], check=True
    )
    (wheel,) = wheels.glob("triton_cascade-*.whl")
    (client_wheel,) = wheels.glob("cascade_client-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert not any(name.startswith("cascade_client/") for name in names)  # the client's wheel carries it
    assert "cascade_client/contract.py" in zipfile.ZipFile(client_wheel).namelist()
    assert "cascade/_resources/tasks/sst2.toml" in names
    assert "cascade/_resources/python_backends/gate/model.py" in names
    assert "cascade/_resources/k8s/triton-cascade/Chart.yaml" in names
    assert not any(name.startswith(("tests/", "k8s/", "bench/results")) for name in names)
    subprocess.run([*pip, "install", "--no-deps", "--target", target, wheel, client_wheel], check=True)
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=cwd, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert Path(got["package"]).is_relative_to(target)
    assert got["checkout"] == "None"
    assert Path(got["tasks"]) == target / "cascade" / "_resources" / "tasks"
    assert got["gate"] and got["locustfile"] and got["intents"] and got["chart"] and got["rows"] == 5
    assert got["runs"] == str(cwd / "runs") and got["repo"] == str(cwd / "model_repository" / "cpu")
