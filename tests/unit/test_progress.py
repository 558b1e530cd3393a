"""cascade.progress: a few plain lines without a TTY, tqdm's bar on one, nothing when disabled."""

from __future__ import annotations

import io

from cascade.progress import PlainProgress, progress


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_no_tty_writes_a_few_lines():
    stream = io.StringIO()
    bar = progress(1000, "filter demo", "rows", stream=stream, unit_scale=True, smoothing=0.1)
    assert isinstance(bar, PlainProgress)
    for _ in range(1000):
        bar.update(1)
    bar.close()
    bar.close()  # once only
    lines = _lines(stream)
    assert 3 <= len(lines) <= 12
    assert lines[0].startswith("filter demo: start, 1,000 rows")
    assert "30%" in lines[3]
    assert lines[-1].startswith("filter demo: done, 1,000/1,000 rows (100%) in ")
    assert lines[-1].endswith("rows/s)")
    assert bar.n == 1000 and bar.total == 1000


def test_resumed_job_and_postfix_as_context_manager():
    stream = io.StringIO()
    with progress(10, "encoder fine-tune", "batch", initial=4, stream=stream) as bar:
        bar.set_postfix(epoch=1, loss="0.5000")
        for _ in range(6):
            bar.update(1)
    lines = _lines(stream)
    assert lines[0] == "encoder fine-tune: start, 10 batch, 4/10 batch (40%) done"
    assert len(lines) == 1 + 5 + 1  # 50% .. 90%, then the end
    assert lines[-1].startswith("encoder fine-tune: done, 10/10 batch (100%)")
    assert lines[-1].endswith("epoch=1, loss=0.5000")


def test_stopped_early_says_so():
    stream = io.StringIO()
    bar = progress(100, "labelling (teacher)", "row", stream=stream)
    bar.update(30)
    bar.close()
    assert _lines(stream)[-1].startswith("labelling (teacher): stopped at 30/100 row (30%)")


def test_disabled_writes_nothing():
    stream = io.StringIO()
    with progress(1000, "embed", "rows", disable=True, stream=stream) as bar:
        for _ in range(1000):
            bar.update(1)
    assert bar.n == 1000
    assert stream.getvalue() == ""
    tty = _Tty()
    with progress(10, "embed", "rows", disable=True, stream=tty) as bar:
        bar.update(10)
    assert tty.getvalue() == ""


def test_unknown_total_writes_every_few_seconds():
    now = [0.0]
    stream = io.StringIO()
    bar = PlainProgress(None, "embed", "rows", stream=stream, every_s=30.0, clock=lambda: now[0])
    for _ in range(1000):
        now[0] += 0.5  # 500 s in all: a line every 30 s
        bar.update(1)
    bar.close()
    lines = _lines(stream)
    assert lines[0] == "embed: start, rows not counted ahead"
    assert len(lines) == 1 + 16 + 1
    assert lines[-1] == "embed: done, 1,000 rows in 500.0 s (2.0 rows/s)"


def test_empty_total():
    stream = io.StringIO()
    with progress(0, "embed", "rows", stream=stream):
        pass
    assert _lines(stream)[-1].startswith("embed: done, 0/0 rows in ")


def test_tty_gets_tqdm():
    from tqdm import tqdm

    tty = _Tty()
    with progress(5, "embed", "rows", stream=tty, unit_scale=True) as bar:
        assert isinstance(bar, tqdm)
        bar.update(5)
    assert "embed" in tty.getvalue()
