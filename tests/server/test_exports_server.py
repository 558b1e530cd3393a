"""Exports of the embedder and the fine-tuned encoder to ONNX (real MiniLM weights), checked against the source
models, and the OnnxRunner in text mode."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from cascade.contract import EMBEDDING, EMBEDDING_DIM, MAX_SEQ_TOKENS, PROBS
from cascade.errors import InvalidInput
from cascade.runtime.onnx_runner import TEXT_SUB_BATCH, TOKENIZER_FILE, OnnxRunner

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

POSITIVE = [
    "a gorgeous , witty , seductive movie .",
    "the acting is superb and the story is genuinely moving",
    "one of the best films of the year",
    "a delightful , funny and warm-hearted comedy",
    "it 's a charming and often affecting journey",
    "an exhilarating experience from start to finish",
    "beautifully shot and wonderfully acted",
    "a smart , sassy and exceptionally entertaining film",
    "the performances are uniformly excellent",
    "a triumph of imagination and heart",
    "you 'll laugh , you 'll cry , you 'll love it",
    "a masterpiece of quiet , understated storytelling that rewards patience with real emotional depth",
    "fresh , lively and full of surprises",
    "an engaging and thoughtful drama",
    "sweet , tender and sincere",
    "the director handles the material with grace",
    "great fun for the whole family",
    "a rare gem",
    "strong performances and a clever script make this a winner",
    "it 's hard not to be swept up in its joy",
]
NEGATIVE = [
    "a dull , lifeless and tedious mess .",
    "the plot is predictable and the dialogue is laughable",
    "one of the worst films of the year",
    "a boring , pointless and overlong exercise",
    "it 's a clumsy and often embarrassing failure",
    "an exhausting experience from start to finish",
    "badly shot and woodenly acted",
    "a stupid , shallow and thoroughly unpleasant film",
    "the performances are uniformly terrible",
    "a waste of talent and time",
    "you 'll yawn , you 'll squirm , you 'll check your watch",
    "a muddled mess of half-baked ideas that never come together and wears out its welcome in minutes",
    "stale , sluggish and full of cliches",
    "a tiresome and witless drama",
    "sour , cynical and insincere",
    "the director fumbles the material badly",
    "no fun for anyone",
    "a total dud",
    "weak performances and a lazy script make this a loser",
    "it 's hard to care about any of it",
]
TEXTS = POSITIVE + NEGATIVE
LABELS = np.array([1] * len(POSITIVE) + [0] * len(NEGATIVE))


@pytest.fixture(scope="module")
def embedder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cascade_export.build.embedder import export_embedder

    out_dir = tmp_path_factory.mktemp("embedder")
    path = export_embedder(out_dir, "minilm-l6")  # the small one (test_wide_embedder serves mpnet-base)
    assert path == out_dir / "model.onnx"
    return out_dir


# --- embedder ------------------------------------------------------------------------------------
def test_embedder_graph_signature(embedder_dir: Path) -> None:
    import onnx

    graph = onnx.load(str(embedder_dir / "model.onnx"), load_external_data=False).graph
    assert [i.name for i in graph.input] == ["input_ids", "attention_mask", "token_type_ids"]
    assert [o.name for o in graph.output] == [EMBEDDING.name]
    tokenizer = json.loads((embedder_dir / TOKENIZER_FILE).read_text(encoding="utf-8"))
    assert tokenizer["truncation"]["max_length"] == MAX_SEQ_TOKENS
    assert tokenizer["padding"] is None


def test_embedder_matches_sentence_transformers(embedder_dir: Path) -> None:
    from cascade_export.build.embedder import check_embedder

    long_text = " ".join(TEXTS) * 3  # > MAX_SEQ_TOKENS word pieces: exercises truncation
    assert check_embedder(embedder_dir, TEXTS[:12] + [long_text, ""]) <= 1e-4


def test_embedder_rows_are_unit_norm(embedder_dir: Path) -> None:
    out = OnnxRunner(embedder_dir).run(TEXTS)
    assert out.shape == (len(TEXTS), EMBEDDING_DIM)
    assert out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


# --- OnnxRunner in text mode ---------------------------------------------------------------------
def test_runner_keeps_row_order_across_sub_batches(embedder_dir: Path) -> None:
    runner = OnnxRunner(embedder_dir)
    assert runner.text_input
    rng = np.random.default_rng(0)
    # Mixed lengths, more rows than one sub-batch, so sorting and re-ordering are exercised.
    texts = [
        f"{i} " + " ".join(rng.choice(TEXTS, size=int(k)))
        for i, k in enumerate(rng.integers(1, 6, size=TEXT_SUB_BATCH + 11))
    ]
    batched = runner.run(texts)
    singles = np.concatenate([runner.run([t]) for t in texts])
    np.testing.assert_allclose(batched, singles, atol=1e-5)


def test_runner_truncates_huge_text(embedder_dir: Path) -> None:
    runner = OnnxRunner(embedder_dir)
    huge = "great movie , " * (1_000_000 // 14 + 1)
    assert len(huge) >= 1_000_000
    out = runner.run([huge, TEXTS[0], huge.encode()])
    assert out.shape == (3, EMBEDDING_DIM)
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out[0], out[2], atol=1e-6)


def test_runner_empty_batch(embedder_dir: Path) -> None:
    runner = OnnxRunner(embedder_dir)
    out = runner.run([])
    assert out.shape == (0, EMBEDDING_DIM) and out.dtype == np.float32
    assert runner.run(np.array([], dtype=object)).shape == (0, EMBEDDING_DIM)


def test_runner_rejects_a_bare_string(embedder_dir: Path) -> None:
    with pytest.raises(InvalidInput):
        OnnxRunner(embedder_dir).run("not a batch")


# --- tier 2 --------------------------------------------------------------------------------------
def test_encoder_finetune_export_matches_torch(tmp_path: Path) -> None:
    import onnx

    from cascade_export.build.encoder import check_encoder, export_encoder, train_encoder

    texts = TEXTS + [t + " !" for t in TEXTS[:24]]  # 64 rows
    labels = np.concatenate([LABELS, LABELS[:24]])
    model = train_encoder(texts, labels, 2, epochs=1, batch_size=16, progress=False, backbone="minilm-l6")
    assert model.train_stats["rows"] == len(texts)
    path = export_encoder(model, tmp_path)
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["input_ids", "attention_mask", "token_type_ids"]
    assert [o.name for o in graph.output] == [PROBS.name]
    assert check_encoder(model, tmp_path, TEXTS + ["", "great movie , " * 300]) <= 1e-4
    runner = OnnxRunner(tmp_path)
    probs = runner.run(TEXTS[:5])
    assert probs.shape == (5, 2)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert runner.run([]).shape == (0, 2)

    # int8 ships only where it costs at most the allowed drop in agreement (here: never allowed to cost anything
    # more than -1, i.e. kept fp32; then any drop allowed: shipped, and smaller).
    from cascade_export.build.encoder import quantize_if_cheap

    fp32_bytes = path.stat().st_size
    kept = quantize_if_cheap(tmp_path, texts, labels, max_drop=-1.0)
    assert not kept["int8"] and path.stat().st_size == fp32_bytes
    shipped = quantize_if_cheap(tmp_path, texts, labels, max_drop=1.0)
    assert shipped["int8"] and path.stat().st_size == shipped["model_bytes"] < fp32_bytes / 2
    assert OnnxRunner(tmp_path).run(TEXTS[:5]).shape == (5, 2)
