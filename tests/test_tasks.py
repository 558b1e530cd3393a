"""Task definitions (TOML) and dataset loading."""

import pytest

from cascade.errors import ConfigError
from cascade.tasks import load_split, load_task


def write(tmp_path, body):
    path = tmp_path / "t.toml"
    path.write_text(body)
    return path


def test_shipped_tasks_load():
    sst2 = load_task("sst2")
    assert sst2.labels == ("negative", "positive") and sst2.tiers[0] == 0
    assert load_task("ag_news").n_labels == 4


def test_dataset_rows_and_labels(tmp_path):
    texts, labels = load_split(load_task("sst2"), "validation", limit=20)
    assert len(texts) == len(labels) == 20 and set(labels) <= {0, 1}
    with pytest.raises(ConfigError, match="not found"):
        load_split(load_task("sst2"), "validation", root=tmp_path)


@pytest.mark.parametrize(
    "body, message",
    [
        ('name = "Bad Name"\nlabels = ["a", "b"]\n', "must match"),
        ('name = "t"\nlabels = ["a"]\n', "at least two"),
        ('name = "t"\nlabels = ["a", "b"]\ntiers = ["logreg", "magic"]\n', "unknown tier"),
        ('name = "t"\nlabels = ["a", "b"]\ntiers = ["logreg", "llm_small"]\n', "need an [llm] section"),
        (
            'name = "t"\nlabels = ["a", "b"]\ntiers = ["logreg", "llm_large"]\n'
            '[llm]\ntemplate = "Q: {text}\\nA:"\nverbalizations = ["x", "y", "z"]\n',
            "3 prompt verbalizations for 2 labels",
        ),
        ('name = "t"\nlabels = [\n', "t.toml"),
    ],
)
def test_bad_task_files_fail_clearly(tmp_path, body, message):
    with pytest.raises(ConfigError) as info:
        load_task(write(tmp_path, body))
    assert message in str(info.value)


def test_unknown_task_names_the_shipped_ones():
    with pytest.raises(ConfigError, match="tasks shipped: ag_news, sst2"):
        load_task("nope")
