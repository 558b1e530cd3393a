"""A repository keeps one embedder: the real small embedder exported into it, another refused."""

import pytest

from cascade import contract, embedders
from cascade.errors import ConfigError
from cascade.repository import configgen


def test_a_repository_keeps_one_embedder(tmp_path):
    from cascade_export.build.repo_embedder import ensure_embedder, repository_embedder

    repo = tmp_path / "repo"
    folder = ensure_embedder(repo, embedders.MINILM)
    assert repository_embedder(repo).name == embedders.MINILM
    config = configgen.parse_config((repo / contract.EMBEDDER_MODEL / "config.pbtxt").read_text())
    assert config.parameters[contract.CFG_EMBEDDER].string_value == embedders.MINILM
    assert list(config.output[0].dims) == [384]
    assert ensure_embedder(repo) == folder and ensure_embedder(repo, embedders.MINILM) == folder
    with pytest.raises(ConfigError, match="built with embedder 'minilm-l6'.*every task in a repository shares it"):
        ensure_embedder(repo, embedders.MPNET)
