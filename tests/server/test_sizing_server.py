"""The sized LLM thread count reaches a served model, and a bad environment value fails its load (real tritonserver)."""

from __future__ import annotations

import pytest

# --- served: the count reaches the model, a bad value fails its load ----------------------------
from cascade import contract
from cascade.repository import configgen


@pytest.mark.server
def test_served_llm_takes_the_launcher_threads_and_rejects_a_bad_environment(tmp_path, monkeypatch):
    from cascade.errors import ServerError
    from cascade.repository.writer import RepositoryWriter
    from cascade.server.launcher import ServerOptions, TritonServer, free_ports

    repo = tmp_path / "repo"
    with RepositoryWriter(repo) as writer:
        writer.add(configgen.llm_spec(contract.TIER_LLM_SMALL, "smollm2-135m", n_ctx=256))
    name = contract.tier_model_name("", contract.TIER_LLM_SMALL)

    def options(**kw) -> ServerOptions:
        http, grpc, metrics = free_ports(3)
        log = tmp_path / f"server-{grpc}.log"
        return ServerOptions(repository=repo, http_port=http, grpc_port=grpc, metrics_port=metrics, log_file=log, **kw)

    monkeypatch.delenv(contract.LLM_THREADS_ENV, raising=False)
    with TritonServer(options(llm_threads=3)) as server:
        assert f"{name}: llama.cpp n_threads=3" in server.log_path.read_text()
    monkeypatch.setenv(contract.LLM_THREADS_ENV, "lots")
    with pytest.raises(ServerError, match=contract.LLM_THREADS_ENV):
        TritonServer(options()).start(timeout_s=120)
