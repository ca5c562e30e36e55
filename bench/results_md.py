"""Rows of the benchmark, the console table and bench/RESULTS.md.

A `Row` compares one figure of transferlab with one peer (Keras/TensorFlow, or the model a data
pipeline feeds) and holds its target, so that every ratio can be read against its target in one
place. Nothing here measures anything: it only formats, which keeps it testable without TensorFlow.
"""

from __future__ import annotations

import dataclasses
import math
import os
import statistics
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass
class Row:
    """One compared figure.

    Attributes:
        section: table the row belongs to (e.g. "Training throughput").
        name: what was measured (model, stage).
        setting: the settings that matter (input size, batch).
        unit: unit of `ours` and `theirs`, e.g. "img/s" or "s".
        ours: transferlab's figure, None when not run.
        theirs: the peer's figure, None when not run.
        higher_is_better: True for throughputs (ratio = ours / theirs), False for times
            (ratio = theirs / ours); either way a ratio above 1 means transferlab is ahead.
        target: the ratio transferlab must reach, None for figures reported without a target.
        ours_peak: transferlab's figure as a fraction of the machine's peak, if known.
        theirs_peak: the peer's figure as a fraction of the machine's peak, if known.
        note: why a figure is missing, or how it was obtained.
        repeat_ratios: the ratio of each repeat when the row combines several (`median_rows`):
            then `ratio` is their median, not ours / theirs of the median figures.
    """

    section: str
    name: str
    setting: str
    unit: str
    ours: float | None
    theirs: float | None
    higher_is_better: bool = True
    target: float | None = None
    ours_peak: float | None = None
    theirs_peak: float | None = None
    note: str = ""
    repeat_ratios: tuple[float, ...] = ()

    @property
    def ratio(self) -> float | None:
        """How many times transferlab is ahead of the peer (None when either side is missing)."""
        if self.repeat_ratios:
            return statistics.median(self.repeat_ratios)
        if self.ours is None or self.theirs is None or self.ours <= 0 or self.theirs <= 0:
            return None
        return self.ours / self.theirs if self.higher_is_better else self.theirs / self.ours

    @property
    def status(self) -> str:
        """"met", "MISSED", "not run" or "" (no target)."""
        if self.target is None:
            return ""
        if self.ratio is None:
            return "not run"
        return "met" if self.ratio >= self.target else "MISSED"

    def to_dict(self) -> dict:
        """The row as plain data, with its derived ratio and status (for the JSON dump)."""
        return {**asdict(self), "ratio": self.ratio, "status": self.status}


def _median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def median_rows(repeats: Sequence[Sequence[Row]]) -> list[Row]:
    """One row per figure from several repeats of the same rows (same order in every repeat).

    Each side is the median of its repeats, and the ratio is the median of the repeats' own
    ratios (each repeat compares figures measured minutes apart, not a figure of repeat 1 with
    one of repeat 3); the note gives their range. Setting and note (which may carry per-repeat
    details such as a setup time) come from the repeat whose ratio is the median. A single
    repeat is returned as it is.
    """
    if len(repeats) == 1:
        return list(repeats[0])
    combined = []
    for versions in zip(*repeats, strict=True):
        rated = sorted((r for r in versions if r.ratio is not None), key=lambda r: r.ratio)
        middle = rated[(len(rated) - 1) // 2] if rated else versions[0]
        ratios = tuple(r.ratio for r in versions if r.ratio is not None)
        note = middle.note
        if len(ratios) > 1:
            note = "; ".join(n for n in (note, f"ratio: median of {len(ratios)} repeats, range "
                                               f"x{format_number(min(ratios))}-x{format_number(max(ratios))}") if n)
        combined.append(dataclasses.replace(
            middle, ours=_median(r.ours for r in versions), theirs=_median(r.theirs for r in versions),
            ours_peak=_median(r.ours_peak for r in versions),
            theirs_peak=_median(r.theirs_peak for r in versions), note=note, repeat_ratios=ratios))
    return combined


def format_number(value: float | None, digits: int = 3) -> str:
    """Format with `digits` significant digits, thousands separators, no exponent below 1e9."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if value == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(value)))
    decimals = max(digits - 1 - magnitude, 0)
    return f"{value:,.{decimals}f}"


def format_fraction(value: float | None) -> str:
    """A fraction as a percentage with one decimal ('-' when unknown)."""
    return "-" if value is None else f"{100 * value:.1f}%"


def format_ratio(row: Row) -> str:
    """The ratio as 'x1.23' ('-' when a side is missing)."""
    return "-" if row.ratio is None else f"x{format_number(row.ratio)}"


def format_target(row: Row) -> str:
    """The target as '>= x1' ('' when there is none)."""
    return "" if row.target is None else f">= x{format_number(row.target)}"


COLUMNS = ("what", "setting", "transferlab", "peer", "unit", "ratio", "target", "status",
           "% of peak (ours / peer)", "note")


def _cells(row: Row) -> list[str]:
    peak = ""
    if row.ours_peak is not None or row.theirs_peak is not None:
        peak = f"{format_fraction(row.ours_peak)} / {format_fraction(row.theirs_peak)}"
    return [
        row.name,
        row.setting,
        format_number(row.ours),
        format_number(row.theirs),
        row.unit,
        format_ratio(row),
        format_target(row),
        row.status,
        peak,
        row.note,
    ]


def _sections(rows: Iterable[Row]) -> dict[str, list[Row]]:
    grouped: dict[str, list[Row]] = {}
    for row in rows:
        grouped.setdefault(row.section, []).append(row)
    return grouped


def markdown_table(rows: Sequence[Row], peer_label: str = "peer") -> str:
    """A GitHub-flavoured markdown table of `rows` (pipes in cells escaped)."""
    header = [peer_label if c == "peer" else c for c in COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [c.replace("|", "\\|") for c in _cells(row)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def console_table(rows: Sequence[Row]) -> str:
    """A plain fixed-width table of all rows, grouped by section, for the terminal."""
    out: list[str] = []
    columns = COLUMNS[:-1]  # notes go on their own line: they are long
    for section, section_rows in _sections(rows).items():
        body = [_cells(r) for r in section_rows]
        widths = [max(len(c), *(len(b[i]) for b in body)) for i, c in enumerate(columns)]
        out.append(f"== {section}")
        out.append("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
        for row, cells in zip(section_rows, body, strict=True):
            out.append("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=False)))
            if row.note:
                out.append(f"    note: {row.note}")
        out.append("")
    return "\n".join(out)


def closing_note(rows: Sequence[Row]) -> list[str]:
    """One line per row that has a target: its ratio against the target and whether it is met."""
    lines = []
    for row in rows:
        if row.target is None:
            continue
        ratio = "not run" if row.ratio is None else f"x{format_number(row.ratio)}"
        lines.append(
            f"- {row.section} / {row.name} ({row.setting}): {ratio} against target "
            f"{format_target(row)}: **{row.status}**" + (f" ({row.note})" if row.note else "")
        )
    return lines


def results_markdown(
    rows: Sequence[Row],
    *,
    command: str,
    facts: dict[str, object],
    peer_labels: dict[str, str] | None = None,
    intro: Sequence[str] = (),
    remarks: Sequence[str] = (),
) -> str:
    """The whole of bench/RESULTS.md.

    Args:
        rows: every measured row, in order; sections appear in first-seen order.
        command: the command line that produced them (so the file says how to reproduce it).
        facts: machine facts and settings, printed as a list.
        peer_labels: column title of the peer per section (default "Keras/TF").
        intro: paragraphs printed under the title.
        remarks: lines appended to the closing note (what remains, and why).
    """
    peer_labels = peer_labels or {}
    parts = ["# Benchmark results", "", "Produced by:", "", "```", command, "```", ""]
    parts += [*intro, ""] if intro else []
    parts += ["## Machine", ""]
    parts += [f"- {key}: {value}" for key, value in facts.items()]
    parts.append("")
    for section, section_rows in _sections(rows).items():
        parts += [f"## {section}", "", markdown_table(section_rows, peer_labels.get(section, "Keras/TF")), ""]
    parts += ["## Closing note: every ratio against its target", ""]
    parts += closing_note(rows) or ["- (no row has a target)"]
    parts += ["", *remarks] if remarks else []
    return "\n".join(parts).rstrip() + "\n"


def write_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write `text` to `path` through a temporary file and `os.replace`: never half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a report is for everyone to read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
