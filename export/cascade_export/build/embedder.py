"""Export the repository's sentence embedder (mean pooling + L2 norm inside the graph) to ONNX (cascade.embedders)."""

from __future__ import annotations

import inspect
import json
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cascade import embedders
from cascade.contract import EMBEDDING, MAX_SEQ_TOKENS
from cascade.runtime.onnx_runner import TOKEN_INPUTS, TOKENIZER_FILE, OnnxRunner, pad_token_id

ONNX_FILE = "model.onnx"
OPSET = 17
#: Tokenizer files copied next to the graph when the source has them (tokenizer.json is required).
TOKENIZER_EXTRAS = ("tokenizer_config.json", "vocab.txt", "special_tokens_map.json")
#: Rows of the example batch used for tracing: different lengths, so the graph keeps the mask path.
_TRACE_TEXTS = ("a short one", "a somewhat longer example sentence, so that the batch has padding")


def model_path(name: str = embedders.DEFAULT_EMBEDDER) -> Path:
    """Folder of the packaged sentence-transformers model of embedder ``name``."""
    return embedders.get(name).folder()


def load_transformer(path: Path | None = None, attn_implementation: str = "eager") -> Any:
    """The HF transformer of a sentence-transformers folder (default: the default embedder's), with eager attention
    by default: it traces cleanly to ONNX."""
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(path or model_path()), attn_implementation=attn_implementation)


def mean_pool(hidden: Any, attention_mask: Any) -> Any:
    """Mean of the token vectors over the attention mask (as sentence-transformers ``Pooling``)."""
    import torch

    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    summed = (hidden * mask).sum(dim=1)
    counts = torch.clamp(mask.sum(dim=1), min=1e-9)
    return summed / counts


def write_tokenizer(out_dir: Path, source: Path | None = None) -> Path:
    """Copy ``tokenizer.json`` (truncating at MAX_SEQ_TOKENS, no fixed padding) and extras to ``out_dir``."""
    source = source or model_path()
    config = json.loads((source / TOKENIZER_FILE).read_text(encoding="utf-8"))
    truncation = config.get("truncation") or {"stride": 0, "strategy": "LongestFirst", "direction": "Right"}
    truncation["max_length"] = MAX_SEQ_TOKENS
    config["truncation"] = truncation
    # Padding is per batch (OnnxRunner pads each sub-batch to its longest row), never a fixed length.
    config["padding"] = None
    target = out_dir / TOKENIZER_FILE
    target.write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
    for name in TOKENIZER_EXTRAS:
        if (source / name).is_file():
            shutil.copyfile(source / name, out_dir / name)
    return target


def trace_inputs(out_dir: Path, texts: Sequence[str] = _TRACE_TEXTS) -> tuple[Any, Any, Any]:
    """Padded int64 token tensors (input_ids, attention_mask, token_type_ids) from ``out_dir``'s tokenizer."""
    import torch
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(out_dir / TOKENIZER_FILE))
    tokenizer.enable_padding(pad_id=pad_token_id(tokenizer))
    encodings = tokenizer.encode_batch(list(texts))
    return tuple(
        torch.tensor([getattr(e, attr) for e in encodings], dtype=torch.long)
        for attr in ("ids", "attention_mask", "type_ids")
    )  # type: ignore[return-value]


def export_graph(module: Any, out_dir: Path, output_name: str) -> Path:
    """``torch.onnx.export`` of a ``forward(input_ids, attention_mask, token_type_ids)`` module."""
    import torch

    module.eval()
    path = out_dir / ONNX_FILE
    axes = {name: {0: "batch", 1: "sequence"} for name in TOKEN_INPUTS}
    axes[output_name] = {0: "batch"}
    with torch.no_grad(), warnings.catch_warnings():
        # Known benign: a shape-only comparison in transformers' mask code, and non-negative mask indexing.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Exporting aten::index operator")
        # dynamo=False on purpose: the TorchScript exporter handles this model reliably.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(
            module,
            trace_inputs(out_dir),
            str(path),
            input_names=list(TOKEN_INPUTS),
            output_names=[output_name],
            dynamic_axes=axes,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    return path


def _embedder_module(transformer: Any) -> Any:
    import torch
    import torch.nn.functional as F

    class SentenceEmbedder(torch.nn.Module):
        """Transformer -> mean pooling -> L2 normalisation, called with keyword arguments."""

        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            return F.normalize(mean_pool(transformer_hidden(self.model, input_ids, attention_mask, token_type_ids),
                                         attention_mask), p=2, dim=1)  # fmt: skip

    return SentenceEmbedder(transformer)


def transformer_hidden(model: Any, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
    """The token vectors; ``token_type_ids`` only for models that take them (BERT does, MPNet does not: the
    exported graph then has no such input and the runner does not feed it)."""
    if "token_type_ids" in inspect.signature(model.forward).parameters:
        return model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)[0]
    return model(input_ids=input_ids, attention_mask=attention_mask)[0]


def export_embedder(out_dir: Path, name: str = embedders.DEFAULT_EMBEDDER) -> Path:
    """Write ``out_dir/model.onnx`` (token inputs -> EMBEDDING [N, dim]), the tokenizer files and the record of
    which embedder it is (``embedder.json``)."""
    embedder = embedders.get(name)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    source = embedder.folder()
    write_tokenizer(out_dir, source)
    path = export_graph(_embedder_module(load_transformer(source)), out_dir, EMBEDDING.name)
    embedders.write_manifest(out_dir, embedder)
    return path


def check_embedder(out_dir: Path, texts: Sequence[str]) -> float:
    """Max abs difference between the ONNX embedder in ``out_dir`` and sentence-transformers on ``texts``."""
    import numpy as np
    from sentence_transformers import SentenceTransformer

    onnx_out = OnnxRunner(out_dir).run(list(texts))
    st_model = SentenceTransformer(str(embedders.of_folder(out_dir).folder()), device="cpu")
    st_model.max_seq_length = MAX_SEQ_TOKENS
    reference = st_model.encode(list(texts), normalize_embeddings=True, convert_to_numpy=True)
    return float(np.max(np.abs(onnx_out - np.asarray(reference, dtype=np.float32)), initial=0.0))
