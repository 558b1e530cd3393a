"""The ``at`` fixture of the gate's unit tests: each placement the gate's arrays may have (torch is imported only
when a collected test asks for it)."""

import pytest

from cascade.gate.arrays import Placement


def _placements() -> list[str | None]:
    """The gate's math runs on NumPy (CPU profile) and on torch tensors (GPU profile): both are tested, torch on
    the CPU here and on the GPU too where there is one."""
    import torch

    return [None, "cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def pytest_generate_tests(metafunc):
    if "at" in metafunc.fixturenames:
        metafunc.parametrize("at", _placements(), indirect=True, ids=lambda d: f"torch-{d}" if d else "numpy")


@pytest.fixture
def at(request):
    return Placement(request.param)
