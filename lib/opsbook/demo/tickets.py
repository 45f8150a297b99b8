"""Seeded demo input: City-format parking-ticket files that follow the real figures.

The City of Toronto publishes tickets per year; ``data/toronto/infraction_monthly_summary.csv``
holds the real count and fine total per year, month and infraction description (2011-2022).
The demo scales those figures down (1 % by default), apportions each year's tickets over its
months and descriptions by largest remainder, gives each ticket its description's average fine
in whole dollars, and writes the rows in the City's file format: header, ``YYYYMMDD`` dates,
``HHMM`` times without leading zeros, ZIPs of one or more CSV parts (or a bare CSV), CRLF
line ends, Windows-1252 for the older years and UTF-8 for the newer ones.

The same functions give the expected per-month totals (``expected_monthly``) that the
validate suite checks, so expected values are derived from the reference data, never typed in.
A handful of malformed rows per year (planted in addition to the figures, so the totals of
good rows stay exact) exercise the quarantine.
"""

from __future__ import annotations

import calendar
import csv
import io
import zipfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from opsbook import config
from opsbook.toronto import reference
from opsbook.toronto.reference import REFERENCE_YEARS

CITY_COLUMNS = [
    "tag_number_masked",
    "date_of_infraction",
    "infraction_code",
    "infraction_description",
    "set_fine_amount",
    "time_of_infraction",
    "location1",
    "location2",
    "location3",
    "location4",
    "province",
]
DEFAULT_SCALE = 0.01
DEFAULT_SEED = 20240101
# At the City's scale a year is split into parts of about 1M rows (e.g. 2016: 3 parts).
FULL_SCALE_PART_ROWS = 1_000_000
# Years before this were published in Windows-1252, the later ones in UTF-8.
UTF8_FROM_YEAR = 2016
BARE_CSV_YEARS = {2022}

PROXIMITY = (["NR", "OPP", "AT", "S/S", "N/S", "E/S", "W/S"], [0.42, 0.26, 0.14, 0.05, 0.05, 0.04, 0.04])
PROVINCES = (
    ["ON", "QC", "NY", "AB", "BC", "MI", "NS", "PA", "MB", "FL"],
    [0.935, 0.02, 0.01, 0.007, 0.006, 0.005, 0.005, 0.004, 0.004, 0.004],
)
# Street names whose spelling needs more than ASCII; a reader that guesses the wrong
# encoding turns them into mojibake ("O’CONNOR" -> "Oâ€™CONNOR").
NON_ASCII_STREETS = ["O’CONNOR DR", "CÔTÉ CRT", "BÉLANGER ST", "LAFRAMBOISE CRES", "FRANÇOIS ST"]


@dataclass(frozen=True)
class DemoFile:
    path: Path
    year: int
    rows: int  # good rows written
    malformed: int  # malformed rows planted
    encoding: str


@cache
def infraction_codes() -> dict[str, int]:
    """A stable code per description (the summary data carries none): its rank, from 1."""
    descriptions = sorted(set(reference.monthly_by_description()["description"]))
    return {d: i + 1 for i, d in enumerate(descriptions)}


def _apportion(weights: np.ndarray, total: int) -> np.ndarray:
    """Split ``total`` over ``weights`` by largest remainder (Hamilton); sums exactly to total."""
    if total <= 0 or weights.sum() == 0:
        return np.zeros(len(weights), dtype=np.int64)
    quotas = weights / weights.sum() * total
    counts = np.floor(quotas).astype(np.int64)
    short = total - int(counts.sum())
    if short:
        # ties broken by position: deterministic
        order = np.argsort(-(quotas - counts), kind="stable")
        counts[order[:short]] += 1
    return counts


def scaled_groups(year: int, scale: float = DEFAULT_SCALE, rows: int | None = None):
    """The demo's tickets per month and description for one year.

    Returns a DataFrame with ``month, description, tickets, unit_fine`` where tickets sum to
    ``round(real yearly tickets * scale)`` (or to ``rows`` when given).
    """
    ref = reference.monthly_by_description()
    groups = ref[ref["year"] == year].reset_index(drop=True)
    if groups.empty:
        raise ValueError(f"no reference figures for {year} (have {min(REFERENCE_YEARS)}-{max(REFERENCE_YEARS)})")
    real_total = int(groups["tickets"].sum())
    target = int(rows) if rows is not None else round(real_total * scale)
    tickets = _apportion(groups["tickets"].to_numpy(dtype=float), target)
    unit = np.rint(groups["fines"].to_numpy() / groups["tickets"].to_numpy()).astype(np.int64)
    out = groups[["month", "description"]].copy()
    out["tickets"] = tickets
    out["unit_fine"] = unit
    return out[out["tickets"] > 0].reset_index(drop=True)


def expected_monthly(years, scale: float = DEFAULT_SCALE):
    """Expected good-row totals per (year, month) of the demo: tickets and fines (the years with
    reference figures; the demo writes no other)."""
    import pandas as pd

    frames = []
    for year in (y for y in years if y in REFERENCE_YEARS):
        groups = scaled_groups(year, scale)
        groups["fines"] = groups["tickets"] * groups["unit_fine"]
        monthly = groups.groupby("month", as_index=False)[["tickets", "fines"]].sum()
        monthly.insert(0, "year", year)
        frames.append(monthly)
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype="int64") for c in ("year", "month", "tickets", "fines")})
    return pd.concat(frames, ignore_index=True)


@cache
def _addresses() -> tuple[list[str], np.ndarray]:
    import pandas as pd

    frame = pd.read_csv(config.package_data("toronto", "addresses_geocoded.csv"))
    addresses = frame["address"].astype(str).tolist()
    # a few places draw most tickets: Zipf-like weights over a fixed shuffle
    rng = np.random.default_rng(7)
    ranks = rng.permutation(len(addresses)) + 1
    weights = 1.0 / ranks**0.9
    return addresses, weights / weights.sum()


def _streets(addresses: list[str]) -> list[str]:
    # "47 COLBORNE ST" -> "COLBORNE ST": cross streets for location4
    return sorted({a.split(" ", 1)[1] for a in addresses if " " in a and a.split(" ", 1)[0].isdigit()})


def year_rows(year: int, scale: float = DEFAULT_SCALE, rows: int | None = None, seed: int = DEFAULT_SEED):
    """All good rows of one demo year, City format, as a dict of column -> list of str."""
    groups = scaled_groups(year, scale, rows)
    rng = np.random.default_rng([seed, year])
    n = int(groups["tickets"].sum())
    month = np.repeat(groups["month"].to_numpy(), groups["tickets"].to_numpy())
    description = np.repeat(groups["description"].to_numpy(dtype=object), groups["tickets"].to_numpy())
    fine = np.repeat(groups["unit_fine"].to_numpy(), groups["tickets"].to_numpy())
    codes = infraction_codes()
    code = np.array([codes[d] for d in groups["description"]], dtype=np.int64)
    code = np.repeat(code, groups["tickets"].to_numpy())

    days_in_month = np.array([calendar.monthrange(year, m)[1] for m in range(1, 13)])
    day = (rng.random(n) * days_in_month[month - 1]).astype(np.int64) + 1
    date = year * 10000 + month * 100 + day
    # tickets cluster in the working day; 2 % carry no time at all
    hour = np.clip(rng.normal(13, 4.5, n), 0, 23.99).astype(np.int64)
    minute = rng.integers(0, 60, n)
    hhmm = hour * 100 + minute
    no_time = rng.random(n) < 0.02

    order = np.lexsort((hhmm, date))
    addresses, weights = _addresses()
    streets = _streets(addresses)
    location2 = np.array(addresses, dtype=object)[rng.choice(len(addresses), n, p=weights)]
    accented = rng.random(n) < 0.002
    location2[accented] = np.array(NON_ASCII_STREETS, dtype=object)[
        rng.integers(0, len(NON_ASCII_STREETS), int(accented.sum()))
    ]
    location1 = np.array(PROXIMITY[0], dtype=object)[rng.choice(len(PROXIMITY[0]), n, p=PROXIMITY[1])]
    crossing = rng.random(n) < 0.12
    location3 = np.where(crossing, "AT", "").astype(object)
    location4 = np.where(crossing, np.array(streets, dtype=object)[rng.integers(0, len(streets), n)], "").astype(object)
    province = np.array(PROVINCES[0], dtype=object)[rng.choice(len(PROVINCES[0]), n, p=PROVINCES[1])]
    tag = rng.integers(0, 100_000, n)

    def col(values):
        return [str(v) for v in values[order]]

    times = np.where(no_time, "", hhmm.astype(str)).astype(object)
    return {
        "tag_number_masked": [f"***{t:05d}" for t in tag[order]],
        "date_of_infraction": col(date),
        "infraction_code": col(code),
        "infraction_description": list(description[order]),
        "set_fine_amount": col(fine),
        "time_of_infraction": list(times[order]),
        "location1": list(location1[order]),
        "location2": list(location2[order]),
        "location3": list(location3[order]),
        "location4": list(location4[order]),
        "province": list(province[order]),
    }


def malformed_rows(year: int) -> list[tuple[str, str]]:
    """Rows the loader must quarantine, one of each kind, as raw CSV lines (without EOL)."""
    y = year
    return [
        ("impossible date", f"***00001,{y}0231,29,PARK PROHIBITED TIME NO PERMIT,30,1200,NR,47 COLBORNE ST,,,ON"),
        ("non-numeric fine", f"***00002,{y}0315,29,PARK PROHIBITED TIME NO PERMIT,N/A,1305,NR,465 HURON ST,,,ON"),
        ("wrong column count", f"***00003,{y}0410,29,PARK PROHIBITED TIME NO PERMIT,30,0915,NR,4645 JANE ST,ON"),
        ("impossible time", f"***00004,{y}0517,29,PARK PROHIBITED TIME NO PERMIT,30,2575,OPP,473 QUEEN ST W,,,ON"),
        ("unparsable date", f"***00005,{y}-06-2,29,PARK PROHIBITED TIME NO PERMIT,30,1410,NR,47 OSSINGTON AVE,,,ON"),
    ]


def _csv_bytes(columns: dict[str, list[str]], start: int, stop: int, extra: list[str], encoding: str) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(CITY_COLUMNS)
    names = CITY_COLUMNS
    writer.writerows(zip(*(columns[c][start:stop] for c in names), strict=True))
    for line in extra:
        buffer.write(line + "\r\n")
    return buffer.getvalue().encode(encoding)


def write_year(
    out_dir: Path,
    year: int,
    scale: float = DEFAULT_SCALE,
    rows: int | None = None,
    seed: int = DEFAULT_SEED,
    with_malformed: bool = True,
    part_rows: int | None = None,
    bare: bool | None = None,
) -> DemoFile:
    """Write one year in the City's format and return what was written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    columns = year_rows(year, scale, rows, seed)
    n = len(columns["date_of_infraction"])
    encoding = "utf-8" if year >= UTF8_FROM_YEAR else "cp1252"
    if part_rows is None:
        part_rows = max(1000, int(FULL_SCALE_PART_ROWS * (n / 2_200_000)))
    bounds = list(range(0, n, part_rows)) or [0]
    bad = [line for _, line in malformed_rows(year)] if with_malformed else []
    bare = (year in BARE_CSV_YEARS) if bare is None else bare
    if bare:
        path = out_dir / f"Parking_Tags_Data_{year}.csv"
        path.write_bytes(_csv_bytes(columns, 0, n, bad, encoding))
    else:
        path = out_dir / f"parking-tickets-{year}.zip"
        tmp = path.with_suffix(".zip.part")
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
            for k, start in enumerate(bounds, 1):
                stop = min(start + part_rows, n)
                # planted rows go to the middle of the last part
                extra = bad if start == bounds[-1] else []
                name = f"Parking_Tags_Data_{year}_{k}.csv" if len(bounds) > 1 else f"Parking_Tags_Data_{year}.csv"
                archive.writestr(name, _csv_bytes(columns, start, stop, extra, encoding))
        tmp.replace(path)
    return DemoFile(path, year, n, len(bad), encoding)


def demo_source_dir(dataset: str = "toronto_parking_tickets") -> Path:
    return config.state_dir() / "demo" / dataset


def source_folder(years=None) -> Path:
    """The ``demo`` source of the tickets dataset: the demo files of ``years`` (all the years with
    reference figures when None), written once, in the state folder."""
    wanted = [y for y in (years or REFERENCE_YEARS) if y in REFERENCE_YEARS] or list(REFERENCE_YEARS)
    build(years=wanted)
    return demo_source_dir()


def build(
    out_dir: Path | None = None,
    years=REFERENCE_YEARS,
    scale: float = DEFAULT_SCALE,
    seed: int = DEFAULT_SEED,
    force: bool = False,
) -> list[DemoFile]:
    """Write the demo files for ``years`` (skipping years already written unless ``force``)."""
    out_dir = out_dir or demo_source_dir()
    written = []
    for year in years:
        existing = [p for p in out_dir.glob(f"*{year}*") if p.suffix in (".zip", ".csv")] if out_dir.exists() else []
        if existing and not force:
            continue
        written.append(write_year(out_dir, year, scale=scale, seed=seed))
    return written


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m opsbook.demo.tickets",
        description="Write City-format demo parking-ticket files that follow the real figures.",
        epilog="example: python -m opsbook.demo.tickets --years 2016-2018 --scale 0.01 --out data/demo",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="folder (default: .opsbook/demo/toronto_parking_tickets)"
    )
    parser.add_argument("--years", default="2011-2022", help="years to write, e.g. 2016-2018 (default 2011-2022)")
    parser.add_argument(
        "--scale", type=float, default=DEFAULT_SCALE, help="fraction of the real ticket counts (default 0.01)"
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--force", action="store_true", help="rewrite years already present")
    args = parser.parse_args(argv)
    from opsbook.windows import year_list

    out = args.out or demo_source_dir()
    files = build(out, year_list(args.years), args.scale, args.seed, args.force)
    for f in files:
        print(f"{f.path}  {f.rows:,} rows + {f.malformed} malformed  ({f.encoding})")
    print(f"demo files in {out} ({len(files)} written)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
