"""Charts as inline SVG, drawn on the server: a chart is in the page as it arrives, needs no script (the pages' CSP
allows none inline, and none from elsewhere), scales to the screen through its viewBox, and is styled by the classes
of static/ui.css (no style attributes: the CSP forbids inline style). A point's value shows on hover through SVG
<title> elements.

A chart has series of (time, value) points, horizontal limits (a job's memory limit, say) and vertical marks (the
moment a job was killed, and why)."""

from __future__ import annotations

import datetime
import math
from dataclasses import dataclass, field
from typing import Callable, List, Sequence, Tuple

from markupsafe import Markup, escape

from gridpilot.central.ui.templating import size

Point = Tuple[float, float]


@dataclass
class Series:
    name: str
    points: Sequence[Point]


@dataclass
class Limit:
    """A horizontal line: a limit the values must stay under."""

    name: str
    value: float


@dataclass
class Mark:
    """A vertical line at a moment: an event on the time axis."""

    name: str
    at: float


@dataclass
class Chart:
    title: str
    #: How values are written on the axis and in tooltips: "bytes", "percent", "seconds" or "" (plain numbers).
    unit: str
    series: List[Series] = field(default_factory=list)
    limits: List[Limit] = field(default_factory=list)
    marks: List[Mark] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not any(s.points for s in self.series)


WIDTH, HEIGHT = 720, 220
LEFT, RIGHT, TOP, BOTTOM = 64, 12, 12, 26
#: Series beyond this many share the last colour class.
COLOURS = 6


def formatter(unit: str) -> Callable[[float], str]:
    if unit == "bytes":
        return size
    if unit == "percent":
        return lambda v: f"{v:.0f} %"
    if unit == "seconds":
        return lambda v: f"{v:.0f} s"
    return lambda v: f"{v:.4g}"


def nice_step(span: float, ticks: int) -> float:
    """A round step (1, 2 or 5 times a power of ten) giving about `ticks` ticks over `span`."""
    raw = span / max(ticks, 1)
    if raw <= 0 or not math.isfinite(raw):
        return 1.0
    power = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if raw <= m * power:
            return m * power
    return 10 * power  # pragma: no cover


def _time_label(ts: float, span: float) -> str:
    t = datetime.datetime.fromtimestamp(ts, datetime.timezone.utc)
    return t.strftime("%d %b %H:%M" if span > 86400 else "%H:%M:%S" if span < 600 else "%H:%M")


def render(chart: Chart, width: int = WIDTH, height: int = HEIGHT) -> Markup:
    fmt = formatter(chart.unit)
    xs = [x for s in chart.series for x, _ in s.points] + [m.at for m in chart.marks]
    ys = [y for s in chart.series for _, y in s.points] + [lim.value for lim in chart.limits]
    title = escape(chart.title)
    if not xs or not ys:
        return Markup(f'<p class="chart-empty">{title}: no samples</p>')
    x0, x1 = min(xs), max(xs)
    if x1 <= x0:
        x1 = x0 + 1.0
    y1 = max(max(ys), 0.0)
    step = nice_step(y1 if y1 > 0 else 1.0, 4)
    y1 = step * math.ceil((y1 if y1 > 0 else 1.0) / step)
    pw, ph = width - LEFT - RIGHT, height - TOP - BOTTOM

    def px(x: float) -> float:
        return LEFT + (x - x0) / (x1 - x0) * pw

    def py(y: float) -> float:
        return TOP + ph - (y / y1) * ph

    out: List[str] = [f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="{title}">',
                      f"<title>{title}</title>"]
    v = 0.0
    while v <= y1 + step / 2:
        y = py(v)
        out.append(f'<line class="grid" x1="{LEFT}" x2="{width - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>'
                   f'<text class="tick" x="{LEFT - 4}" y="{y + 4:.1f}" text-anchor="end">{escape(fmt(v))}</text>')
        v += step
    span = x1 - x0
    for i in range(5):
        x = x0 + span * i / 4
        out.append(f'<text class="tick" x="{px(x):.1f}" y="{height - 8}" text-anchor="middle">'
                   f"{escape(_time_label(x, span))}</text>")
    for i, s in enumerate(chart.series):
        if not s.points:
            continue
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in s.points)
        last_x, last_y = s.points[-1]
        out.append(f'<polyline class="series c{min(i, COLOURS - 1)}" points="{path}">'
                   f"<title>{escape(s.name)}: last {escape(fmt(last_y))}</title></polyline>")
    for lim in chart.limits:
        y = py(lim.value)
        out.append(f'<line class="limit" x1="{LEFT}" x2="{width - RIGHT}" y1="{y:.1f}" y2="{y:.1f}">'
                   f"<title>{escape(lim.name)}: {escape(fmt(lim.value))}</title></line>"
                   f'<text class="limit-label" x="{width - RIGHT - 2}" y="{y - 3:.1f}" text-anchor="end">'
                   f"{escape(lim.name)}</text>")
    for m in chart.marks:
        x = px(m.at)
        out.append(f'<line class="mark" x1="{x:.1f}" x2="{x:.1f}" y1="{TOP}" y2="{TOP + ph}">'
                   f"<title>{escape(m.name)}</title></line>"
                   f'<text class="mark-label" x="{x - 3:.1f}" y="{TOP + 10}" text-anchor="end">{escape(m.name)}</text>')
    out.append("</svg>")
    legend = "".join(f'<li class="c{min(i, COLOURS - 1)}">{escape(s.name)}</li>' for i, s in enumerate(chart.series))
    return Markup(f'<figure class="chart-box"><figcaption>{title}</figcaption>{"".join(out)}'
                  f'<ul class="legend">{legend}</ul></figure>')


__all__ = ["COLOURS", "Chart", "Limit", "Mark", "Point", "Series", "formatter", "nice_step", "render"]
