"""Every figure in README.md and docs/*.md that cites a results file matches that file (docs/benchmarks.md, "How a
figure cites its file").

A pointer is a Markdown link right after the figure: ``0.906 [↗](bench/results/demo-X.json "accuracy")``. The link
names the file (relative to the page); its title names the value: a key path (dots; list items by index) or a short
expression of paths and numbers, evaluated left to right (``stages.total_s / 60``, ``per_tier.logreg.share * 100``).
The figure is the last number before the link on its line, after any earlier pointer (or, for a link that opens
a line, at the end of the line before); it matches when the value
rounds to it at the figure's own decimals (thousands separators ignored). A value that is true or false is a
verdict: the word before the link says it (``passed``, ``failed``...). A string matches when the text before the
link is the whole value or a prefix of at least 7 characters (a commit)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
POINTER = re.compile(r'\[↗\]\(([^)\s]+\.json) "([^"]+)"\)')
#: A sign counts only where no word character precedes it: "499-1,473" is a range, not -1,473.
NUMBER = re.compile(r"(?:(?<![\w.])[-+])?\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?")
PASS_WORDS = {"passed", "passes", "pass", "held", "holds", "kept", "keeps", "within", "yes", "met", "true"}
FAIL_WORDS = {"failed", "fails", "fail", "breached", "missed", "exceeded", "no", "false", "over"}
OPERATORS = {"+": float.__add__, "-": float.__sub__, "*": float.__mul__, "/": float.__truediv__}


def lookup(data, path: str):
    """The value at ``path`` (``a.b.0.c``) in the loaded JSON."""
    value = data
    for part in path.split("."):
        value = value[int(part)] if isinstance(value, list) else value[part]
    return value


def evaluate(data, expression: str):
    """A key path, or paths and numbers joined by + - * / (left to right)."""
    tokens = expression.split()
    value = lookup(data, tokens[0])
    if len(tokens) == 1:
        return value
    value = float(value)
    for op, operand in zip(tokens[1::2], tokens[2::2], strict=True):
        right = float(operand) if NUMBER.fullmatch(operand) else float(lookup(data, operand))
        value = OPERATORS[op](value, right)
    return value


def check_figure(before: str, value) -> str | None:
    """Why the figure printed just before a pointer does not match ``value`` (None: it matches)."""
    text = before.rstrip(" *_`(:").rstrip()
    if isinstance(value, bool):
        words = re.findall(r"[A-Za-z]+", text)
        word = words[-1].lower() if words else ""
        if word not in PASS_WORDS | FAIL_WORDS:
            return f"a verdict needs a word before its pointer ({sorted(PASS_WORDS)} or {sorted(FAIL_WORDS)})"
        return None if (word in PASS_WORDS) == value else f"says {word!r}, the file says {value}"
    if isinstance(value, str):
        printed = text.split()[-1].strip("`*") if text.split() else ""
        ok = printed == value or (len(printed) >= 7 and value.startswith(printed))
        return None if ok else f"prints {printed!r}, the file says {value!r}"
    numbers = NUMBER.findall(text)
    if not numbers:
        return "no number before the pointer"
    printed = numbers[-1]
    figure = float(printed.replace(",", ""))
    mantissa, _, exponent = printed.lower().partition("e")
    decimals = (len(mantissa.split(".")[1]) if "." in mantissa else 0) - int(exponent or 0)  # 2.4e-7: 8
    if value is None or not math.isfinite(float(value)):
        return f"prints {printed}, the file says {value}"
    if abs(float(value) - figure) > 0.5 * 10.0**-decimals * (1 + 1e-9):
        return f"prints {printed}, the file says {float(value):.6g}"
    return None


def check_page(page: Path) -> tuple[int, list[str]]:
    """How many pointers ``page`` holds, and what is wrong with them."""
    count, problems, carry = 0, [], ""
    for number, line in enumerate(page.read_text().splitlines(), 1):
        start = 0
        for match in POINTER.finditer(line):
            count += 1
            where = f"{page.name}:{number}: {match.group(1)} {match.group(2)!r}"
            before, start = line[start : match.start()], match.end()
            if not re.search(r"\w", before):  # a pointer that opens its line: the figure ends the line before
                before = carry + before
            carry = ""
            target = (page.parent / match.group(1)).resolve()
            if not target.is_file():
                problems.append(f"{where}: no such file")
                continue
            try:
                value = evaluate(json.loads(target.read_text()), match.group(2))
            except (KeyError, IndexError, ValueError, TypeError) as exc:
                problems.append(f"{where}: no such value ({exc!r})")
                continue
            if (why := check_figure(before, value)) is not None:
                problems.append(f"{where}: {why}")
        carry = line[start:]
    return count, problems


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_cited_figure_matches_its_results_file(page):
    _, problems = check_page(page)
    assert not problems, "\n".join(problems)


def test_the_readme_cites_its_figures():
    count, _ = check_page(ROOT / "README.md")
    assert count >= 10


def test_an_edited_value_is_caught(tmp_path):
    """The test of the test: a page and its file agree; edit the file's value (or the verdict) and it does not."""
    (tmp_path / "r.json").write_text(json.dumps({"a": {"b": 0.9059}, "s": 1008.9, "passed": True, "c": "37ea4b7f00"}))
    page = tmp_path / "p.md"
    page.write_text(
        'accuracy **0.906** [↗](r.json "a.b"), 90.6% [↗](r.json "a.b * 100") in 16.8 min [↗](r.json "s / 60"),\n'
        'the run passed [↗](r.json "passed") at `37ea4b7` [↗](r.json "c"); 1,009 s [↗](r.json "s")\n'
        '999-1,009 s [↗](r.json "s"), 1.0e3 s [↗](r.json "s"), 2.4e-7 [↗](r.json "d"), wrapped at 1,009 s\n'
        '  [↗](r.json "s")\n'
    )
    (tmp_path / "r.json").write_text(json.dumps({"a": {"b": 0.9059}, "s": 1008.9, "passed": True, "c": "37ea4b7f00",
                                                 "d": 2.38e-7}))  # fmt: skip
    assert check_page(page) == (10, [])
    (tmp_path / "r.json").write_text(json.dumps({"a": {"b": 0.9049}, "s": 1008.9, "passed": False, "c": "37ea4b7f00",
                                                 "d": 2.46e-7}))  # fmt: skip
    count, problems = check_page(page)
    assert count == 10 and len(problems) == 4, problems  # 0.906, 90.6%, "passed", 2.4e-7
    page.write_text('1,010 s [↗](r.json "s") [↗](r.json "s") [↗](gone.json "s") [↗](r.json "a.x")\n')
    problems = check_page(page)[1]
    assert [p.split(": ", 2)[2] for p in problems] == [
        "prints 1,010, the file says 1008.9",
        "no number before the pointer",
        "no such file",
        "no such value (KeyError('x'))",
    ]
