"""The teacher's labels cached on disk (SQLite): keyed by (task, teacher, row id) together with a hash of the
row's text, committed after every batch, so an interrupted ``cascade label`` resumes where it stopped and an
edited row is labelled again."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import numpy as np

#: Decimals the cache keeps of a teacher probability. Labels fresh from the teacher are rounded alike
#: (:func:`soft_label`), so a build reads the same numbers whether its labels came from the teacher or the cache.
PROB_DECIMALS = 6


def soft_label(probs) -> list[float]:
    """One row's teacher probabilities as the cache keeps them."""
    return np.round(np.asarray(probs, dtype=np.float64), PROB_DECIMALS).tolist()


def _text_hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


class LabelStore:
    """Teacher labels on disk: ``(task, teacher, row_id) -> (text hash, label index, probabilities)``; the
    probabilities (JSON) are the teacher's soft labels, absent for a column teacher and for rows cached before
    they were kept."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS labels (task TEXT, teacher TEXT, row_id TEXT, text_hash TEXT, "
            "label INTEGER, probs TEXT, PRIMARY KEY (task, teacher, row_id))"
        )
        if "probs" not in {row[1] for row in self._db.execute("PRAGMA table_info(labels)")}:
            try:  # a cache from before soft labels; another process (a reader of the same cache) may add it first
                self._db.execute("ALTER TABLE labels ADD COLUMN probs TEXT")
            except sqlite3.OperationalError as exc:
                if "duplicate column" not in str(exc):
                    raise
        self._db.commit()

    def get(self, task: str, teacher: str, ids: Sequence[str], texts: Sequence[str]) -> dict[str, int]:
        """Cached labels of these rows whose text is unchanged."""
        want = dict(zip(ids, map(_text_hash, texts), strict=True))
        rows = self._db.execute(
            "SELECT row_id, text_hash, label FROM labels WHERE task = ? AND teacher = ?", (task, teacher)
        )
        return {row_id: label for row_id, digest, label in rows if want.get(row_id) == digest}

    def get_probs(self, task: str, teacher: str, ids: Sequence[str], texts: Sequence[str]) -> dict[str, list]:
        """Cached teacher probabilities of these rows whose text is unchanged (rows that have them)."""
        import json

        want = dict(zip(ids, map(_text_hash, texts), strict=True))
        rows = self._db.execute(
            "SELECT row_id, text_hash, probs FROM labels WHERE task = ? AND teacher = ? AND probs IS NOT NULL",
            (task, teacher),
        )
        return {row_id: json.loads(probs) for row_id, digest, probs in rows if want.get(row_id) == digest}

    def put(
        self,
        task: str,
        teacher: str,
        ids: Sequence[str],
        texts: Sequence[str],
        labels: Sequence[int],
        probs: np.ndarray | None = None,
    ) -> None:
        import json

        soft = [None] * len(ids) if probs is None else [json.dumps(soft_label(p)) for p in probs]
        self._db.executemany(
            "INSERT OR REPLACE INTO labels (task, teacher, row_id, text_hash, label, probs) VALUES (?, ?, ?, ?, ?, ?)",
            [(task, teacher, i, _text_hash(t), int(y), p) for i, t, y, p in zip(ids, texts, labels, soft, strict=True)],
        )
        self._db.commit()

    def count(self, task: str, teacher: str | None = None) -> int:
        """Labels cached for ``task`` (by ``teacher``, or by any)."""
        query, args = "SELECT COUNT(*) FROM labels WHERE task = ?", [task]
        if teacher is not None:
            query, args = query + " AND teacher = ?", [task, teacher]
        return self._db.execute(query, args).fetchone()[0]

    def dump(self, path: str | Path, task: str) -> int:
        """Write ``task``'s cached labels to ``path`` as gzipped JSON lines (sorted: the same cache, the same
        file); how many."""
        import gzip
        import json

        rows = self._db.execute(
            "SELECT teacher, row_id, text_hash, label, probs FROM labels WHERE task = ? ORDER BY teacher, row_id",
            (task,),
        ).fetchall()
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with gzip.GzipFile(path, "wb", mtime=0) as raw:
            for teacher, row_id, digest, label, probs in rows:
                record = {"teacher": teacher, "row_id": row_id, "text_hash": digest, "label": label, "probs": probs}
                raw.write((json.dumps(record) + "\n").encode())
        return len(rows)

    def load(self, path: str | Path, task: str) -> int:
        """Add the labels of a :meth:`dump` file to this cache (rows it already holds stay); how many it read."""
        import gzip
        import json

        with gzip.open(path, "rt", encoding="utf-8") as f:
            records = [json.loads(line) for line in f if line.strip()]
        self._db.executemany(
            "INSERT OR IGNORE INTO labels (task, teacher, row_id, text_hash, label, probs) VALUES (?, ?, ?, ?, ?, ?)",
            [(task, r["teacher"], r["row_id"], r["text_hash"], int(r["label"]), r["probs"]) for r in records],
        )
        self._db.commit()
        return len(records)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> LabelStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
