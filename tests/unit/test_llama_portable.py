"""The llama.cpp that `make setup` installed is the portable build: it runs on any x86-64 CPU with AVX2.

A build with ``-march=native`` (llama.cpp's default) on a CPU that advertises AVX-512 or AMX carries their
instructions and dies with SIGILL elsewhere, or on that CPU itself (AMX tile state is granted per thread).
These checks read the installed libraries themselves: no weights are loaded.
"""

import json
import platform
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(platform.machine() != "x86_64", reason="the portable build is the x86-64 one")


def llama_libs() -> list[Path]:
    import llama_cpp

    lib = Path(llama_cpp.__file__).parent / "lib"
    return sorted(p for p in lib.glob("*.so") if not p.is_symlink())


def test_the_build_reports_avx2_and_neither_avx512_nor_amx():
    import llama_cpp

    info = llama_cpp.llama_print_system_info().decode()
    assert "AVX2 = 1" in info and "FMA = 1" in info and "F16C = 1" in info, info
    assert "AVX512" not in info and "AMX" not in info, info


@pytest.mark.skipif(shutil.which("objdump") is None, reason="binutils' objdump is not installed")
def test_no_library_holds_an_avx512_or_amx_instruction():
    """AVX-512 code uses the zmm registers (or the k mask registers), AMX code the tmm tiles."""
    forbidden = ("%zmm", "%tmm", "tilezero", "ldtilecfg", "{%k")
    libs = llama_libs()
    assert any(p.name == "libggml-cpu.so" for p in libs), libs
    for lib in libs:
        text = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(lib)], capture_output=True, text=True).stdout
        found = {f for f in forbidden if f in text}
        assert not found, f"{lib.name} holds {sorted(found)}"
        if lib.name == "libggml-cpu.so":
            assert "%ymm" in text  # the AVX2 kernels are there


def test_setup_installed_the_wheel_of_the_project_wheelhouse_not_one_from_a_cache():
    """The installed distribution came from ``scripts/llama_wheel.sh``'s folder for these flags (pip records the
    file it installed), not from pip's wheel cache, whose key ignores the flags and the CPU."""
    direct = metadata.distribution("llama-cpp-python").read_text("direct_url.json")
    assert direct, "llama-cpp-python was installed from an index or cache, not from the project's wheelhouse"
    url = json.loads(direct)["url"]
    house = subprocess.run(
        ["bash", str(ROOT / "scripts" / "llama_wheel.sh"), str(Path(sys.prefix)), "--print-key"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert url.startswith("file://") and Path(url[len("file://") :]).parent.name == Path(house).name
