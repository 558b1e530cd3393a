"""The embedder is a setting of the repository: recorded, refused when mixed, and its width flows into the configs."""

import json

import numpy as np
import pytest

from cascade import contract, embedders
from cascade.errors import ConfigError, InvalidInput, TierFailure
from cascade.gate.escalate import RowBatch
from cascade.gate.inputs import check_embeddings
from cascade.repository import configgen

WIDE = embedders.get(embedders.MPNET).dim


def test_registry_names_and_widths():
    assert embedders.get(embedders.MINILM).dim == contract.EMBEDDING_DIM == 384
    assert WIDE == 768
    assert embedders.DEFAULT_EMBEDDER in embedders.EMBEDDERS
    with pytest.raises(ConfigError, match="unknown embedder 'bge'.*minilm-l6.*mpnet-base"):
        embedders.get("bge")


def test_the_record_round_trips_and_old_folders_are_minilm(tmp_path):
    assert embedders.of_folder(tmp_path).name == embedders.MINILM  # exported before the record existed
    embedders.write_manifest(tmp_path, embedders.get(embedders.MPNET))
    assert embedders.of_folder(tmp_path) == embedders.get(embedders.MPNET)
    (tmp_path / embedders.MANIFEST).write_text(json.dumps({"name": embedders.MPNET, "dim": 384}))
    with pytest.raises(ConfigError, match="768-d vectors, the record says 384"):
        embedders.of_folder(tmp_path)
    assert embedders.of_repository(tmp_path / "empty") is None


def test_the_width_flows_into_every_config_that_carries_embedding():
    gate = configgen.gate_spec({"task": "t"}, "t", 2, embedding_dim=WIDE).to_proto()
    tier = configgen.tier_spec("t", contract.TIER_LOGREG, 2, embedding_dim=WIDE).to_proto()
    embedder = configgen.embedder_spec(embedding_dim=WIDE, embedder=embedders.MPNET).to_proto()
    assert [list(i.dims) for i in gate.input if i.name == contract.EMBEDDING.name] == [[WIDE]]
    assert [list(i.dims) for i in tier.input] == [[WIDE]]
    assert [list(o.dims) for o in embedder.output] == [[WIDE]]
    # a text tier has no EMBEDDING: untouched
    encoder = configgen.tier_spec("t", contract.TIER_ENCODER, 2, embedding_dim=WIDE).to_proto()
    assert [i.name for i in encoder.input] == [contract.TEXT.name]


def test_the_gate_checks_the_repositorys_width():
    wide = np.zeros((2, WIDE), np.float32)
    assert check_embeddings(wide, 2, WIDE) is wide
    with pytest.raises(InvalidInput, match=r"shape \[n, 768\] \(this repository's embedder\), got \[2, 384\]"):
        check_embeddings(np.zeros((2, 384), np.float32), 2, WIDE)


def test_a_batch_without_embeddings_takes_the_embedders_width():
    batch = RowBatch(["a", "b", "c"], embed=lambda texts: np.ones((len(texts), WIDE), np.float32))
    assert batch.embedding(np.array([1])).shape == (1, WIDE)
    assert batch.embedding(np.arange(3)).shape == (3, WIDE)
    assert batch.embedded_rows == 3
    # vectors sent with the request fix the width: an embedder of another width is a tier failure
    mixed = RowBatch(
        ["a", "b"],
        embeddings=np.zeros((2, 384), np.float32),
        have_embedding=np.array([True, False]),
        embed=lambda texts: np.ones((len(texts), WIDE), np.float32),
    )
    with pytest.raises(TierFailure, match="768-d rows, the request's are 384-d"):
        mixed.embedding(np.arange(2))
