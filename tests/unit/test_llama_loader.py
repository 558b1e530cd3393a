"""Both CPU LLM callers load their GGUF file through cascade.llm.gguf.load_llama: the exact llama.cpp options of
each."""

from __future__ import annotations

import pytest

from cascade.errors import ConfigError


class _Loaded(Exception):
    """Raised by the fake ``Llama`` once it has recorded its options: the callers' later setup is not under test."""


@pytest.fixture
def llama_calls(monkeypatch):
    import llama_cpp

    calls: list[dict] = []

    def fake_llama(*args, **kwargs):
        assert not args, "llama_cpp.Llama must get keyword arguments only"
        calls.append(kwargs)
        raise _Loaded

    monkeypatch.setattr(llama_cpp, "Llama", fake_llama)
    return calls


def _common(path, n_ctx, n_batch, threads) -> dict:
    return {
        "model_path": str(path),
        "n_ctx": n_ctx,
        "n_batch": n_batch,
        "n_threads": threads,
        "n_threads_batch": threads,
        "verbose": False,
    }


@pytest.mark.parametrize(("n_ctx", "threads", "n_batch"), [(1024, 2, 512), (256, 3, 256)])
def test_generator_llama_options(tmp_path, llama_calls, n_ctx, threads, n_batch):
    from cascade.llm.generate import LlamaGenerator

    model = tmp_path / "m.gguf"
    model.write_bytes(b"")
    with pytest.raises(_Loaded):
        LlamaGenerator(model, n_ctx=n_ctx, n_threads=threads)
    assert llama_calls == [_common(model, n_ctx, n_batch, threads)]


@pytest.mark.parametrize(("n_ctx", "threads", "n_batch"), [(1024, 2, 512), (256, 3, 256)])
def test_scorer_llama_options(tmp_path, llama_calls, n_ctx, threads, n_batch):
    from cascade.llm.scorer import LlamaScorer

    model = tmp_path / "m.gguf"
    model.write_bytes(b"")
    with pytest.raises(_Loaded):
        LlamaScorer(model, n_ctx=n_ctx, n_threads=threads)
    # swa_full keeps a sliding-window model's KV cells for the prefix cache (cascade.llm.scorer).
    assert llama_calls == [_common(model, n_ctx, n_batch, threads) | {"logits_all": False, "swa_full": True}]


def test_missing_file_is_a_config_error(tmp_path, llama_calls):
    from cascade.llm.generate import LlamaGenerator
    from cascade.llm.scorer import LlamaScorer

    for load in (LlamaGenerator, LlamaScorer):
        with pytest.raises(ConfigError, match="GGUF model file not found"):
            load(tmp_path / "absent.gguf")
    assert llama_calls == []
