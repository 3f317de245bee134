"""The Jinja2 environment of the web view: templates from this package, every value escaped (autoescape on for
every template, so a JDL, a trace line or a job name holding `<script>` shows as text), an undefined name an error
rather than an empty string, and the filters the pages share."""

from __future__ import annotations

import datetime
import functools
import time
from typing import Any, Dict, Mapping, Optional
from urllib.parse import quote, urlencode

from jinja2 import Environment, PackageLoader, StrictUndefined

from gridpilot.central.ui import PREFIX

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def utc(ts: Optional[float]) -> str:
    """A time as people on several continents read it together: UTC, to the second."""
    if ts is None:
        return "-"
    return datetime.datetime.fromtimestamp(float(ts), datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def duration(seconds: Optional[float]) -> str:
    """1d 02:03:04, 02:03:04 or 03:04."""
    if seconds is None:
        return "-"
    s = max(0, int(seconds))
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    clock = f"{h:02d}:{m:02d}:{s:02d}" if h or d else f"{m:02d}:{s:02d}"
    return f"{d}d {clock}" if d else clock


def ago(ts: Optional[float], now: float) -> str:
    if ts is None:
        return "-"
    return duration(now - float(ts)) + " ago"


def size(n: Optional[float]) -> str:
    """Bytes in binary units, three significant figures."""
    if n is None:
        return "-"
    v = float(n)
    for unit in _UNITS:
        if abs(v) < 1024 or unit == _UNITS[-1]:
            return f"{v:.0f} {unit}" if unit == "B" else f"{_figures(v)} {unit}"
        v /= 1024
    return f"{_figures(v)} {_UNITS[-1]}"  # pragma: no cover - the loop returns


def _figures(v: float) -> str:
    """Three significant figures without an exponent (1000 to 1023 of a unit read 1e+03 with :.3g)."""
    if abs(v) >= 100:
        return f"{v:.0f}"
    return f"{v:.3g}"


def ui_url(path: str, query: Optional[Mapping[str, Any]] = None, **more: Any) -> str:
    """A link within the web view: PREFIX + path, with the query's non-empty values (quoted)."""
    values: Dict[str, Any] = {**(query or {}), **more}
    kept = {k: v for k, v in values.items() if v is not None and v != ""}
    url = PREFIX + path
    return url + ("?" + urlencode(kept, quote_via=quote) if kept else "")


@functools.lru_cache(maxsize=1)
def environment() -> Environment:
    env = Environment(loader=PackageLoader("gridpilot.central.ui", "templates"), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(utc=utc, duration=duration, ago=ago, size=size)
    env.globals.update(prefix=PREFIX, ui_url=ui_url, chart=_chart)
    return env


def _chart(chart: Any) -> Any:
    """{{ chart(c) }}: a charts.Chart as inline SVG (imported here: charts uses this module's filters)."""
    from gridpilot.central.ui import charts

    return charts.render(chart)


#: What base.html reads, for the pages that do not set it (the sign-in form, error pages).
BASE_CONTEXT: Mapping[str, Any] = {"principal": None, "csrf": "", "refresh": None, "here": ""}


def render(template: str, context: Mapping[str, Any]) -> str:
    return environment().get_template(template).render({**BASE_CONTEXT, "now": time.time(), **context})


__all__ = ["ago", "duration", "environment", "render", "size", "ui_url", "utc"]
