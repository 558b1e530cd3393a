"""Inference logic of the Python-backend models: an ONNX Runtime session over embeddings or texts.

Kept free of ``triton_python_backend_utils`` so it can be unit-tested directly; heavy imports
(onnxruntime, tokenizers) happen in :class:`OnnxRunner`'s constructor.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cascade.contract import EMBEDDING, EMBEDDING_DIM, MAX_SEQ_TOKENS, MAX_TEXT_CHARS, PROBS
from cascade.errors import ConfigError, InvalidInput

TOKENIZER_FILE = "tokenizer.json"
#: The token inputs a text model may declare (only those it declares are fed).
TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
#: Text rows are run in sub-batches of at most this many rows (sorted by length).
TEXT_SUB_BATCH = 64


def _as_text(value: Any) -> str:
    """One request row as ``str`` (bytes are decoded as UTF-8), cut to MAX_TEXT_CHARS."""
    if isinstance(value, bytes | bytearray | memoryview):
        # 4 bytes per character at most: decoding more than that is wasted work.
        value = bytes(value[: 4 * MAX_TEXT_CHARS]).decode("utf-8", errors="replace")
    elif not isinstance(value, str):
        raise InvalidInput(f"text rows must be str or bytes, got {type(value).__name__}")
    return value[:MAX_TEXT_CHARS]


class OnnxRunner:
    """Runs ``model_dir/onnx_file`` on CPU; text mode when ``model_dir`` holds ``tokenizer.json``."""

    def __init__(self, model_dir: Path | str, onnx_file: str = "model.onnx", num_threads: int = 1) -> None:
        import onnxruntime as ort

        self.model_dir = Path(model_dir)
        onnx_path = self.model_dir / onnx_file
        if not onnx_path.is_file():
            raise ConfigError(f"ONNX model not found: {onnx_path}")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, int(num_threads))
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self._session = ort.InferenceSession(str(onnx_path), sess_options=opts, providers=["CPUExecutionProvider"])
        inputs = {i.name: i for i in self._session.get_inputs()}
        outputs = self._session.get_outputs()

        tokenizer_path = self.model_dir / TOKENIZER_FILE
        self.text_input: bool = tokenizer_path.is_file()
        if self.text_input:
            self._feeds = [name for name in TOKEN_INPUTS if name in inputs]
            unknown = sorted(set(inputs) - set(TOKEN_INPUTS))
            if "input_ids" not in inputs or unknown:
                raise ConfigError(
                    f"{onnx_path}: a text model takes {TOKEN_INPUTS}, the graph declares {sorted(inputs)}"
                )
            self._tokenizer, self._pad_id, self._pad_type_id = self._load_tokenizer(tokenizer_path)
            if len(outputs) != 1:
                raise ConfigError(f"{onnx_path}: a text model has one output, got {len(outputs)}")
            output = outputs[0]
        else:
            if EMBEDDING.name not in inputs:
                raise ConfigError(f"{onnx_path}: no input named {EMBEDDING.name!r} ({sorted(inputs)})")
            dim = inputs[EMBEDDING.name].shape[-1]
            self._dim = dim if isinstance(dim, int) and dim > 0 else EMBEDDING_DIM
            by_name = {o.name: o for o in outputs}
            if PROBS.name in by_name:
                output = by_name[PROBS.name]
            elif len(outputs) == 1:
                output = outputs[0]
            else:
                raise ConfigError(f"{onnx_path}: no output named {PROBS.name!r} ({sorted(by_name)})")
        self._output = output.name
        width = output.shape[-1] if output.shape else None
        #: Width k of the output rows (known from the graph, or after the first run or probe).
        self._width: int | None = width if isinstance(width, int) and width > 0 else None

    @staticmethod
    def _load_tokenizer(path: Path) -> tuple[Any, int, int]:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(path))
        padding = tokenizer.padding or {}
        pad_id = padding.get("pad_id")
        if pad_id is None:
            pad_id = tokenizer.token_to_id("[PAD]") or 0
        pad_type_id = int(padding.get("pad_type_id") or 0)
        # We pad per sub-batch ourselves (to the longest row); the tokenizer only truncates.
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=MAX_SEQ_TOKENS)
        return tokenizer, int(pad_id), pad_type_id

    @property
    def output_width(self) -> int:
        """Width k of the output rows (runs a one-row probe when the graph does not say)."""
        if self._width is None:
            probe = [""] if self.text_input else np.zeros((1, self._dim), dtype=np.float32)
            self.run(probe)
        assert self._width is not None
        return self._width

    def run(self, inputs: Sequence[str | bytes] | np.ndarray) -> np.ndarray:
        """Float32 ``[N, k]`` outputs for ``N`` texts (text mode) or an ``[N, D]`` embedding array."""
        if self.text_input:
            texts = self._texts(inputs)
            if not texts:
                return np.zeros((0, self.output_width), dtype=np.float32)
            out = self._run_texts(texts)
        else:
            x = np.asarray(inputs, dtype=np.float32)
            if x.ndim != 2 or x.shape[1] != self._dim:
                raise InvalidInput(f"{EMBEDDING.name} must be [N, {self._dim}], got {list(x.shape)}")
            if x.shape[0] == 0:
                return np.zeros((0, self.output_width), dtype=np.float32)
            out = np.asarray(self._session.run([self._output], {EMBEDDING.name: x})[0], dtype=np.float32)
        if out.ndim == 1:
            out = out[:, None]
        self._width = out.shape[1]
        return out

    @staticmethod
    def _texts(inputs: Sequence[str | bytes] | np.ndarray) -> list[str]:
        if isinstance(inputs, str | bytes):
            raise InvalidInput("expected a sequence of texts, got a single text")
        if isinstance(inputs, np.ndarray):
            if inputs.ndim == 2 and inputs.shape[1] == 1:
                inputs = inputs[:, 0]
            elif inputs.ndim != 1:
                raise InvalidInput(f"texts must be [N] or [N, 1], got {list(inputs.shape)}")
        return [_as_text(v) for v in inputs]

    def _run_texts(self, texts: list[str]) -> np.ndarray:
        encodings = self._tokenizer.encode_batch(texts)
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
        order = np.argsort(lengths, kind="stable")
        out: np.ndarray | None = None
        for start in range(0, len(order), TEXT_SUB_BATCH):
            rows = order[start : start + TEXT_SUB_BATCH]
            width = int(lengths[rows].max())
            ids = np.full((len(rows), width), self._pad_id, dtype=np.int64)
            mask = np.zeros((len(rows), width), dtype=np.int64)
            types = np.full((len(rows), width), self._pad_type_id, dtype=np.int64)
            for j, r in enumerate(rows):
                enc = encodings[r]
                n = len(enc.ids)
                ids[j, :n] = enc.ids
                mask[j, :n] = enc.attention_mask
                types[j, :n] = enc.type_ids
            arrays = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
            feeds = {name: arrays[name] for name in self._feeds}
            result = np.asarray(self._session.run([self._output], feeds)[0], dtype=np.float32)
            if result.ndim == 1:
                result = result[:, None]
            if out is None:
                out = np.empty((len(texts), result.shape[1]), dtype=np.float32)
            out[rows] = result
        assert out is not None
        return out
