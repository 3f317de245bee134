"""A page's query parameters (web.check_parameters, web.UiQuery): unknown names, bounds, and a name given several
times, which a page reading one value refuses and a page reading a list (checkboxes) takes."""

from __future__ import annotations

import pytest
from starlette.datastructures import QueryParams

from gridpilot.central.problems import ApiError
from gridpilot.central.ui.web import MAX_QUERY_VALUE, MAX_REPEATS, UiQuery, check_parameters


def refused(query: str, allowed=("state", "category")) -> ApiError:
    with pytest.raises(ApiError) as e:
        check_parameters(QueryParams(query), allowed)
    assert e.value.status == 400
    return e.value


@pytest.mark.parametrize("query,field", [
    ("nope=1", "nope"), ("state=1&nope=1", "nope"), ("state=" + "x" * (MAX_QUERY_VALUE + 1), "state"),
    ("state=a%00b", "state"), ("&".join(["category=trace"] * (MAX_REPEATS + 1)), "category"),
])
def test_refused_naming_the_parameter(query, field):
    e = refused(query)
    assert e.extra["field"] == field and field in e.message


def test_within_bounds_passes_and_empty_values_are_values():
    check_parameters(QueryParams("state=&category=trace&category=proc"), ("state", "category"))
    check_parameters(QueryParams("&".join(["category=x"] * MAX_REPEATS)), ("category",))


def test_a_page_reading_one_value_refuses_a_second():
    q = UiQuery(QueryParams("state=DONE&state=RUNNING&category=trace&category=proc&name=a"))
    assert q.get("name") == "a" and q.get("missing") is None and q.get("missing", "d") == "d"
    assert q.getlist("category") == ["trace", "proc"]
    for read in (lambda: q.get("state"), lambda: q["category"], lambda: dict(q.items())):
        with pytest.raises(ApiError) as e:
            read()
        assert e.value.status == 400 and e.value.extra["field"] in ("state", "category")
    assert sorted(q) == ["category", "name", "state"] and len(q) == 3
