"""``cascade task create`` without examples, on a terminal: the teacher's first labels shown, confirmed or corrected
by the user; the rows as confirmed become the examples the teacher is checked on."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from cascade.errors import InvalidInput

#: Rows the user is shown.
CONFIRM_ROWS = 20
SHOWN_CHARS = 160


def parse_corrections(answer: str, n_rows: int, labels: Sequence[str]) -> dict[int, int]:
    """``"3=spam, 7=1"`` -> ``{2: 1, 6: 1}``: rows numbered from 1, each given a label name or a label number (from
    1, as listed). An empty answer corrects nothing."""
    out = {}
    for item in (x.strip() for x in answer.split(",")):
        if not item:
            continue
        row, sep, value = item.partition("=")
        if not sep or not row.strip().isdigit() or not 1 <= int(row) <= n_rows:
            raise InvalidInput(f"{item!r}: write ROW=LABEL, ROW a row number 1-{n_rows}")
        value = value.strip()
        if value in labels:
            out[int(row) - 1] = list(labels).index(value)
        elif value.isdigit() and 1 <= int(value) <= len(labels):
            out[int(row) - 1] = int(value) - 1
        else:
            raise InvalidInput(f"{item!r}: {value!r} is neither a label nor a label number 1-{len(labels)}")
    return out


def confirm_rows(
    texts: Sequence[str],
    predicted: Sequence[int],
    labels: Sequence[str],
    ask: Callable[[str], str] = input,
    say: Callable[[str], None] = print,
) -> list[int]:
    """Show the rows with the teacher's labels and ask for corrections until the answer parses: the labels as the user
    confirmed them."""
    say(f"The teacher's labels for the first {len(texts)} rows of the sample. Labels: "
        + ", ".join(f"{i + 1}={label}" for i, label in enumerate(labels)))  # fmt: skip
    for i, (text, label) in enumerate(zip(texts, predicted, strict=True)):
        shown = " ".join(text.split())
        shown = shown if len(shown) <= SHOWN_CHARS else shown[: SHOWN_CHARS - 3] + "..."
        say(f"{i + 1:>3}. [{labels[label]}] {shown}")
    while True:
        answer = ask("Press Enter if these are right, or correct them (e.g. 3=spam, 7=2): ")
        try:
            corrections = parse_corrections(answer, len(texts), labels)
        except InvalidInput as exc:
            say(f"not understood: {exc}")
            continue
        confirmed = list(predicted)
        for row, label in corrections.items():
            confirmed[row] = label
        say(f"{len(corrections)} label(s) corrected; the teacher is checked on these {len(texts)} rows")
        return confirmed
