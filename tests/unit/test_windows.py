"""Typed windows: validated once from their text, used as objects, written back as the same text."""

import datetime as dt

import pytest
from pydantic import BaseModel, ValidationError

from opsbook.windows import Days, Years, known_subset, names


class Model(BaseModel):
    years: Years = Years()
    days: Days = Days()
    targets: names(("lake", "postgres", "archive"), "target") = ("lake",)


def test_years_parse_iterate_and_print_back():
    model = Model(years="2016-2018,2011")
    assert list(model.years) == [2011, 2016, 2017, 2018]
    assert model.model_dump(mode="json")["years"] == "2011,2016-2018"
    assert Model(years=2017).years == Years((2017,))
    assert Model(years=[2012, 2011]).years == Years((2011, 2012))


def test_years_latest_and_everything_resolve_against_what_is_there():
    latest = Years.parse("latest")
    assert latest.latest and str(latest) == "latest"
    assert list(latest.resolve([2019, 2021, 2020])) == [2021]
    with pytest.raises(ValueError, match="resolved"):
        list(latest)
    everything = Years.parse("")
    assert everything.everything and str(everything) == ""
    assert list(everything.resolve([2012, 2011])) == [2011, 2012]
    assert list(Years.parse("2015").resolve([2011])) == [2015]


def test_bad_years_are_refused_with_the_part_that_is_wrong():
    with pytest.raises(ValidationError, match="'20x7' is not a year"):
        Model(years="2016,20x7")
    with pytest.raises(ValidationError, match="is not a year"):
        Model(years=True)


def test_days_parse_bounds_and_print_back():
    window = Days.parse("2025-11-01..2025-11-03")
    assert window.days == [dt.date(2025, 11, 1), dt.date(2025, 11, 2), dt.date(2025, 11, 3)]
    start, end = window.bounds()
    assert (start.isoformat(), end.isoformat()) == ("2025-11-01T00:00:00+00:00", "2025-11-04T00:00:00+00:00")
    assert str(window) == "2025-11-01..2025-11-03" and str(Days.parse("2025-11-02")) == "2025-11-02"
    assert not Days.parse("") and Days.parse("").days == []


def test_days_relative_to_today_are_resolved_to_dates():
    today = dt.date(2026, 3, 10)
    assert Days.parse("yesterday", today) == Days(dt.date(2026, 3, 9), dt.date(2026, 3, 9))
    assert Days.parse("today-7..today-1", today) == Days(dt.date(2026, 3, 3), dt.date(2026, 3, 9))
    assert str(Days.parse("today", today)) == "2026-03-10"


def test_day_window_local_bounds_follow_the_time_zone():
    from zoneinfo import ZoneInfo

    start, end = Days.parse("2025-11-02").bounds(ZoneInfo("America/Toronto"))  # 25 hours: DST ends
    assert (end - start) == dt.timedelta(hours=25)


@pytest.mark.parametrize(("text", "message"), [("2025-11-07..2025-11-01", "ends before"), ("soon", "not a day")])
def test_bad_days_are_refused(text, message):
    with pytest.raises(ValueError, match=message):
        Days.parse(text)


def test_names_keep_the_known_order_and_refuse_unknown_ones():
    model = Model(targets="archive, lake")
    assert model.targets == ("lake", "archive")
    assert model.model_dump(mode="json")["targets"] == "lake,archive"
    assert Model(targets=["postgres"]).targets == ("postgres",)
    with pytest.raises(ValidationError, match="unknown target"):
        Model(targets="lake,s3")
    with pytest.raises(ValueError, match=r"\(none\)"):
        known_subset("", ("a",), "step")
