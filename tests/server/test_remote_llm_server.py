"""llm_large on a real OpenAI-compatible endpoint: llama.cpp's own server (``python -m llama_cpp.server``) over
SmolLM2, behind a fault-injecting proxy on real sockets (tests/server/openai_endpoint.py). A task is made with it
as the teacher, served with it as the large tier, and checked against the same model in-process; then the endpoint
is made to answer 429, 500, slowly and with broken JSON, and the key is looked for in every log."""

import os
import shutil
import time

import numpy as np
import pandas as pd
import pytest
from openai_endpoint import FaultProxy, llama_server

from cascade import contract
from cascade.errors import ConfigError
from cascade.llm.openai_http import Endpoint

KEY, KEY_ENV, WRONG_KEY_ENV = "sk-test-0123456789abcdef", "CASCADE_TEST_LLM_KEY", "CASCADE_TEST_WRONG_KEY"
MODEL = "smollm2-135m:f16"  # the same GGUF as the in-process llm_small: the comparison's reference
ROWS = 200


@pytest.fixture(scope="module")
def remote(built_repo, tmp_path_factory):
    """A server whose llm_large is the llama.cpp server through the proxy, and a task made with it as teacher."""
    from cascade.llm.gguf import gguf_path
    from cascade.server.launcher import ServerOptions, TritonServer, free_ports
    from cascade.tasks import load_split, load_task
    from cascade_client import CascadeClient
    from cascade_export.build.llm_tiers import ensure_llms
    from cascade_export.distill.commands import create_task

    tmp = tmp_path_factory.mktemp("remote")
    repo = tmp / "repo"
    shutil.copytree(built_repo[0] / contract.EMBEDDER_MODEL, repo / contract.EMBEDDER_MODEL)
    path = gguf_path(MODEL)
    texts, _ = load_split(load_task("sst2"), "train", limit=400)
    pd.DataFrame({"review": texts}).to_csv(tmp / "reviews.csv", index=False)
    os.environ[KEY_ENV], os.environ[WRONG_KEY_ENV] = KEY, "sk-wrong"
    with llama_server(path, api_key=KEY, log_path=tmp / "llama.log") as url, FaultProxy(url) as proxy:
        large = Endpoint.parse(f"openai:smollm2@{proxy.url}", key_env=KEY_ENV, timeout_s=5, retries=1)
        small = Endpoint.parse(f"openai:smollm2@{proxy.url}", key_env=WRONG_KEY_ENV, retries=0)
        ensure_llms(repo, {contract.TIER_LLM_LARGE: large, contract.TIER_LLM_SMALL: small})
        http, grpc, metrics = free_ports(3)
        opts = ServerOptions(
            repository=repo, http_port=http, grpc_port=grpc, metrics_port=metrics, model_control_mode="explicit",
            load_models=[contract.EMBEDDER_MODEL, "llm_large"], log_file=tmp / "triton.log",
        )  # fmt: skip
        with TritonServer(opts) as server, CascadeClient(server.grpc_url, timeout_s=600) as client:
            result = create_task(
                "remotesent", tmp / "reviews.csv", "Review: {text}\nSentiment:", ["negative", "positive"],
                repo=repo, work_root=tmp / "runs", url=server.grpc_url, text_column="review", sample=ROWS,
                tiers=["logreg", "llm_large"], target=0.8, progress=False, metrics_url=server.metrics_url,
            )  # fmt: skip
            yield {"server": server, "client": client, "proxy": proxy, "result": result, "tmp": tmp, "gguf": path}
    for name in (KEY_ENV, WRONG_KEY_ENV):
        os.environ.pop(name, None)


def test_a_task_taught_and_served_by_the_endpoint_answers_as_the_in_process_model(remote):
    """200 SST-2 rows labelled through the endpoint, a task built and served; on 200 other rows the served large
    tier agrees with the same GGUF in-process on ≥ 99% of the answers, probabilities within 0.01 on average."""
    import json

    from cascade.llm.prompts import PromptTemplate
    from cascade.llm.scorer import LlamaScorer
    from cascade.tasks import load_split, load_task

    result, client = remote["result"], remote["client"]
    assert result["labels"]["labelled_rows"] == ROWS and result["teacher_scored"] == ["llm_large"]
    assert result["cost"]["tokens_in"] > ROWS * 5  # the labelling's tokens, counted by the served tier
    texts, _ = load_split(load_task("sst2"), "validation", limit=ROWS)
    calls = remote["proxy"].requests
    served = client.classify("remotesent", texts, min_tier="llm_large", return_probs=True)
    assert remote["proxy"].requests - calls >= ROWS  # every row went to the endpoint
    assert {p.tier_name for p in served} == {"llm_large"} and not any(p.degraded for p in served)
    prompt = json.loads(client.model_parameters("remotesent")[contract.CFG_PROMPTS])["llm_large"]
    template = PromptTemplate.from_json(prompt)
    local = LlamaScorer(remote["gguf"], n_ctx=1024, n_threads=1)
    mine = local.score([template.format(t) for t in texts], template.verbalizations, template.calibrate).probs
    theirs = np.array([p.probs for p in served])
    agree = float((mine.argmax(1) == theirs.argmax(1)).mean())
    gap = float(np.abs(mine - theirs).mean())
    print(f"remote vs in-process on {ROWS} rows: answers agree {agree:.3f}, mean |dp| {gap:.4f}")
    assert agree >= 0.99 and gap <= 0.01


def test_the_cost_report_counts_the_tokens_the_endpoint_says_it_used(remote):
    from cascade.tables.job import FilterOptions
    from cascade.tables.local import run_filter
    from cascade.tasks import load_split, load_task

    server, proxy, tmp = remote["server"], remote["proxy"], remote["tmp"]
    texts, _ = load_split(load_task("sst2"), "test", limit=ROWS)
    pd.DataFrame({"text": texts}).to_parquet(tmp / "table.parquet")
    before = dict(proxy.usage)
    summary = run_filter(
        tmp / "table.parquet", tmp / "out.parquet", FilterOptions(task="remotesent"), server.grpc_url,
        llm_probe_rows=0, quiet=True, metrics_url=server.metrics_url,
    )  # fmt: skip
    used = {k: proxy.usage[k] - before.get(k, 0) for k in proxy.usage}
    llm = summary.cost["llm"]
    print("filter cost:", llm)
    assert summary.tiers.get("llm_large", 0) > 0 and summary.error_rows == 0
    assert llm["run"]["tokens_in"] == used["prompt_tokens"] and llm["run"]["tokens_out"] == used["completion_tokens"]
    assert llm["tiers"]["llm_large"]["rows"] == summary.tiers["llm_large"]
    assert llm["all_llm"]["rows"] == ROWS and llm["tokens_ratio"] > 1  # fewer tokens than all rows on the LLM


def test_rate_limits_are_waited_out_and_failures_give_best_effort_answers(remote):
    from cascade.tasks import load_split, load_task

    client, proxy = remote["client"], remote["proxy"]
    texts, _ = load_split(load_task("sst2"), "validation", limit=60)
    proxy.fail(2, status=429, retry_after=1)
    start = time.perf_counter()
    answers = client.classify("remotesent", texts[:4], min_tier="llm_large")
    assert time.perf_counter() - start >= 1.0  # Retry-After: 1 waited out
    assert [p.tier_name for p in answers] == ["llm_large"] * 4 and not any(p.degraded for p in answers)
    # Rows that logreg passes on: with the endpoint failing they get logreg's answer, flagged; never an error.
    hard = [t for t, p in zip(texts, client.classify("remotesent", texts), strict=True) if p.tier_name == "llm_large"]
    assert hard, "no row reached the large tier"
    for fault in ("500", "malformed", "slow"):
        time.sleep(contract.TIER_RETRY_AFTER_S + 0.5)  # the gate's breaker closes again
        proxy.reset()
        if fault == "500":
            proxy.fail(1000, status=500)
        elif fault == "malformed":
            proxy.malformed(1000)
        else:
            proxy.delay(6)  # past the endpoint's 5 s timeout, on both tries
        answers = client.classify("remotesent", hard[:4])
        assert all(p.degraded and p.tier_name == "logreg" for p in answers), (fault, answers)
    proxy.reset()
    for _ in range(4):  # the slow calls' tries end (2 x 5 s), the breaker closes: the endpoint answers again
        time.sleep(contract.TIER_RETRY_AFTER_S + 4)
        answers = client.classify("remotesent", hard[:2])
        if not any(p.degraded for p in answers):
            break
    assert [p.tier_name for p in answers] == ["llm_large"] * 2 and not any(p.degraded for p in answers)


def test_a_wrong_key_is_a_clear_error_at_load_and_the_key_is_in_no_log(remote):
    from cascade.llm.remote import RemoteScorer

    client, server, proxy = remote["client"], remote["server"], remote["proxy"]
    with pytest.raises(Exception, match=r"refused the API key") as failed:
        client.load_models(["llm_small"])  # its key comes from $CASCADE_TEST_WRONG_KEY
    assert proxy.url in str(failed.value) or "llm_small" in str(failed.value)
    scorer = RemoteScorer(Endpoint.parse(f"openai:smollm2@{proxy.url}", key_env=WRONG_KEY_ENV, retries=0))
    with pytest.raises(ConfigError, match=rf"{proxy.url}.*refused the API key.*\${WRONG_KEY_ENV}"):
        scorer.probe()
    scorer.close()
    with pytest.raises(ConfigError, match="cannot score labels.*cannot connect"):
        RemoteScorer(Endpoint.parse("openai:smollm2@http://127.0.0.1:9", retries=0)).probe()
    logs = server.log_path.read_text(errors="replace") + "\n".join(proxy.log_lines)
    assert "llm_large" in logs and KEY not in logs and "sk-wrong" not in logs
    runs = remote["tmp"] / "runs"
    assert not any(KEY in p.read_text(errors="replace") for p in runs.rglob("*") if p.is_file())
    assert not any(KEY in p.read_text(errors="replace") for p in server.opts.repository.rglob("*.pbtxt"))


def test_cascade_label_with_an_endpoint_teacher_labels_concurrently_and_counts_its_tokens(remote, monkeypatch):
    from cascade.tasks import load_task
    from cascade_export.distill.commands import run_label

    proxy, tmp = remote["proxy"], remote["tmp"]
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    before = dict(proxy.usage)
    summary = run_label(
        load_task("sst2"), tmp / "label-runs", tmp / "reviews.csv", text_column="review", budget=24, seed=3,
        teacher=f"openai:smollm2@{proxy.url}", progress=False,
    )  # fmt: skip
    assert summary["labelled_rows"] == 24 and summary["teacher"].startswith(f"openai:smollm2@{proxy.url}")
    used = {k: proxy.usage[k] - before.get(k, 0) for k in proxy.usage}
    assert summary["teacher_usage"]["prompt_tokens"] == used["prompt_tokens"] > 0
    again = run_label(
        load_task("sst2"), tmp / "label-runs", tmp / "reviews.csv", text_column="review", budget=24, seed=3,
        teacher=f"openai:smollm2@{proxy.url}", progress=False,
    )  # fmt: skip
    assert again["cached_rows"] == 24 and again["labelled_rows"] == 0  # resumable: nothing asked twice
