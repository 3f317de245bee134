"""The web view's shared filters (central/ui/templating.py): how sizes, durations, times and links read."""

from __future__ import annotations

import pytest

from gridpilot.central.ui import templating


@pytest.mark.parametrize("n, shown", [
    (None, "-"), (0, "0 B"), (1023, "1023 B"), (1024, "1 KiB"), (1536, "1.5 KiB"), (10.5 * 1024, "10.5 KiB"),
    # Three figures, never an exponent: 1000 to 1023 of a unit read "1e+03" with :.3g.
    (1000 * 1024, "1000 KiB"), (123_456_789, "118 MiB"), (1000 * 1024 ** 3, "1000 GiB"), (5 << 50, "5 PiB"),
    (2 ** 70, "1048576 PiB"),
])
def test_size_reads_in_binary_units_without_exponents(n, shown):
    assert templating.size(n) == shown


@pytest.mark.parametrize("seconds, shown", [
    (None, "-"), (-5, "00:00"), (59.9, "00:59"), (61, "01:01"), (3600, "01:00:00"), (90061, "1d 01:01:01"),
])
def test_duration(seconds, shown):
    assert templating.duration(seconds) == shown


def test_utc_and_ago():
    assert templating.utc(0) == "1970-01-01 00:00:00"
    assert templating.utc(None) == "-"
    assert templating.ago(100.0, 161.0) == "01:01 ago"


def test_ui_url_quotes_values_and_leaves_out_empty_ones():
    assert templating.ui_url("/jobs") == "/ui/jobs"
    assert templating.ui_url("/jobs", {"state": "", "name": "a b&c", "site": None}, offset=50) == \
        "/ui/jobs?name=a%20b%26c&offset=50"
