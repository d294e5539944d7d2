"""Charts for the console as server-rendered SVG: no chart library, no script, nothing to download.

A chart is a `<figure>`: caption and legend, the largest value at the top left, an SVG of bars or
lines stretched to the figure's width (strokes keep their width), and the first and last bucket's
time below. Every bucket carries a `<title>` (hover shows its value), and the SVG's `data-total`
holds the sum of its first series (tests read it). Colours come from CSS classes (`s0`, `s1`).
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

WIDTH = 600
HEIGHT = 140


@dataclass(frozen=True)
class SeriesData:
    """One series: its name in the legend and one value per bucket (None: no data there)."""

    name: str
    values: Sequence[float | None]


def _finite(values: Iterable[float | None]) -> list[float]:
    """The values a chart can scale to: present and finite (a stored cost of `inf`, or the `nan` of
    a sum holding it, is drawn off the scale instead of breaking the page)."""
    return [v for v in values if v is not None and math.isfinite(v)]


def _height(value: float, top: float) -> float:
    """How high `value` stands on a chart scaled to `top`: a non-finite value at the top (inf) or
    the bottom (nan, -inf)."""
    if not math.isfinite(value):
        return HEIGHT if value > 0 else 0.0
    return HEIGHT * value / top


def _nice_max(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x a power of ten that is at least `value` (1 for nothing, and
    for a value that is not finite)."""
    if not 0 < value < math.inf:  # also False for nan
        return 1.0
    magnitude = 10.0 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * magnitude * (1 + 1e-9):
            return step * magnitude
    return value  # pragma: no cover


def _frame(title: str, svg: str, legend: list[str], top: str, starts: Sequence[datetime],
           time_format: str, label: str) -> str:
    keys = "".join(f'<li class="s{i}">{html.escape(name)}</li>' for i, name in enumerate(legend))
    first = starts[0].strftime(time_format) if starts else ""
    last = starts[-1].strftime(time_format) if starts else ""
    return (
        f'<figure class="chart" aria-label="{html.escape(label)}"><figcaption><span>{html.escape(title)}</span>'
        f'<ul class="legend">{keys}</ul></figcaption>'
        f'<div class="plot"><span class="ymax">{html.escape(top)}</span>{svg}</div>'
        f'<div class="xaxis"><span>{first}</span><span>{last} UTC</span></div></figure>'
    )


def bar_chart(title: str, starts: Sequence[datetime], series: SeriesData, fmt: Callable[[float], str],
              time_format: str = "%H:%M") -> str:
    """One series as bars."""
    values = [v or 0.0 for v in series.values]
    top = _nice_max(max(_finite(values), default=0.0))
    width = WIDTH / max(1, len(values))
    bars = []
    for i, (start, value) in enumerate(zip(starts, values, strict=True)):
        h = _height(value, top)
        tip = f"{start.strftime(time_format)} UTC: {fmt(value)} {series.name}"
        bars.append(
            f'<rect class="s0" x="{i * width + width * 0.1:.2f}" y="{HEIGHT - h:.2f}" width="{width * 0.8:.2f}" '
            f'height="{max(h, 0.0):.2f}"><title>{html.escape(tip)}</title></rect>'
        )
    total = sum(values)
    svg = (
        f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" preserveAspectRatio="none" role="img" data-total="{total:g}" '
        f'data-series="{html.escape(series.name)}">{_grid()}{"".join(bars)}</svg>'
    )
    return _frame(title, svg, [series.name], fmt(top), starts, time_format, f"{title}: {fmt(total)} in all")


def line_chart(title: str, starts: Sequence[datetime], series: Sequence[SeriesData], fmt: Callable[[float], str],
               time_format: str = "%H:%M") -> str:
    """Up to four series as lines (a gap where a value is None); hovering a bucket shows its values."""
    top = _nice_max(max(_finite(v for s in series for v in s.values), default=0.0))
    step = WIDTH / max(1, len(starts))
    lines: list[str] = []
    for index, item in enumerate(series):
        runs: list[list[str]] = [[]]
        for i, value in enumerate(item.values):
            if value is None:
                runs.append([])
                continue
            runs[-1].append(f"{step * i + step / 2:.2f},{HEIGHT - _height(value, top):.2f}")
        for run in runs:
            if len(run) == 1:  # a lone point: a short flat segment, so it shows
                x, y = run[0].split(",")
                run = [f"{float(x) - step / 3:.2f},{y}", f"{float(x) + step / 3:.2f},{y}"]
            if run:
                lines.append(f'<polyline class="s{index}" points="{" ".join(run)}" vector-effect="non-scaling-stroke"/>')
    hits = []
    for i, start in enumerate(starts):
        shown = ", ".join(
            f"{s.name} {fmt(s.values[i])}" for s in series if s.values[i] is not None  # type: ignore[arg-type]
        ) or "no requests"
        tip = f"{start.strftime(time_format)} UTC: {shown}"
        hits.append(f'<rect class="hit" x="{step * i:.2f}" y="0" width="{step:.2f}" height="{HEIGHT}">'
                    f"<title>{html.escape(tip)}</title></rect>")
    first = [v for v in (series[0].values if series else []) if v is not None]
    svg = (
        f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" preserveAspectRatio="none" role="img" data-total="{sum(first):g}" '
        f'data-series="{html.escape(series[0].name if series else "")}">{_grid()}{"".join(lines)}{"".join(hits)}</svg>'
    )
    return _frame(title, svg, [s.name for s in series], fmt(top), starts, time_format, title)


def _grid() -> str:
    lines = "".join(
        f'<line class="grid" x1="0" x2="{WIDTH}" y1="{HEIGHT * f:.1f}" y2="{HEIGHT * f:.1f}" '
        f'vector-effect="non-scaling-stroke"/>'
        for f in (0.0, 0.25, 0.5, 0.75, 1.0)
    )
    return lines
