"""AsyncCascadeClient answers as CascadeClient (answers, errors) on the same real server."""

import asyncio

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from cascade import contract
from cascade.errors import CascadeError, InvalidInput, ServerError, ServerUnavailable, UnknownTask
from cascade_client import AsyncCascadeClient

TEXTS = ["a gripping, beautifully shot film", "dull and far too long", "ok"]


def outcome(call):
    """The answer, or the project error raised (type and message)."""
    try:
        return call()
    except CascadeError as exc:
        return type(exc), str(exc)


async def aoutcome(awaitable):
    try:
        return await awaitable
    except CascadeError as exc:
        return type(exc), str(exc)


def tier0_input(embeddings):
    tensor = grpcclient.InferInput(contract.EMBEDDING.name, list(embeddings.shape), contract.EMBEDDING.datatype)
    tensor.set_data_from_numpy(embeddings)
    return [tensor]


def calls(c, task: str, emb: np.ndarray) -> dict:
    """The same calls on either client (the async one returns awaitables)."""
    tier0 = contract.tier_model_name(task, contract.TIER_LOGREG)
    return {
        "classify": c.classify(task, TEXTS, max_tier="encoder", return_probs=True),
        "classify_min": c.classify(task, TEXTS[:2], min_tier="encoder", max_tier="encoder"),
        "classify_emb": c.classify(task, TEXTS, emb, max_tier=0, on_tier_failure="error"),
        "arrays": c.classify_arrays(task, TEXTS, emb, max_tier="encoder", timeout_s=60),
        "arrays_emb": c.classify_arrays(task, None, emb, max_tier="xgboost"),
        "labels": c.labels(task),
        "task_info": c.task_info(task),
        "infer": c.infer(tier0, tier0_input(emb), parameters=None),
        "model_config": c.model_config(contract.EMBEDDER_MODEL),
        "model_parameters": c.model_parameters(task),
        "embedder": c.embedder(),
        "embed": c.embed(TEXTS),
        "tasks": c.tasks(),
        "is_ready": c.is_ready(),
    }


def errors(c, task: str) -> dict:
    return {
        "unknown_task": lambda: c.classify("no_such_task", ["ok"]),
        "unknown_model": lambda: c.model_config("no_such_model"),
        "labels_of_no_gate": lambda: c.labels(contract.EMBEDDER_MODEL),
        "no_texts": lambda: c.classify(task, []),
        "no_rows": lambda: c.classify_arrays(task, None, None),
        "empty_text": lambda: c.classify(task, ["fine", ""]),
        "unknown_tier": lambda: c.classify_arrays(task, ["ok"], max_tier="gpt"),
        "deadline": lambda: c.classify_arrays(task, TEXTS, timeout_s=1e-6),
        "no_prompts": lambda: c.score(contract.TIER_NAMES[contract.TIER_LLM_SMALL], [], ["a", "b"]),
        "load_without_explicit_mode": lambda: c.load_models([task]),
    }


def same(name, got, want):
    if isinstance(want, list) and want and hasattr(want[0], "label"):  # predictions
        assert [(p.label, p.tier, p.degraded) for p in got] == [(p.label, p.tier, p.degraded) for p in want], name
        np.testing.assert_allclose([p.confidence for p in got], [p.confidence for p in want], atol=1e-5)
        assert [p.probs is None for p in got] == [p.probs is None for p in want], name
        if want[0].probs is not None:
            np.testing.assert_allclose([p.probs for p in got], [p.probs for p in want], atol=1e-5)
    elif hasattr(want, "label_index"):  # BatchResult
        assert type(got) is type(want) and np.array_equal(got.tier, want.tier), name
        assert np.array_equal(got.degraded, want.degraded), name
        np.testing.assert_allclose(got.probs, want.probs, atol=1e-5)
    elif isinstance(want, grpcclient.InferResult):
        np.testing.assert_allclose(got.as_numpy(contract.PROBS.name), want.as_numpy(contract.PROBS.name), atol=1e-6)
    elif isinstance(want, np.ndarray):
        assert got.dtype == want.dtype and got.shape == want.shape, name
        np.testing.assert_allclose(got, want, atol=1e-5)
    else:
        assert type(got) is type(want) and got == want, name


@pytest.mark.server
def test_each_async_method_answers_as_the_sync_one(server, client, sst2_task):
    task = sst2_task.name
    emb = client.embed(TEXTS)
    want = calls(client, task, emb)
    want_errors = {name: outcome(call) for name, call in errors(client, task).items()}
    stats_before = client.model_stats()

    async def run():
        async with AsyncCascadeClient(server.grpc_url) as aclient:
            got = {name: await awaitable for name, awaitable in calls(aclient, task, emb).items()}
            got_errors = {name: await aoutcome(call()) for name, call in errors(aclient, task).items()}
            return got, got_errors, await aclient.model_stats()

    got, got_errors, stats_after = asyncio.run(run())
    assert got.keys() == want.keys()
    for name in want:
        same(name, got[name], want[name])
    assert want["tasks"] == [task] and want["is_ready"] is True
    assert got_errors == want_errors
    kinds = {name: error[0] for name, error in want_errors.items()}
    assert kinds == {
        "unknown_task": UnknownTask,
        "unknown_model": UnknownTask,
        "labels_of_no_gate": UnknownTask,
        "no_texts": InvalidInput,
        "no_rows": InvalidInput,
        "empty_text": InvalidInput,
        "unknown_tier": InvalidInput,
        "deadline": ServerUnavailable,
        "no_prompts": InvalidInput,
        "load_without_explicit_mode": ServerError,
    }
    assert stats_after.keys() == stats_before.keys() and task in stats_after
    assert stats_after[task].rows > stats_before[task].rows  # the async calls were counted


@pytest.mark.server
def test_async_score_equals_the_sync_one(server, client):
    model = contract.TIER_NAMES[contract.TIER_LLM_SMALL]
    prompts, candidates = [("Review: ", "a gorgeous , moving film .", "\nSentiment:")], [" positive", " negative"]
    probs, truncated = client.score(model, prompts, candidates, calibrate=False)

    async def run():
        async with AsyncCascadeClient(server.grpc_url) as aclient:
            return await aclient.score(model, prompts, candidates, calibrate=False)

    aprobs, atruncated = asyncio.run(run())
    assert aprobs.shape == probs.shape == (1, 2) and np.array_equal(atruncated, truncated)
    np.testing.assert_allclose(aprobs, probs, atol=1e-5)
