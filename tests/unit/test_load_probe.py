"""Whether a server takes model loads, from what a load of a model no repository holds answered."""

import pytest
from tritonclient.utils import InferenceServerException

from cascade.cli.main import build_parser
from cascade.errors import Forbidden, ServerError
from cascade_client.translate import load_probe


def test_a_server_that_takes_loads_answers_that_the_probe_model_is_not_there():
    explicit = InferenceServerException(
        "failed to load '__cascade_load_probe__', failed to poll from model repository", "StatusCode.INTERNAL"
    )
    assert load_probe(explicit, "h:1") is None
    assert load_probe(None, "h:1") is None


def test_a_server_that_cannot_load_is_named_with_the_fix():
    none = InferenceServerException("explicit model load / unload is not allowed if polling is enabled", "UNAVAILABLE")
    with pytest.raises(ServerError, match="--model-control-mode=none") as info:
        load_probe(none, "h:1")
    assert "`cascade serve`" in str(info.value) and "h:1" in str(info.value)
    restricted = InferenceServerException(
        "This API is restricted, the protocol is restricted", "StatusCode.UNAVAILABLE"
    )
    with pytest.raises(Forbidden, match="CASCADE_ADMIN_KEY"):
        load_probe(restricted, "h:1")


def test_cascade_serve_takes_new_tasks_by_default():
    assert build_parser().parse_args(["serve"]).model_control_mode == "explicit"
    assert build_parser().parse_args(["serve", "--model-control-mode", "none"]).model_control_mode == "none"
