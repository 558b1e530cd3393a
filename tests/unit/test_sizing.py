"""Thread counts sized to the machine (cascade.runtime.sizing) and the ``auto`` the generated configs carry."""

from __future__ import annotations

import pytest

from cascade import contract
from cascade.errors import ConfigError
from cascade.repository import configgen
from cascade.runtime import sizing
from cascade.runtime.sizing import llm_threads, onnx_threads, resolve_threads, server_cores


# --- cores ---------------------------------------------------------------------------------------
def test_server_cores_is_the_affinity(monkeypatch, tmp_path):
    monkeypatch.setattr(sizing, "CGROUP_CPU_MAX", tmp_path / "absent")
    monkeypatch.setattr(sizing.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5})
    assert server_cores() == 6


def test_server_cores_falls_back_to_cpu_count(monkeypatch, tmp_path):
    def no_affinity(pid):
        raise OSError("not supported")

    monkeypatch.setattr(sizing, "CGROUP_CPU_MAX", tmp_path / "absent")
    monkeypatch.setattr(sizing.os, "sched_getaffinity", no_affinity)
    monkeypatch.setattr(sizing.os, "cpu_count", lambda: 3)
    assert server_cores() == 3


@pytest.mark.parametrize("cpu_max, cores", [("max 100000", 8), ("250000 100000", 3), ("50000 100000", 1)])
def test_server_cores_respects_a_cgroup_cpu_limit(monkeypatch, tmp_path, cpu_max, cores):
    (tmp_path / "cpu.max").write_text(cpu_max + "\n")
    monkeypatch.setattr(sizing, "CGROUP_CPU_MAX", tmp_path / "cpu.max")
    monkeypatch.setattr(sizing.os, "sched_getaffinity", lambda pid: set(range(8)))
    assert server_cores() == cores


# --- llama.cpp -----------------------------------------------------------------------------------
@pytest.mark.parametrize("cores, threads", [(1, 1), (2, 1), (3, 1), (4, 2), (8, 4), (16, 8), (64, 8)])
def test_llm_threads_are_half_the_cores(cores, threads):
    assert llm_threads(cores, env={}) == threads


def test_two_llm_tiers_never_oversubscribe_two_cores():
    assert 2 * llm_threads(2, env={}) <= 2


@pytest.mark.parametrize("value, threads", [("3", 3), (" 12 ", 12), ("auto", 1), ("", 1)])
def test_the_environment_overrides_the_sizing(value, threads):
    assert llm_threads(2, env={contract.LLM_THREADS_ENV: value}) == threads


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5", "2 threads"])
def test_a_bad_environment_value_is_a_config_error_naming_the_variable(value):
    with pytest.raises(ConfigError, match=contract.LLM_THREADS_ENV):
        llm_threads(4, env={contract.LLM_THREADS_ENV: value})


def test_llm_threads_reads_the_process_environment(monkeypatch):
    monkeypatch.setenv(contract.LLM_THREADS_ENV, "5")
    assert llm_threads() == 5
    monkeypatch.setenv(contract.LLM_THREADS_ENV, "x")
    with pytest.raises(ConfigError, match=contract.LLM_THREADS_ENV):
        llm_threads()


# --- ONNX Runtime --------------------------------------------------------------------------------
@pytest.mark.parametrize("cores, text, threads", [(2, True, 1), (2, False, 1), (8, True, 4), (8, False, 1)])
def test_onnx_threads(cores, text, threads):
    assert onnx_threads(text, cores) == threads


def test_on_two_cores_every_model_runs_one_thread():
    assert llm_threads(2, env={}) == onnx_threads(True, 2) == onnx_threads(False, 2) == 1


# --- a model's num_threads parameter -------------------------------------------------------------
def test_an_explicit_count_wins_over_auto_and_the_environment(monkeypatch):
    monkeypatch.setenv(contract.LLM_THREADS_ENV, "7")
    assert resolve_threads("3", llm_threads) == 3
    assert resolve_threads("auto", llm_threads) == 7
    assert resolve_threads(None, lambda: 2) == 2


@pytest.mark.parametrize("value", ["0", "-2", "many"])
def test_a_bad_parameter_is_a_config_error(value):
    with pytest.raises(ConfigError, match=contract.CFG_NUM_THREADS):
        resolve_threads(value, lambda: 1)


# --- configgen writes auto -----------------------------------------------------------------------
def _threads(spec) -> str:
    config = configgen.parse_config(spec.to_pbtxt())
    return config.parameters[contract.CFG_NUM_THREADS].string_value


def test_configgen_writes_auto_by_default():
    from cascade.repository.trtllm_config import llm_generate_config

    assert _threads(configgen.embedder_spec()) == contract.THREADS_AUTO
    for tier in (contract.TIER_LOGREG, contract.TIER_XGBOOST, contract.TIER_ENCODER):
        assert _threads(configgen.tier_spec("sst2", tier, 2)) == contract.THREADS_AUTO
    for tier in contract.LLM_TIERS:
        assert _threads(configgen.llm_spec(tier, "smollm2-135m")) == contract.THREADS_AUTO
    generate = llm_generate_config(contract.RUNTIME_LLAMA_CPP, llm_model="smollm2-135m")
    assert generate.parameters[contract.CFG_NUM_THREADS].string_value == contract.THREADS_AUTO


def test_configgen_keeps_an_explicit_count_and_rejects_a_bad_one():
    assert _threads(configgen.llm_spec(contract.TIER_LLM_LARGE, "gemma3-270m", num_threads=3)) == "3"
    assert _threads(configgen.embedder_spec(num_threads="2")) == "2"
    for bad in (0, -1, "two"):
        with pytest.raises(ConfigError):
            configgen.tier_spec("sst2", contract.TIER_LOGREG, 2, num_threads=bad)


def test_the_servers_llm_threads_win_over_the_repositorys_count():
    from cascade.runtime.sizing import llm_model_threads

    env = {contract.LLM_THREADS_ENV: "1"}
    assert llm_model_threads("2", env) == 1 and llm_model_threads("auto", env) == 1
    assert llm_model_threads("2", {}) == 2  # no override: an explicit count in the config stands
    assert llm_model_threads("auto", {contract.LLM_THREADS_ENV: "auto"}) >= 1
