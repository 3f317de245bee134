"""Charts as inline SVG, drawn on the server: a chart is in the page as it arrives, needs no script (the pages' CSP
allows none inline, and none from elsewhere), scales to the screen through its viewBox, and is styled by the classes
of static/ui.css (no style attributes: the CSP forbids inline style). A point's value shows on hover through SVG
<title> elements.

A chart has series of (time, value) points, horizontal limits (a job's memory limit, say) and vertical marks (the
moment a job was killed, and why).

Drawing cost does not grow with the samples: a series is cut to at most two points per pixel column of the plot
(its lowest and highest there), so 24 h of 1 s samples draw as ~810 points and every peak a pixel can show is still
there. The viewBox is small (WIDTH x HEIGHT user units) so that its text stays readable when the
SVG is scaled down to a 390 px phone screen; axis labels are few (about TIME_TICKS and VALUE_TICKS) and at round
values."""

from __future__ import annotations

import bisect
import datetime
import math
from operator import itemgetter
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


#: The viewBox; the SVG scales to its box's width (ui.css), text with it: 480 units across a 360 px phone column
#: make 12-unit text about 9 px high.
WIDTH, HEIGHT = 480, 200
#: Margins: LEFT holds a value label such as "1.5 MiB/s" (~60 units at 12).
LEFT, RIGHT, TOP, BOTTOM = 66, 8, 10, 22
#: Series beyond this many share the last colour class (.c0 to .c7 in ui.css).
COLOURS = 8
#: About this many labels on each axis: HH:MM labels are ~35 units wide, so five never touch in 406 units.
TIME_TICKS, VALUE_TICKS = 5, 4
#: Points kept per pixel column of a series that has more than this many per column: its lowest and highest, in
#: time order (its first and last besides when it has fewer: a short series is drawn whole).
PER_COLUMN = 2
#: Round steps of the time axis, in seconds.
_TIME_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400,
               2 * 86400, 7 * 86400, 14 * 86400, 28 * 86400)
#: The time axis is drawn for moments in [0, this] only (year 9999): datetime cannot name later ones.
_MAX_TIME = 253402300799.0
#: Values beyond this size are not drawn: the axis' rounding would overflow to infinity near float's limit.
_MAX_VALUE = 1e30


def formatter(unit: str) -> Callable[[float], str]:
    if unit == "bytes":
        return size
    if unit == "bytes/s":
        return lambda v: f"{size(v)}/s"
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


def value_step(span: float, unit: str, ticks: int = VALUE_TICKS) -> float:
    """nice_step, in binary multiples for bytes (a tick at 2 GiB reads "2 GiB", not "1.86 GiB")."""
    if unit in ("bytes", "bytes/s") and span >= 1024:
        scale = 1024.0 ** min(int(math.log(span, 1024)), 6)
        return nice_step(span / scale, ticks) * scale
    return nice_step(span, ticks)


def time_step(span: float, ticks: int = TIME_TICKS) -> float:
    """A round step of the time axis (a second to four weeks) giving at most about `ticks` labels over `span`."""
    raw = span / max(ticks, 1)
    for step in _TIME_STEPS:
        if raw <= step:
            return float(step)
    return float(nice_step(raw / 86400, 1) * 86400)


def _time_label(ts: float, span: float) -> str:
    t = datetime.datetime.fromtimestamp(min(max(ts, 0.0), _MAX_TIME), datetime.timezone.utc)
    return t.strftime("%d %b" if span > 3 * 86400 else "%d %H:%M" if span > 86400 else "%H:%M:%S" if span < 300
                      else "%H:%M")


def downsample(points: Sequence[Point], x0: float, x1: float, columns: int) -> List[Point]:
    """The points (sorted by time) cut to at most PER_COLUMN per column of `columns` over [x0, x1]: in each, the
    lowest and the highest, in time order. Extremes survive; flat stretches shrink. Each
    column's slice is found by bisection and its extremes by min/max over it: no Python step per point."""
    if len(points) <= PER_COLUMN * columns:
        return list(points)
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    width = (x1 - x0) / columns if x1 > x0 else 1.0
    out: List[Point] = []
    i, n = 0, len(points)
    for col in range(columns):
        j = n if col == columns - 1 else max(i, bisect.bisect_left(xs, x0 + (col + 1) * width, i))
        if j - i <= PER_COLUMN:
            out.extend(points[i:j])
        elif j > i:
            part = ys[i:j]
            lo, hi = i + part.index(min(part)), i + part.index(max(part))
            out.extend(points[k] for k in sorted({lo, hi}))
        i = j
    return out


def _finite(points: Sequence[Point]) -> List[Point]:
    """The drawable points, sorted by time: a value that is not a finite number (a pilot may send anything a bound
    lets through) would make the SVG invalid, and a moment beyond year 9999 cannot be labelled. The common case (all
    drawable) is checked with C-speed sums and extremes; only a series that fails it is filtered point by point."""
    pts = sorted(points, key=itemgetter(0))
    if not pts:
        return pts
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    # NaN or an infinity anywhere makes the sum non-finite (values are at most 1e30, so finite ones cannot overflow).
    if (math.isfinite(math.fsum(xs)) and math.isfinite(math.fsum(ys)) and 0 <= xs[0] and xs[-1] <= _MAX_TIME
            and -_MAX_VALUE <= min(ys) and max(ys) <= _MAX_VALUE):
        return pts
    return [(x, y) for x, y in pts if math.isfinite(x) and math.isfinite(y) and 0 <= x <= _MAX_TIME
            and abs(y) <= _MAX_VALUE]


def render(chart: Chart, width: int = WIDTH, height: int = HEIGHT) -> Markup:
    fmt = formatter(chart.unit)
    title = escape(chart.title)
    series = [(i, s.name, _finite(s.points)) for i, s in enumerate(chart.series)]
    drawn = [(i, name, pts) for i, name, pts in series if pts]
    if not drawn:
        return Markup(f'<p class="chart-empty">{title}: no samples</p>')
    limits = [lim for lim in chart.limits if math.isfinite(lim.value) and abs(lim.value) <= _MAX_VALUE]
    marks = [m for m in chart.marks if math.isfinite(m.at) and 0 <= m.at <= _MAX_TIME]
    xs = [p[0] for _, _, pts in drawn for p in (pts[0], pts[-1])] + [m.at for m in marks]
    ys = [f(y for _, y in pts) for _, _, pts in drawn for f in (min, max)] + [lim.value for lim in limits]
    x0, x1 = min(xs), max(xs)
    if x1 <= x0:
        x0, x1 = x0 - 30.0, x0 + 30.0
    # Limits take part in the range: a limit above the data extends the axis so its line shows.
    lo, hi = min(min(ys), 0.0), max(max(ys), 0.0)
    if hi <= lo:
        hi = lo + 1.0
    step = value_step(hi - lo, chart.unit)
    y0, y1 = step * math.floor(lo / step), step * math.ceil(hi / step)
    pw, ph = width - LEFT - RIGHT, height - TOP - BOTTOM

    def px(x: float) -> float:
        return LEFT + (x - x0) / (x1 - x0) * pw

    def py(y: float) -> float:
        return TOP + ph - (y - y0) / (y1 - y0) * ph

    out: List[str] = [f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="{title}">',
                      f"<title>{title}</title>"]
    for k in range(int(round((y1 - y0) / step)) + 1):
        v = y0 + k * step
        y = py(v)
        out.append(f'<line class="grid" x1="{LEFT}" x2="{width - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>'
                   f'<text class="tick" x="{LEFT - 4}" y="{y + 4:.1f}" text-anchor="end">{escape(fmt(v))}</text>')
    span = x1 - x0
    tstep = time_step(span)
    t = math.ceil(x0 / tstep) * tstep
    while t <= x1:
        out.append(f'<line class="grid" x1="{px(t):.1f}" x2="{px(t):.1f}" y1="{TOP}" y2="{TOP + ph}"/>'
                   f'<text class="tick" x="{px(t):.1f}" y="{height - 6}" text-anchor="middle">'
                   f"{escape(_time_label(t, span))}</text>")
        t += tstep
    for i, name, pts in drawn:
        cls = f"c{min(i, COLOURS - 1)}"
        ys = [y for _, y in pts]
        low, high, last = min(ys), max(ys), ys[-1]
        tip = f"<title>{escape(name)}: {escape(fmt(low))} to {escape(fmt(high))}, last {escape(fmt(last))}</title>"
        if len(pts) == 1:
            out.append(f'<circle class="dot {cls}" cx="{px(pts[0][0]):.1f}" cy="{py(last):.1f}" r="3">{tip}</circle>')
            continue
        # The scale inlined: this runs per drawn point.
        ax, bx, ay, by = pw / (x1 - x0), LEFT - x0 * pw / (x1 - x0), -ph / (y1 - y0), TOP + ph + y0 * ph / (y1 - y0)
        path = " ".join([f"{ax * x + bx:.1f},{ay * y + by:.1f}" for x, y in downsample(pts, x0, x1, pw)])
        out.append(f'<polyline class="series {cls}" points="{path}">{tip}</polyline>')
    for lim in limits:
        y = py(lim.value)
        out.append(f'<line class="limit" x1="{LEFT}" x2="{width - RIGHT}" y1="{y:.1f}" y2="{y:.1f}">'
                   f"<title>{escape(lim.name)}: {escape(fmt(lim.value))}</title></line>"
                   # Above its line, or below it when the line runs along the top (never struck through).
                   f'<text class="limit-label" x="{width - RIGHT - 2}" y="{y - 3 if y - 3 >= TOP + 9 else y + 11:.1f}" '
                   f'text-anchor="end">{escape(lim.name)}</text>')
    for k, m in enumerate(marks):
        x = px(m.at)
        # Labelled on the side with more room, near the bottom (the limits' labels are at the top, where a limit
        # above the data puts them), one above the other when several marks are drawn.
        anchor, lx = ("end", x - 3) if x > LEFT + pw / 2 else ("start", x + 3)
        out.append(f'<line class="mark" x1="{x:.1f}" x2="{x:.1f}" y1="{TOP}" y2="{TOP + ph}">'
                   f"<title>{escape(m.name)}</title></line>"
                   f'<text class="mark-label" x="{lx:.1f}" y="{TOP + ph - 4 - 12 * k}" text-anchor="{anchor}">'
                   f"{escape(m.name)}</text>")
    out.append("</svg>")
    legend = "".join(f'<li class="c{min(i, COLOURS - 1)}">{escape(s.name)}</li>' for i, s in enumerate(chart.series))
    return Markup(f'<figure class="chart-box"><figcaption>{title}</figcaption>{"".join(out)}'
                  f'<ul class="legend">{legend}</ul></figure>')


__all__ = ["COLOURS", "Chart", "Limit", "Mark", "Point", "Series", "downsample", "formatter", "nice_step", "render",
           "time_step", "value_step"]
