"""Seeded traffic-safety demo data: intersections and 15-minute safety indices, in batches.

Readings follow a daily traffic profile (morning and evening peaks, Toronto time), larger
intersections see more traffic, indices rise with volume and speed. Sensors miss intervals
(2 % of single slots, and a few outages of hours); collection runs hourly, and 3 % of the
readings arrive late, in a batch one to six hours after their own hour. As the ``demo`` source
of ``safety_indices`` (:func:`source_folder`), the batches are Parquet files in the state folder,
read by dual_write like any team's incoming folder.
"""

from __future__ import annotations

import datetime as dt
import io
from dataclasses import dataclass

import numpy as np

from opsbook import config

DEFAULT_SEED = 20251101
SLOT = np.timedelta64(15, "m")
TORONTO_UTC_OFFSET_HOURS = -5  # EST; a demo does not need daylight saving
# the indices are on the runbook's 0-100 scale, where above 75 is high risk: the busiest
# intersections cross it at the rush-hour peaks
INDEX_SCALE = 80.0


@dataclass(frozen=True)
class Batch:
    batch_id: str
    hour: dt.datetime  # the collection hour (UTC)
    table: object  # pyarrow.Table with the safety_indices columns


def intersections(count: int = 8, seed: int = DEFAULT_SEED):
    """``count`` intersections at real geocoded Toronto addresses, as a pandas DataFrame."""
    import pandas as pd

    rng = np.random.default_rng([seed, count])
    frame = pd.read_csv(config.package_data("toronto", "addresses_geocoded.csv"))
    picked = frame.iloc[rng.choice(len(frame), count, replace=False)].reset_index(drop=True)
    return pd.DataFrame(
        {
            "id": np.arange(1001, 1001 + count, dtype=np.int32),
            "name": picked["address"],
            "latitude": picked["latitude"].round(6),
            "longitude": picked["longitude"].round(6),
            "installed_on": [dt.date(2024, 1, 1) + dt.timedelta(days=int(d)) for d in rng.integers(0, 300, count)],
        }
    )


def readings(start: dt.date, days: int, count: int = 8, seed: int = DEFAULT_SEED):
    """Every reading of ``count`` intersections over ``days`` days from ``start`` (UTC), with the
    missing intervals left out. Returns (pyarrow.Table, arrival times as numpy datetime64[m])."""
    import pyarrow as pa

    rng = np.random.default_rng([seed, count, days])
    slots = days * 96
    base = np.datetime64(start.isoformat(), "m")
    times = base + np.arange(slots) * SLOT
    ids = np.arange(1001, 1001 + count, dtype=np.int32)
    size = rng.gamma(2.0, 1.0, count) + 0.5  # busy and quiet intersections
    hour_local = ((np.arange(slots) % 96) / 4 + TORONTO_UTC_OFFSET_HOURS) % 24
    profile = 0.15 + np.exp(-((hour_local - 8.0) ** 2) / 3) + 0.9 * np.exp(-((hour_local - 17.0) ** 2) / 4)
    volume = rng.poisson(np.outer(size, profile) * 40).astype(np.int32)  # intersections x slots
    speed = np.clip(rng.normal(52 - 8 * profile, 5, (count, slots)), 20, 95)
    vehicle = INDEX_SCALE * (0.6 * (speed / 50) ** 2 + 0.002 * volume + rng.normal(0, 0.05, (count, slots)))
    vru = INDEX_SCALE * (0.4 * profile + 0.3 * (speed / 50) + rng.normal(0, 0.05, (count, slots)))
    vehicle, vru = np.clip(vehicle, 0, 100), np.clip(vru, 0, 100)
    combined = 0.5 * vehicle + 0.5 * vru
    weight = volume / (volume + 30.0)  # empirical Bayes: little traffic, more shrinkage to the mean

    def shrunk(index):
        return weight * index + (1 - weight) * index.mean(axis=1, keepdims=True)

    vru_count = rng.poisson(np.outer(size, profile) * 6).astype(np.int32)  # pedestrians and cyclists
    no_vru_count = rng.random((count, slots)) < 0.01  # a pedestrian counter that did not report
    vehicle_events = rng.poisson(0.02 * volume).astype(np.int32)  # hard braking, conflicts
    vru_events = rng.poisson(0.05 * vru_count).astype(np.int32)
    present = rng.random((count, slots)) >= 0.02
    for _ in range(max(1, days // 3)):  # outages of a few hours
        sensor, first = rng.integers(0, count), rng.integers(0, slots - 24)
        present[sensor, first : first + rng.integers(4, 24)] = False
    delay = rng.integers(1, 10, (count, slots)).astype("timedelta64[m]")
    late = rng.random((count, slots)) < 0.03
    delay[late] += (rng.integers(1, 7, int(late.sum())) * 60).astype("timedelta64[m]")
    arrival = (times + SLOT)[None, :] + delay
    keep = present.ravel()
    stamps = np.tile(times, count)[keep]
    hour_of_day = (stamps.astype("datetime64[h]") - stamps.astype("datetime64[D]")).astype(np.int32)
    day_of_week = ((stamps.astype("datetime64[D]").astype(np.int64) + 4) % 7).astype(np.int32)  # 1970-01-01: Thu

    def column(values, digits=6):
        return pa.array(values.ravel()[keep].round(digits))

    table = pa.table(
        {
            "intersection_id": pa.array(np.repeat(ids, slots)[keep]),
            "timestamp": pa.array(stamps.astype("datetime64[us]"), pa.timestamp("us", tz="UTC")),
            "combined_index": column(combined),
            "combined_index_eb": column(shrunk(combined)),
            "vru_index": column(vru),
            "vru_index_eb": column(shrunk(vru)),
            "vehicle_index": column(vehicle),
            "vehicle_index_eb": column(shrunk(vehicle)),
            "traffic_volume": pa.array(volume.ravel()[keep]),
            "vru_count": pa.array(vru_count.ravel()[keep], mask=no_vru_count.ravel()[keep]),
            "vehicle_event_count": pa.array(vehicle_events.ravel()[keep]),
            "vru_event_count": pa.array(vru_events.ravel()[keep]),
            "hour_of_day": pa.array(hour_of_day),
            "day_of_week": pa.array(day_of_week),
        }
    )
    return table, arrival.ravel()[keep]


def batches(start: dt.date, days: int, count: int = 8, seed: int = DEFAULT_SEED) -> list[Batch]:
    """The readings as hourly collection batches, late arrivals in later batches."""
    table, arrival = readings(start, days, count, seed)
    # a reading arriving after the window is collected by the window's last batch, so that
    # consecutive windows (one day, then the next) never write the same batch twice
    last_hour = np.datetime64((start + dt.timedelta(days=days)).isoformat(), "h") - np.timedelta64(1, "h")
    hours = np.minimum(arrival.astype("datetime64[h]"), last_hour)
    order = np.argsort(hours, kind="stable")
    table, hours = table.take(order), hours[order]
    unique, first = np.unique(hours, return_index=True)
    bounds = [*first.tolist(), len(hours)]
    out = []
    for i, hour in enumerate(unique):
        moment = hour.astype("datetime64[s]").astype(dt.datetime).replace(tzinfo=dt.UTC)
        out.append(Batch(f"safety-{moment:%Y%m%dT%H}", moment, table.slice(bounds[i], bounds[i + 1] - bounds[i])))
    return out


DEFAULT_START = dt.date(2025, 11, 1)
DEFAULT_DAYS = 7
DEFAULT_INTERSECTIONS = 8


def source_dir():
    return config.state_dir() / "demo" / "safety_indices"


def bsm_messages(hour: dt.datetime, count: int, per_intersection: int = 12, seed: int = DEFAULT_SEED):
    """Raw Basic Safety Messages of one collection hour (UTC): vehicles' positions and speeds
    near each intersection, as a pyarrow.Table (what the raw archive keeps byte for byte)."""
    import pyarrow as pa

    rng = np.random.default_rng([seed, count, int(hour.timestamp())])
    n = count * per_intersection
    frame = intersections(count, seed)
    at = rng.integers(0, 3600, n)
    start = np.datetime64(hour.replace(tzinfo=None).isoformat(), "s")
    return pa.table(
        {
            "timestamp": pa.array((start + at).astype("datetime64[us]"), pa.timestamp("us", tz="UTC")),
            "intersection_id": pa.array(np.repeat(frame["id"].to_numpy(), per_intersection)),
            "vehicle_id": pa.array([f"veh-{v:05d}" for v in rng.integers(0, 50_000, n)]),
            "latitude": pa.array(np.repeat(frame["latitude"].to_numpy(), per_intersection) + rng.normal(0, 2e-4, n)),
            "longitude": pa.array(np.repeat(frame["longitude"].to_numpy(), per_intersection) + rng.normal(0, 2e-4, n)),
            "speed_kmh": pa.array(np.clip(rng.normal(45, 12, n), 0, 120).round(1)),
            "heading_deg": pa.array(rng.integers(0, 360, n).astype(np.int16)),
        }
    )


def source_folder(window=None, **_hints):
    """The ``demo`` source of the safety indices: the default batches (7 days from 2025-11-01,
    8 intersections, late arrivals in later batches) as one Parquet file per batch, a raw BSM
    file per collection hour (``bsm_<date>_<HHMMSS>.parquet``, as the collector names them), and
    ``intersections.csv``, written once in ``<state>/demo/safety_indices/``.

    ``window`` is not used: every run reads the same batches, and dual_write picks the window's.
    Each file is written whole (temporary name, then rename); ``intersections.csv`` goes last,
    so its presence says the folder is complete.
    """
    from opsbook.stores import uri

    folder = source_dir()
    done = folder / "intersections.csv"
    if done.is_file():
        return folder
    import pyarrow.parquet as pq

    for batch in batches(DEFAULT_START, DEFAULT_DAYS, DEFAULT_INTERSECTIONS):
        sink = io.BytesIO()
        pq.write_table(batch.table, sink, compression="zstd")
        uri.write_bytes(str(folder / f"{batch.batch_id}.parquet"), sink.getvalue())
        raw = io.BytesIO()
        pq.write_table(bsm_messages(batch.hour, DEFAULT_INTERSECTIONS), raw, compression="snappy")
        uri.write_bytes(str(folder / f"bsm_{batch.hour:%Y-%m-%d}_{batch.hour:%H%M%S}.parquet"), raw.getvalue())
    text = intersections(DEFAULT_INTERSECTIONS).to_csv(index=False)
    uri.write_bytes(str(done), text.encode("utf-8"), "text/csv")
    return folder


def plant_differences(
    conn, table: str, seed: int = 7, deletes: int = 50, inserts: int = 50, changes: int = 100
) -> dict:
    """Change PostgreSQL against the lake and return the keys reconcile must report, by class.

    ``changes`` are split four ways: NULL <-> value, a float beyond its tolerance, a float below
    it (not a difference), and a timestamp shifted by five hours into a slot with no reading.
    """
    from psycopg import sql

    rng = np.random.default_rng(seed)
    t = sql.Identifier(table)
    quarter = changes // 4
    keys = conn.execute(sql.SQL("SELECT intersection_id, timestamp FROM {} ORDER BY 1, 2").format(t)).fetchall()
    first, last = keys[0][1], keys[-1][1]
    # rows whose slot five hours later is empty (and inside the data), for the time-zone mistakes
    empty_after = conn.execute(
        sql.SQL(
            "SELECT a.intersection_id, a.timestamp FROM {} a WHERE a.timestamp + interval '5 hours' <= %s "
            "AND NOT EXISTS (SELECT 1 FROM {} b WHERE b.intersection_id = a.intersection_id "
            "AND b.timestamp = a.timestamp + interval '5 hours') ORDER BY 1, 2"
        ).format(t, t),
        (last,),
    ).fetchall()
    shifted = [empty_after[i] for i in rng.choice(len(empty_after), min(quarter, len(empty_after)), replace=False)]
    landing = {(k[0], k[1] + dt.timedelta(hours=5)) for k in shifted}
    rest = [k for k in keys if k not in set(shifted) and k not in landing]
    picked = [rest[i] for i in rng.choice(len(rest), deletes + 3 * quarter, replace=False)]
    expected: dict[str, set] = {
        "missing in postgres": set(),
        "missing in lake": set(),
        "value drift": set(),
        "timestamp shifted": set(),
    }
    where = sql.SQL(" WHERE intersection_id = %s AND timestamp = %s")
    for key in picked[:deletes]:
        conn.execute(sql.SQL("DELETE FROM {}").format(t) + where, key)
        expected["missing in postgres"].add(key)
    for i in range(inserts):  # sensors the lake never heard of
        key = (90_001 + i, first + dt.timedelta(minutes=15 * int(rng.integers(0, 96))))
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (intersection_id, timestamp, combined_index, combined_index_eb, vru_index, "
                "vehicle_index, traffic_volume) VALUES (%s, %s, 50, 50, 50, 50, 10)"
            ).format(t),
            key,
        )
        expected["missing in lake"].add(key)
    changed = picked[deletes:]
    for key in changed[:quarter]:  # NULL <-> value
        conn.execute(
            sql.SQL("UPDATE {} SET vru_count = CASE WHEN vru_count IS NULL THEN 42 END").format(t) + where, key
        )
        expected["value drift"].add(key)
    for key in changed[quarter : 2 * quarter]:  # beyond the tolerance
        conn.execute(sql.SQL("UPDATE {} SET vru_index = vru_index + 0.5").format(t) + where, key)
        expected["value drift"].add(key)
    for key in changed[2 * quarter : 3 * quarter]:  # within it: not a difference
        conn.execute(sql.SQL("UPDATE {} SET combined_index = combined_index + 0.00001").format(t) + where, key)
    for key in shifted:  # written as if local time were UTC
        conn.execute(sql.SQL("UPDATE {} SET timestamp = timestamp + interval '5 hours'").format(t) + where, key)
        expected["timestamp shifted"].add(key)
    return expected


# the column names of the team's older index files (the dataset spec's source.rename maps them back)
LEGACY_NAMES = {
    "intersection_id": "intersection",
    "timestamp": "time_15min",
    "combined_index": "Combined_Index",
    "combined_index_eb": "Combined_Index_EB",
    "vru_index": "VRU_Index",
    "vru_index_eb": "VRU_Index_EB",
    "vehicle_index": "Vehicle_Index",
    "vehicle_index_eb": "Vehicle_Index_EB",
}
INDEX_FILES_DAYS = 30
LEGACY_UNTIL = dt.date(2025, 11, 10)  # files before this day were written by the older collector


def write_index_files(root, start: dt.date, chunks: list[int], count: int, seed: int = DEFAULT_SEED, legacy_until=None):
    """``processed/indices/indices_<date>.parquet`` under ``root``, one per UTC day, as the team's
    collector writes them: the readings of ``chunks`` consecutive spans of days from ``start``
    (each span as :func:`readings` makes it, so a span equal to the batches' holds the same rows),
    the days before ``legacy_until`` in the older column names and without the count, hour and
    weekday columns. Returns the rows written."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from opsbook.stores import uri

    rows = 0
    first = start
    for span in chunks:
        table, _ = readings(first, span, count, seed)
        days = pc.cast(table.column("timestamp"), pa.date32())
        for offset in range(span):
            day = first + dt.timedelta(days=offset)
            part = table.filter(pc.equal(days, pa.scalar(day, pa.date32())))
            if legacy_until and day < legacy_until:
                part = part.select([c for c in part.column_names if c in LEGACY_NAMES])
                part = part.rename_columns([LEGACY_NAMES[c] for c in part.column_names])
            sink = io.BytesIO()
            pq.write_table(part, sink, compression="snappy")
            uri.write_bytes(uri.join(str(root), "processed", "indices", f"indices_{day}.parquet"), sink.getvalue())
            rows += part.num_rows
        first += dt.timedelta(days=span)
    return rows


def index_files(window=None, **_hints):
    """The ``demo`` source of the bucket's daily index files: November 2025 (30 days from
    2025-11-01, the demo's eight intersections; the first week's readings are those of the
    dual-write batches), the first nine days in the legacy column names, written once in
    ``<state>/demo/bucket/``."""
    folder = config.state_dir() / "demo" / "bucket"
    done = folder / ".complete"
    if not done.is_file():
        # the first week holds the readings of the demo's dual-write batches, so the two agree
        chunks = [DEFAULT_DAYS, INDEX_FILES_DAYS - DEFAULT_DAYS]
        write_index_files(folder, DEFAULT_START, chunks, DEFAULT_INTERSECTIONS, legacy_until=LEGACY_UNTIL)
        done.write_text("written\n")
    return folder


LOCAL_START = dt.date(2025, 10, 2)  # the history the local tree holds: the 30 days before the dual-write


def local_tree(**_hints):
    """The ``demo`` local Parquet tree (the collector's ``backend/data/parquet`` before the
    bucket): ``processed/indices/indices_<date>.parquet`` for 2025-10-02..2025-10-31 (the first
    nine days in the older column names) and the raw BSM files of the last two days, flat in
    ``raw/bsm/``; written once in ``<state>/demo/local-parquet/``."""
    import pyarrow.parquet as pq

    from opsbook.stores import uri

    folder = config.state_dir() / "demo" / "local-parquet"
    done = folder / ".complete"
    if done.is_file():
        return folder
    write_index_files(folder, LOCAL_START, [30], DEFAULT_INTERSECTIONS, legacy_until=LOCAL_START + dt.timedelta(9))
    for day in (dt.date(2025, 10, 30), dt.date(2025, 10, 31)):
        for hour in range(24):
            moment = dt.datetime.combine(day, dt.time(hour), dt.UTC)
            sink = io.BytesIO()
            pq.write_table(bsm_messages(moment, DEFAULT_INTERSECTIONS), sink, compression="snappy")
            uri.write_bytes(str(folder / "raw" / "bsm" / f"bsm_{day}_{hour:02d}0000.parquet"), sink.getvalue())
    done.write_text("written\n")
    return folder
