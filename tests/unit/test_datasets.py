"""The shipped dataset splits (Parquet, data/README.md) and the dataset files of one's own (CSV, gzipped CSV)."""

import gzip
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cascade.datasets import dataset_file, read_rows
from cascade.errors import ConfigError
from cascade.paths import DEFAULT_DATA_DIR
from cascade.tasks import load_split, load_task

#: Rows per label of each shipped split, as data/sst2/README.md and data/ag_news/README.md give them.
SHIPPED = {
    ("sst2", "train"): [29_780, 37_569],
    ("sst2", "validation"): [428, 444],
    ("sst2", "test"): [912, 909],
    ("ag_news", "train"): [2_198, 2_219, 2_199, 2_175],
    ("ag_news", "test"): [1_900, 1_900, 1_900, 1_900],
}


@pytest.mark.parametrize("task_name, split", list(SHIPPED))
def test_the_shipped_splits_are_parquet_with_the_documented_rows(task_name, split):
    task = load_task(task_name)
    path = task.dataset.path(split)
    assert path == DEFAULT_DATA_DIR / task_name / f"{split}.parquet"
    assert pq.read_schema(path).remove_metadata() == pa.schema([("text", pa.string()), ("label", pa.int64())])
    assert pq.ParquetFile(path).metadata.row_group(0).column(0).compression == "ZSTD"
    texts, labels = load_split(task, split)
    per_label = SHIPPED[task_name, split]
    assert len(texts) == len(labels) == sum(per_label)
    assert Counter(labels) == dict(enumerate(per_label))  # every label in 0..n_labels-1, counted as documented
    assert all(isinstance(t, str) and t.strip() for t in texts)
    assert load_split(task, split, limit=7) == (texts[:7], labels[:7])


def test_only_parquet_ships():
    assert sorted(
        p.relative_to(DEFAULT_DATA_DIR).as_posix() for p in DEFAULT_DATA_DIR.glob("*/*") if p.suffix != ".md"
    ) == [
        "ag_news/test.parquet",
        "ag_news/train.parquet",
        "clinc150/test.parquet",
        "clinc150/train.parquet",
        "clinc150/validation.parquet",
        "sst2/test.parquet",
        "sst2/train.parquet",
        "sst2/validation.parquet",
    ]


TASK = """
name = "mine"
labels = ["neg", "pos"]
tiers = ["logreg"]
[dataset]
dir = "reviews"
train = "{train}"
validation = "validation.csv"
text_column = "review"
label_column = "stars"
label_encoding = "{encoding}"
"""
CSV = b'review,stars,other\n"two\nlines, a comma",pos,1\n10/10,neg,2\n,pos,3\n'


def make_task(tmp_path, train="train.csv", encoding="name"):
    (tmp_path / "reviews").mkdir(exist_ok=True)
    path = tmp_path / "mine.toml"
    path.write_text(TASK.format(train=train, encoding=encoding))
    return load_task(path)


def test_a_task_of_ones_own_still_reads_csv(tmp_path):
    task = make_task(tmp_path)
    (tmp_path / "reviews" / "train.csv").write_bytes(CSV)
    expected = (["two\nlines, a comma", "10/10", ""], [1, 0, 1])  # a text stays text, an empty one is ""
    assert load_split(task, "train", tmp_path) == expected
    assert load_split(task, "train", tmp_path, limit=2) == (expected[0][:2], expected[1][:2])
    # Gzipped: the named train.csv is absent, train.csv.gz is read.
    (tmp_path / "reviews" / "train.csv").unlink()
    (tmp_path / "reviews" / "train.csv.gz").write_bytes(gzip.compress(CSV))
    assert load_split(task, "train", tmp_path) == expected
    # A task naming Parquet reads a data folder that holds the split as CSV, and the other way round.
    assert load_split(make_task(tmp_path, "train.parquet"), "train", tmp_path) == expected
    (tmp_path / "reviews" / "train.csv.gz").unlink()
    pq.write_table(
        pa.table({"review": expected[0], "stars": ["pos", "neg", "pos"]}), tmp_path / "reviews/train.parquet"
    )
    assert load_split(make_task(tmp_path, "train.csv"), "train", tmp_path) == expected
    # Labels given as indices, in a CSV whose label column is numbers.
    (tmp_path / "reviews" / "validation.csv").write_text("review,stars\ngood,1\nbad,0\n")
    assert load_split(make_task(tmp_path, encoding="index"), "validation", tmp_path) == (["good", "bad"], [1, 0])


def test_dataset_file_finds_the_split_in_another_format(tmp_path):
    assert dataset_file(tmp_path / "train.csv") == tmp_path / "train.csv"  # nothing there: the name as given
    (tmp_path / "train.csv.gz").write_bytes(b"")
    assert dataset_file(tmp_path / "train.csv") == tmp_path / "train.csv.gz"
    assert dataset_file(tmp_path / "train.parquet") == tmp_path / "train.csv.gz"
    (tmp_path / "train.parquet").write_bytes(b"")
    assert dataset_file(tmp_path / "train.csv") == tmp_path / "train.parquet"  # Parquet first
    (tmp_path / "train.csv").write_bytes(b"")
    assert dataset_file(tmp_path / "train.csv") == tmp_path / "train.csv"  # the named file when it exists
    assert dataset_file(tmp_path / "train.tsv") == tmp_path / "train.tsv"


def test_bad_dataset_files_are_config_errors(tmp_path):
    task = make_task(tmp_path, encoding="index")
    folder = tmp_path / "reviews"
    with pytest.raises(ConfigError, match="train.csv not found"):
        load_split(task, "train", tmp_path)
    (folder / "train.csv").write_text("review,score\na,1\n")
    with pytest.raises(ConfigError, match="no column 'stars'"):
        load_split(task, "train", tmp_path)
    (folder / "train.csv").write_text("review,stars\na,1\nb,\n")
    with pytest.raises(ConfigError, match="1 rows have no 'stars'"):
        load_split(task, "train", tmp_path)
    (folder / "train.csv").write_text("review,stars\na,1\nb,2\n")
    with pytest.raises(ConfigError, match="out of range 0..1"):
        load_split(task, "train", tmp_path)
    (folder / "train.csv").write_text("review,stars\na,pos\n")
    with pytest.raises(ConfigError, match="no index"):
        load_split(task, "train", tmp_path)
    (folder / "train.csv").write_text("review,stars\na,good\n")
    with pytest.raises(ConfigError, match=r"labels \['good'\] not in task labels"):
        load_split(make_task(tmp_path), "train", tmp_path)
    assert read_rows(folder / "train.csv", "review", "stars") == (["a"], ["good"])
    assert read_rows(folder / "train.csv", "review", "stars", limit=0) == ([], [])
