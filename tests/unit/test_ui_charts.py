"""Server-side SVG charts (central/ui/charts.py): escaping, downsampling, empty charts, ticks, limits and marks."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET

import pytest

from gridpilot.central.ui.charts import (
    HEIGHT, LEFT, PER_COLUMN, RIGHT, TOP, BOTTOM, Chart, Limit, Mark, Series, downsample, nice_step, render, time_step,
    value_step,
)

T0 = 1_800_000_000.0
SVG = "{http://www.w3.org/2000/svg}"


def svg_of(html: str) -> ET.Element:
    """The <svg> of a rendered chart, parsed as XML (so a bad escape fails the parse)."""
    m = re.search(r"<svg.*</svg>", html, re.S)
    assert m, html
    return ET.fromstring(m.group(0).replace("<svg ", f'<svg xmlns="{SVG[1:-1]}" ', 1))


def polyline_points(el: ET.Element) -> list[tuple[float, float]]:
    (pl,) = el.iter(f"{SVG}polyline")
    return [tuple(map(float, p.split(","))) for p in pl.get("points", "").split()]  # type: ignore[misc]


def test_names_are_escaped_everywhere():
    evil = '<script>alert(1)</script>&"'
    c = Chart(evil, "bytes", [Series(evil, [(T0, 1.0), (T0 + 60, 2.0)])], [Limit(evil, 3.0)], [Mark(evil, T0 + 30)])
    html = str(render(c))
    assert "<script>" not in html and "&lt;script&gt;" in html
    el = svg_of(html)  # well-formed XML: every name escaped in text and attributes
    texts = [t.text for t in el.iter(f"{SVG}text")]
    assert evil in texts  # the limit's and the mark's labels, as text
    assert el.get("aria-label") == evil


def test_an_empty_chart_says_no_samples():
    assert str(render(Chart("CPU", "percent"))) == '<p class="chart-empty">CPU: no samples</p>'
    # Limits and marks alone are no data.
    only = Chart("Disk", "bytes", [Series("d", [])], [Limit("max", 10.0)], [Mark("killed", T0)])
    assert "no samples" in str(render(only)) and "<svg" not in str(render(only))
    # Nor are values that cannot be drawn.
    bad = Chart("x", "", [Series("s", [(T0, math.nan), (math.inf, 1.0), (-5.0, 1.0), (T0, 1e300)])])
    assert "no samples" in str(render(bad))


def test_downsampling_keeps_every_extreme_and_bounds_the_points():
    # 24 h of 1 s samples: a sine with one spike and one dip, each a single sample.
    n = 86_400
    pts = [(T0 + i, 50.0 + 10.0 * math.sin(i / 500.0)) for i in range(n)]
    pts[12_345] = (T0 + 12_345, 1000.0)
    pts[70_000] = (T0 + 70_000, -500.0)
    columns = 416
    kept = downsample(pts, T0, T0 + n - 1, columns)
    assert len(kept) <= PER_COLUMN * columns
    assert (T0 + 12_345, 1000.0) in kept and (T0 + 70_000, -500.0) in kept
    assert kept[0] == pts[0] and kept[-1] == pts[-1]
    assert [p[0] for p in kept] == sorted(p[0] for p in kept)
    # Drawn: the polyline is as short, and its highest and lowest points are the spike and the dip.
    el = svg_of(str(render(Chart("cpu", "", [Series("s", pts)]))))
    drawn = polyline_points(el)
    assert len(drawn) <= PER_COLUMN * (480 - LEFT - RIGHT)
    ys = [y for _, y in drawn]
    assert min(ys) == pytest.approx(TOP, abs=0.11)  # the spike touches the top of the axis
    assert max(ys) == pytest.approx(HEIGHT - BOTTOM, abs=0.11)  # the dip its bottom


def test_short_series_are_not_downsampled():
    pts = [(T0 + i, float(i)) for i in range(10)]
    assert downsample(pts, T0, T0 + 9, 416) == pts


@pytest.mark.parametrize("span, ticks, step", [(1.0, 4, 0.5), (10.0, 4, 5.0), (97.0, 4, 50.0),
                                               (0.03, 4, 0.01), (1234.0, 4, 500.0)])
def test_nice_steps_are_one_two_or_five_times_a_power_of_ten(span, ticks, step):
    got = nice_step(span, ticks)
    assert got == pytest.approx(step)
    mantissa = got / 10 ** math.floor(math.log10(got))
    assert round(mantissa, 9) in (1.0, 2.0, 5.0)


def test_byte_steps_are_binary_and_time_steps_round():
    gib = 1 << 30
    assert value_step(10 * gib, "bytes") == 5 * gib
    assert value_step(3 * (1 << 20), "bytes") == 1 << 20
    assert value_step(100.0, "percent") == 50.0
    assert time_step(86400) == 21600  # 6 h over a day: 00:00, 06:00, ...
    assert time_step(600) == 120
    assert time_step(30) == 10


def test_value_ticks_are_round_and_time_labels_few():
    c = Chart("mem", "bytes", [Series("rss", [(T0 + 60 * i, float(i * (1 << 28))) for i in range(25)])])
    el = svg_of(str(render(c)))
    ticks = [t.text or "" for t in el.iter(f"{SVG}text") if t.get("text-anchor") == "end"]
    assert ticks[0] == "0 B" and all(re.fullmatch(r"\d+(\.5)? GiB|0 B", t) for t in ticks), ticks
    times = [t.text or "" for t in el.iter(f"{SVG}text") if t.get("text-anchor") == "middle"]
    assert 3 <= len(times) <= 6 and all(re.fullmatch(r"\d\d:\d\d", t) for t in times), times


def test_a_limit_above_the_data_extends_the_axis():
    c = Chart("mem", "bytes", [Series("rss", [(T0, 100.0), (T0 + 60, 200.0)])], [Limit("MemorySize", 1000.0)])
    el = svg_of(str(render(c)))
    (lim,) = [ln for ln in el.iter(f"{SVG}line") if ln.get("class") == "limit"]
    y = float(lim.get("y1") or 0)
    assert TOP <= y < TOP + 0.2 * (HEIGHT - TOP - BOTTOM)  # near the top, inside the plot
    assert max(y for _, y in polyline_points(el)) > y  # the data below it


@pytest.mark.parametrize("top", [1000.0, 1024.0, 1100.0])
def test_a_limit_label_never_runs_along_its_own_line(top):
    # A limit at (or just under) the axis' top: its label goes below the line rather than being struck through.
    c = Chart("mem", "bytes", [Series("rss", [(T0, 100.0), (T0 + 60, 200.0)])], [Limit("MemorySize", top)])
    el = svg_of(str(render(c)))
    (lim,) = [ln for ln in el.iter(f"{SVG}line") if ln.get("class") == "limit"]
    (label,) = [t for t in el.iter(f"{SVG}text") if t.get("class") == "limit-label"]
    y, baseline = float(lim.get("y1") or 0), float(label.get("y") or 0)
    # 11 px text: its glyphs span about baseline-9 to baseline+2; the line must be clear of them.
    assert y <= baseline - 10 or y >= baseline + 2, (y, baseline)
    assert TOP <= baseline - 9 and baseline <= HEIGHT - BOTTOM


def test_a_mark_outside_the_data_extends_the_time_axis_and_is_labelled():
    c = Chart("cpu", "percent", [Series("cpu", [(T0, 10.0), (T0 + 600, 20.0)])], [], [Mark("killed: TTL", T0 + 1200)])
    el = svg_of(str(render(c)))
    (mark,) = [ln for ln in el.iter(f"{SVG}line") if ln.get("class") == "mark"]
    assert float(mark.get("x1") or 0) == pytest.approx(480 - RIGHT)
    assert max(x for x, _ in polyline_points(el)) == pytest.approx(LEFT + (480 - LEFT - RIGHT) / 2)
    assert "killed: TTL" in [t.text for t in el.iter(f"{SVG}text")]


def test_a_single_point_is_a_dot_with_its_value():
    el = svg_of(str(render(Chart("disk", "bytes", [Series("workdir", [(T0, 2048.0)])]))))
    (dot,) = el.iter(f"{SVG}circle")
    assert "2 KiB" in (dot.find(f"{SVG}title").text or "")  # type: ignore[union-attr]
