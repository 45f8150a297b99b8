"""The City's published parking-ticket figures, shipped with opsbook (``data/toronto``).

``infraction_monthly_summary.csv`` holds the real count and fine total per year, month and
infraction description (2011-2022), aggregated from the City's files; ``yearly_totals.csv``
the same per year. They are the default reference of the ``toronto_parking_tickets`` check
suite: a full load of a year must add up to them.
"""

from __future__ import annotations

from functools import cache

from opsbook import config

REFERENCE_YEARS = range(2011, 2023)


@cache
def monthly_by_description():
    """The real monthly figures as a pandas DataFrame (year, month, description, tickets, fines)."""
    import pandas as pd

    frame = pd.read_csv(
        config.package_data("toronto", "infraction_monthly_summary.csv"),
        dtype={"infraction_description": str},
        keep_default_na=False,
    )
    return frame.rename(columns={"infraction_description": "description"})


@cache
def yearly():
    import pandas as pd

    return pd.read_csv(config.package_data("toronto", "yearly_totals.csv"))


def city_figures(years):
    """The City's figures per (year, month): tickets and fines (CAD); years without figures in the
    repo are simply absent."""
    ref = monthly_by_description()
    frame = ref[ref["year"].isin(list(years))]
    return frame.groupby(["year", "month"], as_index=False)[["tickets", "fines"]].sum()
