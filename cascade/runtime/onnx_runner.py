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
        # Idle intra-op threads sleep instead of spin-waiting: a spinning thread burns a core that llama.cpp
        # (whose own threads spin) needs on a small machine (cascade.runtime.sizing).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
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
            self._tokenizer = TextTokenizer(tokenizer_path)
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
        encodings = self._tokenizer.encode(texts)
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
        order = np.argsort(lengths, kind="stable")
        out: np.ndarray | None = None
        for start in range(0, len(order), TEXT_SUB_BATCH):
            rows = order[start : start + TEXT_SUB_BATCH]
            arrays = self._tokenizer.pad([encodings[r] for r in rows])
            feeds = {name: arrays[name] for name in self._feeds}
            result = np.asarray(self._session.run([self._output], feeds)[0], dtype=np.float32)
            if result.ndim == 1:
                result = result[:, None]
            if out is None:
                out = np.empty((len(texts), result.shape[1]), dtype=np.float32)
            out[rows] = result
        assert out is not None
        return out


def pad_token_id(tokenizer) -> int:
    """The padding token of a ``tokenizers.Tokenizer``: BERT's ``[PAD]``, RoBERTa/MPNet's ``<pad>``, else 0."""
    for token in ("[PAD]", "<pad>"):
        if (found := tokenizer.token_to_id(token)) is not None:
            return int(found)
    return 0


class TextTokenizer:
    """A ``tokenizer.json`` as the text models' token inputs: int64 ``input_ids``, ``attention_mask`` and
    ``token_type_ids``, each row cut to MAX_SEQ_TOKENS and padded to the longest row of its batch. Used in
    process by :class:`OnnxRunner` (CPU profile) and by the tokenizer model of the GPU profile's ensembles."""

    def __init__(self, path: Path | str) -> None:
        from tokenizers import Tokenizer

        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"tokenizer not found: {path}")
        tokenizer = Tokenizer.from_file(str(path))
        padding = tokenizer.padding or {}
        pad_id = padding.get("pad_id")
        if pad_id is None:
            pad_id = pad_token_id(tokenizer)
        self.pad_id, self.pad_type_id = int(pad_id), int(padding.get("pad_type_id") or 0)
        # Padding is done per batch here (to its longest row); the tokenizer only truncates.
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=MAX_SEQ_TOKENS)
        self._tokenizer = tokenizer

    def encode(self, texts: list[str]) -> list:
        return self._tokenizer.encode_batch(texts)

    def pad(self, encodings: Sequence) -> dict[str, np.ndarray]:
        width = max((len(e.ids) for e in encodings), default=0)
        ids = np.full((len(encodings), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(encodings), width), dtype=np.int64)
        types = np.full((len(encodings), width), self.pad_type_id, dtype=np.int64)
        for j, enc in enumerate(encodings):
            n = len(enc.ids)
            ids[j, :n] = enc.ids
            mask[j, :n] = enc.attention_mask
            types[j, :n] = enc.type_ids
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}

    def __call__(self, texts: Sequence[str | bytes]) -> dict[str, np.ndarray]:
        """Token arrays of a batch of texts (bytes are decoded as UTF-8; each cut to MAX_TEXT_CHARS first)."""
        return self.pad(self.encode([_as_text(t) for t in texts]))


class LinearModel:
    """A linear classifier exported by skl2onnx (``LinearClassifier``, optionally then an L1 ``Normalizer``),
    evaluated with array-API ops: NumPy on the host, or torch on a GPU when the gate gates there. Its numbers
    match ONNX Runtime's on the same graph (tested)."""

    POST_TRANSFORMS = ("NONE", "LOGISTIC", "SOFTMAX")

    def __init__(self, weights: np.ndarray, bias: np.ndarray, post_transform: str, l1_normalize: bool) -> None:
        if post_transform not in self.POST_TRANSFORMS:
            raise ConfigError(
                f"LinearClassifier post_transform {post_transform!r} is not one of {self.POST_TRANSFORMS}"
            )
        self.weights = np.ascontiguousarray(weights, np.float32)  # [k, d]
        self.bias = np.ascontiguousarray(bias, np.float32)  # [k]
        self.post_transform = post_transform
        self.l1_normalize = l1_normalize
        self._placed: dict = {}

    @classmethod
    def from_onnx(cls, path: Path | str) -> LinearModel:
        """The weights of ``path``; a ConfigError when the graph is not a (normalized) linear classifier."""
        import onnx
        from onnx import helper

        nodes = list(onnx.load(str(path)).graph.node)
        kinds = [n.op_type for n in nodes]
        if kinds not in (["LinearClassifier"], ["LinearClassifier", "Normalizer"]):
            raise ConfigError(f"{path}: not a linear classifier graph ({kinds})")
        attrs = {a.name: helper.get_attribute_value(a) for a in nodes[0].attribute}
        bias = np.asarray(attrs["intercepts"], np.float32)
        weights = np.asarray(attrs["coefficients"], np.float32).reshape(len(bias), -1)
        post = attrs.get("post_transform", b"NONE")
        normalize = len(nodes) == 2
        if normalize:
            norm = {a.name: helper.get_attribute_value(a) for a in nodes[1].attribute}.get("norm", b"")
            if norm != b"L1":
                raise ConfigError(f"{path}: Normalizer norm {norm!r} is not L1")
        return cls(weights, bias, post.decode() if isinstance(post, bytes) else post, normalize)

    FILE = "linear.npz"  # the weights in plain form beside model.onnx: no onnx package needed to read them

    def save(self, folder: Path | str) -> Path:
        path = Path(folder) / self.FILE
        with open(path, "wb") as f:
            np.savez(
                f, weights=self.weights, bias=self.bias, post_transform=np.array(self.post_transform),
                l1_normalize=np.array(self.l1_normalize),
            )  # fmt: skip
        return path

    @classmethod
    def load(cls, folder: Path | str) -> LinearModel:
        """The tier in ``folder``: its ``linear.npz``, else parsed from its ``model.onnx``."""
        path = Path(folder) / cls.FILE
        if not path.is_file():
            return cls.from_onnx(Path(folder) / "model.onnx")
        with np.load(path) as z:
            return cls(z["weights"], z["bias"], str(z["post_transform"]), bool(z["l1_normalize"]))

    def predict_proba(self, x, placement) -> object:
        """Class probabilities [n, k] of embeddings ``x`` [n, d], in ``placement`` (a
        ``cascade.gate.arrays.Placement``)."""
        key = placement.device
        if key not in self._placed:
            self._placed[key] = (placement.asarray(self.weights.T.copy()), placement.asarray(self.bias))
        w, b = self._placed[key]
        xp = placement.xp
        scores = xp.matmul(x, w) + b
        if self.post_transform == "LOGISTIC":
            scores = 1.0 / (1.0 + xp.exp(-scores))
        elif self.post_transform == "SOFTMAX":
            scores = xp.exp(scores - xp.max(scores, axis=1, keepdims=True))
            scores = scores / xp.sum(scores, axis=1, keepdims=True)
        if self.l1_normalize:
            scores = scores / xp.sum(xp.abs(scores), axis=1, keepdims=True)
        return scores
