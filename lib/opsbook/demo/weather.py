"""Seeded demo input for the weather warehouse: Open-Meteo-like hourly payloads.

One JSON file per location per day, laid out ``<folder>/<location>/<YYYY-MM-DD>.json``, each in
the shape the Open-Meteo forecast API returns for ``hourly=temperature_2m,relative_humidity_2m,
precipitation,wind_speed_10m&timezone=GMT`` (times in UTC, ``utc_offset_seconds`` 0). The
locations are Canadian cities at their real coordinates; temperatures follow each city's
November climate (a daily mean that wanders from day to day, a diurnal swing peaking in the
local mid-afternoon), humidity moves against temperature, and rain comes in spells.

A few files are planted malformed (``MALFORMED``): one truncated mid-array, one missing the
humidity series, one with a text value where a temperature belongs. They exercise the
quarantine while staying well under the procedure's default reject threshold.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

SEED = 20241101
FIRST_DAY = dt.date(2024, 11, 1)
DAYS = 10
MARKER = ".complete"  # written last: a folder without it is rebuilt


@dataclass(frozen=True)
class City:
    name: str
    latitude: float
    longitude: float
    elevation: float
    utc_offset_hours: int  # standard time in November, for the diurnal cycle
    mean_c: float  # November mean temperature
    swing_c: float  # half the typical diurnal range
    spread_c: float  # day-to-day variability of the daily mean
    rain_chance: float  # chance a day has a rain spell


CITIES = (
    City("Toronto", 43.6532, -79.3832, 76.0, -5, 5.5, 3.5, 3.0, 0.40),
    City("Montreal", 45.5017, -73.5673, 36.0, -5, 3.0, 3.0, 3.0, 0.45),
    City("Vancouver", 49.2827, -123.1207, 70.0, -8, 7.5, 2.5, 1.5, 0.70),
    City("Calgary", 51.0447, -114.0719, 1045.0, -7, 0.5, 5.5, 5.0, 0.20),
    City("Halifax", 44.6488, -63.5752, 20.0, -4, 6.5, 3.0, 2.5, 0.50),
)

# (city, day offset) -> how the file is spoiled
MALFORMED = {
    ("Calgary", 3): "truncated",
    ("Halifax", 7): "missing humidity",
    ("Montreal", 5): "text temperature",
}


def file_path(folder: Path, city: str, day: dt.date) -> Path:
    return folder / city / f"{day.isoformat()}.json"


def payload(city: City, day: dt.date, rng: random.Random, daily_mean: float) -> dict:
    """One day of hourly observations for ``city``, as Open-Meteo returns it."""
    times, temps, humidity, precip, wind = [], [], [], [], []
    rain_start = rng.randrange(24) if rng.random() < city.rain_chance else None
    rain_hours = rng.randint(2, 8)
    base_wind = rng.uniform(8, 22)
    for hour in range(24):
        local = (hour + city.utc_offset_hours) % 24
        # coldest near 06:00 local, warmest near 15:00 local
        diurnal = -math.cos((local - 3) / 24 * 2 * math.pi)
        temp = daily_mean + city.swing_c * diurnal + rng.gauss(0, 0.4)
        raining = rain_start is not None and rain_start <= hour < rain_start + rain_hours
        rh = 78 - 9 * diurnal + (12 if raining else 0) + rng.gauss(0, 3)
        times.append(f"{day.isoformat()}T{hour:02d}:00")
        temps.append(round(temp, 1))
        humidity.append(int(min(100, max(30, round(rh)))))
        precip.append(round(rng.expovariate(1 / 1.2), 1) if raining else 0.0)
        wind.append(round(max(0.0, base_wind + rng.gauss(0, 4) + (6 if raining else 0)), 1))
    return {
        "latitude": city.latitude,
        "longitude": city.longitude,
        "generationtime_ms": 0.08,
        "utc_offset_seconds": 0,
        "timezone": "GMT",
        "timezone_abbreviation": "GMT",
        "elevation": city.elevation,
        "hourly_units": {
            "time": "iso8601",
            "temperature_2m": "°C",
            "relative_humidity_2m": "%",
            "precipitation": "mm",
            "wind_speed_10m": "km/h",
        },
        "hourly": {
            "time": times,
            "temperature_2m": temps,
            "relative_humidity_2m": humidity,
            "precipitation": precip,
            "wind_speed_10m": wind,
        },
    }


def spoil(document: dict, how: str) -> str:
    """The text of a malformed file."""
    if how == "truncated":
        text = json.dumps(document)
        return text[: int(len(text) * 0.6)]  # cut mid-array, as a dropped connection leaves it
    if how == "missing humidity":
        del document["hourly"]["relative_humidity_2m"]
    elif how == "text temperature":
        document["hourly"]["temperature_2m"][13] = "n/a"
    return json.dumps(document)


def build(
    folder: Path,
    cities: tuple[City, ...] = CITIES,
    first_day: dt.date = FIRST_DAY,
    days: int = DAYS,
    malformed: dict[tuple[str, int], str] | None = None,
    seed: int = SEED,
) -> list[Path]:
    """Write the demo files under ``folder`` (the same bytes for the same arguments); their paths."""
    malformed = MALFORMED if malformed is None else malformed
    written = []
    for city in cities:
        rng = random.Random(f"{seed}:{city.name}")
        mean = city.mean_c
        for offset in range(days):
            day = first_day + dt.timedelta(days=offset)
            # the daily mean wanders around the climate mean (an AR(1) walk)
            mean = city.mean_c + 0.6 * (mean - city.mean_c) + rng.gauss(0, city.spread_c)
            document = payload(city, day, rng, mean)
            how = malformed.get((city.name, offset))
            text = spoil(document, how) if how else json.dumps(document)
            path = file_path(folder, city.name, day)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            written.append(path)
    return written


def source_folder(**hints) -> Path:
    """The ``demo`` source of ``weather_observations`` (registered in :mod:`opsbook.demo`): the
    demo files, written once, in the state folder."""
    return ensure_demo()


def ensure_demo(folder: Path | None = None) -> Path:
    """The demo folder (``<state dir>/weather-demo``), built on first use."""
    from opsbook import config

    folder = folder or config.state_dir() / "weather-demo"
    if not (folder / MARKER).is_file():
        build(folder)
        (folder / MARKER).write_text("built by opsbook.demo.weather\n")
    return folder
