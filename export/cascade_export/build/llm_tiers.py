"""The LLM tiers in a build: which packaged GGUF serves each and their shared models in the repository
(:func:`ensure_llms`), their probabilities on held-out rows (:func:`llm_scorer_on`) and the few-shot examples
of their prompts (:func:`draw_few_shot`)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from cascade import contract
from cascade.repository import configgen
from cascade.repository.trtllm_config import cpu_generate_spec
from cascade.repository.writer import RepositoryWriter
from cascade_export.build.stage import log

#: Which packaged GGUF serves each LLM tier on CPU (chosen by measurement: docs/llm.md, "Roles").
LLM_ROLES = {contract.TIER_LLM_SMALL: "smollm2-135m:f16", contract.TIER_LLM_LARGE: "qwen2.5-coder-1.5b"}
LLM_N_CTX = 1024


def llm_specs(endpoints: dict | None = None, prices: dict | None = None) -> list[configgen.ModelSpec]:
    """The LLM tiers' scorers and ``llm_generate``, the streaming text endpoint (on the small tier's model); a tier
    in ``endpoints`` (tier: ``cascade.llm.openai_http.Endpoint``) is scored by that endpoint, priced by ``prices``
    (tier: ``cascade.llm.meter.Price``)."""
    endpoints, prices = endpoints or {}, prices or {}
    # Contextual calibration on by default; a task prompt's ``calibrate`` overrides it per request.
    scorers = [
        configgen.remote_llm_spec(t, endpoints[t], price=_price(prices, t))
        if t in endpoints
        else configgen.llm_spec(t, LLM_ROLES[t], n_ctx=LLM_N_CTX, calibrate=True, price=_price(prices, t))
        for t in LLM_ROLES
    ]
    return [*scorers, cpu_generate_spec(LLM_ROLES[contract.TIER_LLM_SMALL], n_ctx=LLM_N_CTX)]


def _price(prices: dict, tier: int) -> dict[str, str] | None:
    return prices[tier].parameters() if tier in prices else None


def ensure_llms(repo: Path, endpoints: dict | None = None, prices: dict | None = None) -> None:
    """Write the shared LLM models (scorers and ``llm_generate``: one copy whatever the number of tasks) where
    missing or stale. Without ``endpoints`` or ``prices`` a tier already set to an endpoint or priced keeps its
    setting (set once with ``cascade build --llm-large openai:MODEL@URL`` or ``--llm-price``)."""
    stale = []
    for spec in llm_specs(endpoints, prices):
        config = Path(repo) / spec.name / "config.pbtxt"
        if config.is_file() and not (endpoints or prices) and _set_by_user(config.read_text()):
            continue
        if not config.is_file() or config.read_text() != spec.to_pbtxt():
            stale.append(spec)
    if stale:
        with RepositoryWriter(repo) as writer:
            for spec in stale:
                writer.add(spec)


def _set_by_user(config_text: str) -> bool:
    params = configgen.parse_config(config_text).parameters
    return contract.CFG_LLM_ENDPOINT in params or contract.CFG_PRICE_IN in params


def served_llm(repo: Path | None, tier: int) -> str:
    """What serves ``tier`` in ``repo``: an endpoint's ``openai:MODEL@URL`` or a GGUF role (the packaged default
    where the repository has no such model yet), as a served teacher names it."""
    params = _llm_parameters(repo, tier)
    return params.get(contract.CFG_LLM_ENDPOINT) or params.get(contract.CFG_LLM_MODEL) or LLM_ROLES[tier]


def _llm_parameters(repo: Path | None, tier: int) -> dict[str, str]:
    config = Path(repo) / contract.TIER_NAMES[tier] / "config.pbtxt" if repo is not None else None
    if config is None or not config.is_file():
        return {}
    return {k: v.string_value for k, v in configgen.parse_config(config.read_text()).parameters.items()}


def repo_scorer(repo: Path | None, tier: int):
    """The scorer ``tier`` has in ``repo``: its endpoint's (probed) where it is set to one, else llama.cpp in this
    process on the packaged GGUF."""
    from cascade.llm.gguf import gguf_path
    from cascade.llm.scorer import LlamaScorer

    params = _llm_parameters(repo, tier)
    if contract.CFG_LLM_ENDPOINT in params:
        from cascade.llm.remote import RemoteScorer, endpoint_from_parameters

        scorer = RemoteScorer(endpoint_from_parameters(params, contract.TIER_NAMES[tier]))
        log(f"tier {tier} ({contract.TIER_NAMES[tier]}): {scorer.probe()}")
        return scorer
    return LlamaScorer(gguf_path(LLM_ROLES[tier]), n_ctx=LLM_N_CTX)


def llm_scorer_on(
    tier: int, gate_prompt: dict, texts: list[str], timings: dict[str, float] | None = None, repo: Path | None = None
):
    """Probabilities of an LLM tier on the rows ``idx`` of ``texts``, computed only when asked (the seconds
    it scored go to ``timings["score_<tier name>_s"]``)."""
    from cascade.llm.prompts import PromptTemplate

    template = PromptTemplate.from_json(gate_prompt)
    calibrate = template.calibrate
    scorer = None

    def score(idx: np.ndarray) -> np.ndarray:
        nonlocal scorer
        if idx.size == 0:
            return np.zeros((0, len(template.verbalizations)), np.float32)
        if scorer is None:
            scorer = repo_scorer(repo, tier)
        start = time.perf_counter()
        probs = scorer.score([template.format(texts[i]) for i in idx], template.verbalizations, calibrate).probs
        seconds = time.perf_counter() - start
        if timings is not None:
            key = f"score_{contract.TIER_NAMES[tier]}_s"
            timings[key] = timings.get(key, 0.0) + seconds
        log(f"tier {tier} ({contract.TIER_NAMES[tier]}): scored {idx.size} rows in {seconds:.1f} s")
        return probs

    return score


#: Few-shot examples are drawn among training rows of this many words where enough exist: very short rows
#: ("a bore") teach little and long ones lengthen every prompt (cascade.bench.llm draws the same way).
FEW_SHOT_WORDS = (8, 40)


def draw_few_shot(texts: list[str], labels: np.ndarray, k: int, n_labels: int, rng) -> list[tuple[str, int]]:
    """``k`` labelled examples, as balanced over the labels as ``k`` allows, in a shuffled order."""
    if k <= 0:
        return []
    lo, hi = FEW_SHOT_WORDS
    words = np.array([len(t.split()) for t in texts])
    picked = []
    for label in range(n_labels):
        take = k // n_labels + (1 if label < k % n_labels else 0)
        idx = np.flatnonzero(labels == label)
        moderate = idx[(words[idx] >= lo) & (words[idx] <= hi)]
        pool = moderate if moderate.size >= take else idx
        picked += [(texts[i], label) for i in rng.choice(pool, size=min(take, pool.size), replace=False)]
    order = rng.permutation(len(picked))
    return [picked[i] for i in order]
