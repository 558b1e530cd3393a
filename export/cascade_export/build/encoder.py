"""Tier 2: fine-tune the repository's embedder's backbone (mean pooling + linear head) on CPU and export softmax
probabilities."""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cascade import embedders
from cascade.contract import MAX_SEQ_TOKENS, MAX_TEXT_CHARS, PROBS
from cascade.errors import InvalidInput
from cascade.runtime.onnx_runner import TOKENIZER_FILE, OnnxRunner, pad_token_id
from cascade_export.build.embedder import (
    export_graph,
    load_transformer,
    mean_pool,
    model_path,
    transformer_hidden,
    write_tokenizer,
)

#: Training batches are formed inside shuffled pools of this many batches, sorted by length (less padding).
_POOL_BATCHES = 50


def load_tokenizer(backbone: str = embedders.DEFAULT_EMBEDDER) -> Any:
    """The packaged tokenizer of embedder ``backbone``: truncation at MAX_SEQ_TOKENS, no padding."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_path(backbone) / TOKENIZER_FILE))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=MAX_SEQ_TOKENS)
    return tokenizer


def pad_batch(encodings: Sequence[Any], pad_id: int = 0) -> tuple[Any, Any, Any]:
    """Right-padded int64 tensors (input_ids, attention_mask, token_type_ids) of ``encodings``."""
    import torch

    width = max(len(e.ids) for e in encodings)
    ids = torch.full((len(encodings), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(encodings), width), dtype=torch.long)
    types = torch.zeros((len(encodings), width), dtype=torch.long)
    for row, enc in enumerate(encodings):
        n = len(enc.ids)
        ids[row, :n] = torch.tensor(enc.ids, dtype=torch.long)
        mask[row, :n] = torch.tensor(enc.attention_mask, dtype=torch.long)
        types[row, :n] = torch.tensor(enc.type_ids, dtype=torch.long)
    return ids, mask, types


@functools.cache
def _modules() -> tuple[type, type]:
    """The torch module classes (defined lazily so importing this file does not import torch)."""
    import torch

    class EncoderClassifier(torch.nn.Module):
        """Backbone -> mean pooling -> dropout -> linear head; ``forward`` returns logits."""

        def __init__(self, transformer: Any, n_labels: int, backbone: str, dropout: float = 0.1) -> None:
            super().__init__()
            self.transformer = transformer
            self.backbone = backbone  # the embedder it starts from (its tokenizer too)
            self.n_labels = n_labels
            self.dropout = torch.nn.Dropout(dropout)
            self.head = torch.nn.Linear(transformer.config.hidden_size, n_labels)
            self.train_stats: dict[str, float] = {}

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            hidden = transformer_hidden(self.transformer, input_ids, attention_mask, token_type_ids)
            return self.head(self.dropout(mean_pool(hidden, attention_mask)))

    class SoftmaxOutput(torch.nn.Module):
        """Wraps a classifier so the exported graph returns probabilities."""

        def __init__(self, classifier: Any) -> None:
            super().__init__()
            self.classifier = classifier

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            logits = self.classifier(input_ids, attention_mask, token_type_ids)
            return torch.softmax(logits, dim=-1)

    return EncoderClassifier, SoftmaxOutput


def _length_grouped_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled batches of similar-length rows (sorted inside random pools, then batch order shuffled)."""
    order = rng.permutation(len(lengths))
    pool = batch_size * _POOL_BATCHES
    batches: list[np.ndarray] = []
    for start in range(0, len(order), pool):
        chunk = order[start : start + pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)  # type: ignore[arg-type]
    return batches


def train_encoder(
    texts: Sequence[str],
    labels: Sequence[int] | np.ndarray,
    n_labels: int,
    epochs: int = 2,
    batch_size: int = 32,
    lr: float = 1e-4,
    max_rows: int = 3000,
    seed: int = 0,
    progress: bool = True,
    attn_implementation: str = "sdpa",
    head_lr: float | None = 1e-3,
    backbone: str = embedders.DEFAULT_EMBEDDER,
    soft_labels: np.ndarray | None = None,
) -> Any:
    """Fine-tune embedder ``backbone``'s transformer + a linear head on CPU; returns the model (eval mode,
    ``train_stats`` set). With ``soft_labels`` ([n, n_labels], the teacher's probabilities), the loss is the
    cross-entropy against them (a KL divergence up to a constant) instead of against ``labels``."""
    import torch

    from cascade.progress import progress as progress_bar

    texts = list(texts)  # positional indexing, also for a pandas Series
    y = np.asarray(labels)
    if len(texts) != len(y) or len(y) == 0:
        raise InvalidInput(f"need as many labels as texts (> 0), got {len(texts)} texts and {len(y)} labels")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= n_labels:
        raise InvalidInput(f"labels must be integers in 0..{n_labels - 1}")

    torch.set_num_threads(2)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    rows = rng.permutation(len(y))[:max_rows] if len(y) > max_rows else np.arange(len(y))
    tokenizer = load_tokenizer(backbone)
    pad_id = pad_token_id(tokenizer)
    encodings = tokenizer.encode_batch([str(texts[i])[:MAX_TEXT_CHARS] for i in rows])
    if soft_labels is not None:
        soft = np.asarray(soft_labels, dtype=np.float32)
        if soft.shape != (len(y), n_labels) or not np.all(np.isfinite(soft)):
            raise InvalidInput(f"soft labels must be finite [{len(y)}, {n_labels}], got {list(soft.shape)}")
        targets = torch.as_tensor(soft[rows] / soft[rows].sum(axis=1, keepdims=True))
    else:
        targets = torch.as_tensor(y[rows], dtype=torch.long)
    lengths = np.array([len(e.ids) for e in encodings])

    encoder_cls, _ = _modules()
    source = model_path(backbone)
    try:
        transformer = load_transformer(source, attn_implementation=attn_implementation)
    except ValueError:  # an architecture without that attention kernel (MPNet has no sdpa): the plain one
        transformer = load_transformer(source, attn_implementation="eager")
    model = encoder_cls(transformer, n_labels, backbone)
    head = list(model.head.parameters())
    body = [p for p in model.parameters() if all(p is not h for h in head)]
    optimizer = torch.optim.AdamW(
        [{"params": body, "lr": lr}, {"params": head, "lr": head_lr if head_lr is not None else lr}],
        weight_decay=0.01,
    )
    steps = epochs * -(-len(rows) // batch_size)
    warmup = max(1, steps // 10)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (steps - s) / max(1, steps - warmup)))
    )
    loss_fn = torch.nn.CrossEntropyLoss()

    model.train()
    start = time.perf_counter()
    with progress_bar(steps, "encoder fine-tune", "batch", disable=not progress) as bar:
        for epoch in range(epochs):
            for batch in _length_grouped_batches(lengths, batch_size, rng):
                ids, mask, types = pad_batch([encodings[i] for i in batch], pad_id)
                loss = loss_fn(model(ids, mask, types), targets[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.4f}")
                bar.update(1)
    seconds = time.perf_counter() - start
    model.train_stats = {
        "rows": float(len(rows)),
        "epochs": float(epochs),
        "seconds": seconds,
        "rows_per_s": len(rows) * epochs / seconds if seconds > 0 else float("inf"),
        "soft_labels": float(soft_labels is not None),
    }
    return model.eval()


def export_encoder(model: Any, out_dir: Path) -> Path:
    """Write ``out_dir/model.onnx`` (token inputs -> PROBS [N, n_labels] softmax) and tokenizer.json."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_tokenizer(out_dir, model_path(model.backbone))
    _, softmax_cls = _modules()
    transformer = model.transformer
    previous = transformer.config._attn_implementation
    was_training = model.training
    transformer.set_attn_implementation("eager")  # traces to plain ONNX ops
    try:
        return export_graph(softmax_cls(model), out_dir, PROBS.name)
    finally:
        transformer.set_attn_implementation(previous)
        model.train(was_training)


def predict_proba(model: Any, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """Softmax probabilities of the torch model, float32 [N, n_labels]."""
    import torch

    tokenizer = load_tokenizer(model.backbone)
    pad_id = pad_token_id(tokenizer)
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            chunk = [str(t)[:MAX_TEXT_CHARS] for t in texts[start : start + batch_size]]
            logits = model(*pad_batch(tokenizer.encode_batch(chunk), pad_id))
            out.append(torch.softmax(logits, dim=-1).numpy().astype(np.float32))
    return np.concatenate(out) if out else np.zeros((0, model.n_labels), dtype=np.float32)


def check_encoder(model: Any, out_dir: Path, texts: Sequence[str]) -> float:
    """Max abs difference between torch and ONNX (OnnxRunner) probabilities on ``texts``."""
    onnx_out = OnnxRunner(out_dir).run(list(texts))
    reference = predict_proba(model, list(texts))
    return float(np.max(np.abs(onnx_out - reference), initial=0.0))


#: The encoder ships int8 (ONNX Runtime dynamic quantisation) when that costs at most this much agreement.
INT8_MAX_DROP = 0.01


def quantize_if_cheap(out_dir: Path, texts: Sequence[str], labels: np.ndarray, max_drop: float = INT8_MAX_DROP) -> dict:
    """Replace ``out_dir/model.onnx`` by its dynamic int8 quantisation when its agreement with ``labels`` on
    ``texts`` is at most ``max_drop`` below the fp32 graph's. Measured on rows the caller chooses (the build uses
    training rows, so that the calibration rows stay untouched by the choice). Returns both agreements."""
    import shutil
    import tempfile

    from onnxruntime.quantization import QuantType, quantize_dynamic

    out_dir = Path(out_dir)
    labels = np.asarray(labels)
    fp32 = float((OnnxRunner(out_dir, num_threads=2).run(list(texts)).argmax(1) == labels).mean())
    with tempfile.TemporaryDirectory(dir=out_dir.parent) as tmp:
        quant = Path(tmp)
        for f in out_dir.iterdir():
            if f.is_file() and f.name != "model.onnx":
                shutil.copy2(f, quant / f.name)
        quantize_dynamic(str(out_dir / "model.onnx"), str(quant / "model.onnx"), weight_type=QuantType.QInt8)
        int8 = float((OnnxRunner(quant, num_threads=2).run(list(texts)).argmax(1) == labels).mean())
        shipped = int8 >= fp32 - max_drop
        if shipped:
            size = (quant / "model.onnx").stat().st_size
            (quant / "model.onnx").replace(out_dir / "model.onnx")
    info = {"fp32_agreement": fp32, "int8_agreement": int8, "int8": shipped, "rows": len(labels)}
    if shipped:
        info["model_bytes"] = size
    return info
