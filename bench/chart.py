"""The run as a picture: one panel per measure, chatkeep's bar beside its baseline's.

Under each panel, the ratio and whether it meets its target, in green or red; a measure that
could not run shows why. The figure is drawn on an Agg canvas directly: no pyplot, no display.
"""

import math
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from bench.report import Row, cpu_text

COLUMNS = 4
PASS, FAIL, NEUTRAL = "#2e7d32", "#c62828", "#555555"
CHATKEEP, BASELINE = "#1565c0", "#9e9e9e"


def draw(path: Path, rows: list[Row], *, title: str) -> None:
    count = max(1, len(rows))
    columns = min(COLUMNS, count)
    lines = math.ceil(count / columns)
    figure = Figure(figsize=(4.2 * columns, 3.6 * lines))
    FigureCanvasAgg(figure)
    axes = figure.subplots(lines, columns, squeeze=False)
    for index, ax in enumerate(axes.flat):
        if index < len(rows):
            _panel(ax, rows[index])
        else:
            ax.axis("off")
    figure.suptitle(title, fontsize=11)
    figure.tight_layout(rect=(0, 0, 1, 0.95))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def _panel(ax: Any, row: Row) -> None:
    ax.set_title(_wrap(row.measure), fontsize=9)
    bars = [(label, value, color) for label, value, color in _bars(row) if value is not None]
    if not bars:
        ax.axis("off")
        ax.text(0.5, 0.5, row.note or "n/a", ha="center", va="center", fontsize=10, color=NEUTRAL, wrap=True)
        return
    names, values, colors = zip(*bars, strict=True)
    drawn = ax.bar(names, values, color=colors, width=0.6)
    inside = row.target is not None and row.target.on == "value"  # keep clear of the target line
    numbers = [_short(value) for value in values]
    ax.bar_label(
        drawn, labels=numbers, fontsize=8, label_type="center" if inside else "edge", color="w" if inside else "k"
    )
    ax.set_ylabel(row.unit, fontsize=8)
    ax.tick_params(labelsize=8)
    ax.margins(y=0.15)
    if row.target is not None and row.target.on == "value":
        ax.axhline(row.target.bound, color=NEUTRAL, linestyle="--", linewidth=1)
        ax.set_ylim(0, max(row.target.bound, *values) * 1.3)
        ax.text(
            0.02,
            row.target.bound,
            f" target {row.target.bound:g}",
            va="bottom",
            fontsize=8,
            color=NEUTRAL,
            transform=ax.get_yaxis_transform(),
        )
    cpu = f"\nCPU µs a turn: {cpu_text(row)}" if row.cpu_us else ""
    ax.set_xlabel(_verdict(row) + cpu, fontsize=9, color=_color(row), fontweight="bold")


def _bars(row: Row) -> list[tuple[str, float | None, str]]:
    bars: list[tuple[str, float | None, str]] = [(row.chatkeep_name, row.chatkeep, CHATKEEP)]
    if row.baseline is not None:
        bars.append((row.baseline_name, row.baseline, BASELINE))
    return bars


def _verdict(row: Row) -> str:
    if row.chatkeep is None:
        return row.note or "n/a"
    ratio = f"{row.ratio:.2f}x" if row.ratio is not None else ""
    target = f"target {row.target.describe(row.unit)}" if row.target else "no target"
    result = {True: "pass", False: "FAIL", None: ""}[row.passed]
    return "  ".join(part for part in (ratio, target, result) if part)


def _color(row: Row) -> str:
    return {True: PASS, False: FAIL, None: NEUTRAL}[row.passed]


def _short(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"


def _wrap(text: str, width: int = 42) -> str:
    words, lines, line = text.split(), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return "\n".join([*lines, line])
