"""One LLM scorer request in, one response out, for every scorer model's glue (llama.cpp in-process, an
OpenAI-compatible endpoint): ``PROMPT`` + ``CANDIDATES`` parsed and checked, scored, ``PROBS`` + ``TRUNCATED`` back,
or an error response with the project's status (never a traceback).

No Triton import: the models' ``model.py`` pass their ``triton_python_backend_utils`` module in.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cascade import contract
from cascade.errors import CascadeError, triton_error
from cascade.llm.prompts import parse_scorer_inputs, parse_scorer_parameters


def score_request(pb_utils: Any, request: Any, scorer: Any, what: str = "llm scorer", log_all: bool = False):
    """The response to one scorer request; an error not of the project's own kinds is logged in full (every error
    with ``log_all``: a remote endpoint's failures belong in the server's log too)."""
    try:
        prompts, candidates = parse_scorer_inputs(
            pb_utils.get_input_tensor_by_name(request, contract.PROMPT.name).as_numpy(),
            pb_utils.get_input_tensor_by_name(request, contract.CANDIDATES.name).as_numpy(),
        )
        calibrate = parse_scorer_parameters(request.parameters())
        result = scorer.score(prompts, candidates, calibrate=calibrate)
        return pb_utils.InferenceResponse(
            [
                pb_utils.Tensor(contract.PROBS.name, result.probs.astype(np.float32)),
                pb_utils.Tensor(contract.TRUNCATED.name, result.truncated.astype(np.bool_)),
            ]
        )
    except Exception as exc:  # noqa: BLE001 - a message to the client, the details to the log
        if log_all or not isinstance(exc, CascadeError):
            pb_utils.Logger.log_error(f"{what} failed: {exc!r}")
        return pb_utils.InferenceResponse(error=triton_error(pb_utils, exc, "LLM scoring failed"))
