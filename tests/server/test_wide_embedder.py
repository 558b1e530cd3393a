"""A repository built with another embedder (mpnet-base, 768-d) served by the real tritonserver: the width flows
from the build into the served configs, the gate, the client's table jobs, and tables made by another embedder are
refused with a clear message."""

from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cascade import contract, embedders
from cascade.errors import ConfigError, InvalidInput

pytestmark = pytest.mark.server
WIDE = embedders.get(embedders.MPNET)


@pytest.fixture(scope="module")
def wide_server(tmp_path_factory, sst2_task):
    from cascade.server.launcher import ServerOptions, TritonServer, free_ports
    from cascade_export.build.commands import build_task
    from cascade_export.build.stage import BuildOptions

    repo = tmp_path_factory.mktemp("wide") / "cpu"
    # The encoder fine-tunes mpnet's own transformer (no LLM tiers: quick).
    task = replace(sst2_task, tiers=(contract.TIER_LOGREG, contract.TIER_XGBOOST, contract.TIER_ENCODER))
    options = BuildOptions(
        train_rows=200, calib_rows=200, encoder_epochs=1, progress=False, keep_all_tiers=True, embedder=WIDE.name
    )
    report = build_task(task, repo, options)
    http, grpc, metrics = free_ports(3)
    with TritonServer(ServerOptions(repository=repo, http_port=http, grpc_port=grpc, metrics_port=metrics)) as srv:
        yield srv, task, report


@pytest.fixture(scope="module")
def wide_client(wide_server):
    from cascade_client import CascadeClient

    with CascadeClient(wide_server[0].grpc_url) as c:
        yield c


def test_the_served_embedder_is_the_built_one_and_matches_sentence_transformers(wide_client):
    from sentence_transformers import SentenceTransformer

    assert wide_client.embedder() == (WIDE.name, WIDE.dim)
    texts = ["a gripping, beautifully shot film", "dull", "the plot never comes together , and the cast knows it"]
    served = wide_client.embed(texts)
    reference = SentenceTransformer(str(WIDE.folder()), device="cpu").encode(texts, normalize_embeddings=True)
    assert served.shape == (3, WIDE.dim)
    assert np.abs(served - reference).max() < 1e-4


def test_the_encoder_tier_starts_from_the_embedders_backbone(wide_server, wide_client):
    import onnx

    server, task, report = wide_server
    encoder = server.opts.repository / contract.tier_model_name(task.name, contract.TIER_ENCODER) / "1"
    graph = onnx.load(str(encoder / "model.onnx")).graph
    assert [i.name for i in graph.input] == ["input_ids", "attention_mask"]  # MPNet takes no token types
    assert (encoder / "tokenizer.json").read_text() == (
        server.opts.repository / contract.EMBEDDER_MODEL / "1" / "tokenizer.json"
    ).read_text()
    texts = ["a gripping, beautifully shot film", "dull and lifeless"]
    answers = wide_client.classify(task.name, texts, min_tier=contract.TIER_ENCODER)
    assert [p.tier for p in answers] == [contract.TIER_ENCODER] * 2


def test_the_gate_takes_the_wide_vectors_and_refuses_narrow_ones(wide_server, wide_client):
    _, task, _ = wide_server
    texts = ["a gripping, beautifully shot film", "dull and lifeless"]
    from_text = wide_client.classify(task.name, texts)
    from_vectors = wide_client.classify(task.name, texts, wide_client.embed(texts))
    assert [p.label for p in from_text] == [p.label for p in from_vectors]
    assert np.allclose([p.confidence for p in from_text], [p.confidence for p in from_vectors], atol=1e-5)
    # Triton checks the shape against the generated config before the gate sees the request: INVALID_ARG.
    with pytest.raises(InvalidInput, match=r"input 'EMBEDDING'.*Expected \[-1,768\], got \[2,384\]"):
        wide_client.classify(task.name, texts, np.zeros((2, contract.EMBEDDING_DIM), np.float32))


def test_table_jobs_use_the_wide_embedder_and_refuse_another_ones_vectors(wide_server, wide_client, tmp_path):
    from cascade.tables.embed_jobs import run_embed
    from cascade.tables.job import FilterOptions
    from cascade.tables.local import run_filter

    server, task, _ = wide_server
    texts = ["a gripping, beautifully shot film", "dull and lifeless", "fine", "an utter mess"]
    source = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"text": texts}), source)
    embedded = tmp_path / "rows_emb.parquet"
    run_embed(source, embedded, server.grpc_url, quiet=True)
    field = pq.read_schema(embedded).field("embedding")
    assert field.metadata[embedders.TABLE_METADATA_KEY] == WIDE.name.encode()
    out = tmp_path / "out.parquet"
    options = FilterOptions(task=task.name, max_tier="logreg", prefix="ai_")
    summary = run_filter(embedded, out, options, server.grpc_url, llm_probe_rows=0, quiet=True)
    assert summary.tiers == {"logreg": len(texts)} and summary.error_rows == 0
    expected = wide_client.classify(task.name, texts, max_tier=contract.TIER_LOGREG)
    assert pq.read_table(out).column("ai_label").to_pylist() == [p.label for p in expected]

    # A table embedded by MiniLM (its column says so, and is 384-d) is refused before any row is sent.
    narrow = tmp_path / "narrow.parquet"
    made_by = {embedders.TABLE_METADATA_KEY: embedders.MINILM.encode()}
    column = pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(4 * 384, np.float32)), 384)
    pq.write_table(pa.table({"text": texts, "embedding": column}).cast(
        pa.schema([("text", pa.string()), pa.field("embedding", column.type, metadata=made_by)])
    ), narrow)  # fmt: skip
    with pytest.raises(ConfigError, match="made by minilm-l6 \\(384-d\\); the server's embedder is mpnet-base"):
        run_filter(narrow, tmp_path / "never.parquet", options, server.grpc_url, llm_probe_rows=0, quiet=True)
