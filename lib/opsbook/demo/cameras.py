"""Seeded demo camera charges (red light and automated speed enforcement) at real addresses.

Each program's yearly charges per site add up exactly to the Toronto runbook's sanity totals
(1,094,217 red-light tickets / $355,600,000; 2,054,677 ASE tickets / $102,733,850).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from opsbook import config
from opsbook.demo.tickets import DEFAULT_SEED, _apportion

# The Toronto runbook's sanity totals over all years of each program.
CAMERA_PROGRAMS = {
    "red_light": {
        "tickets": 1_094_217,
        "revenue": 355_600_000,
        "years": range(2011, 2023),
        "sites": 80,
        "file": "red_light_camera_charges.csv",
    },
    "ase": {
        "tickets": 2_054_677,
        "revenue": 102_733_850,
        "years": range(2020, 2024),
        "sites": 50,
        "file": "ase_camera_charges.csv",
    },
}
CAMERA_COLUMNS = ["site_code", "location", "latitude", "longitude", "year", "charges", "fines"]


def camera_charges(program: str, seed: int = DEFAULT_SEED):
    """Yearly charges per camera site whose totals are exactly the runbook's sanity totals.

    Sites are real geocoded Toronto addresses; volumes grow with the program and differ per
    site (a few busy cameras, many quiet ones). Returns a DataFrame in CAMERA_COLUMNS order.
    """
    import pandas as pd

    spec = CAMERA_PROGRAMS[program]
    rng = np.random.default_rng([seed, len(program), spec["sites"]])
    frame = pd.read_csv(config.package_data("toronto", "addresses_geocoded.csv"))
    picked = frame.iloc[rng.choice(len(frame), spec["sites"], replace=False)].reset_index(drop=True)
    years = list(spec["years"])
    busy = rng.gamma(1.5, 1.0, spec["sites"])  # site weights
    growth = np.linspace(0.7, 1.3, len(years))  # programs grow over the years
    # a site starts working in some year of the program (red-light cameras were added over time)
    start = rng.integers(0, max(1, len(years) // 2), spec["sites"])
    weights = np.array(
        [[busy[s] * growth[y] * (y >= start[s]) for s in range(spec["sites"])] for y in range(len(years))]
    )
    tickets = _apportion(weights.ravel(), spec["tickets"]).reshape(weights.shape)
    revenue = _apportion(tickets.ravel().astype(float), spec["revenue"]).reshape(weights.shape)
    prefix = "RLC" if program == "red_light" else "ASE"
    rows = []
    for y, year in enumerate(years):
        for s in range(spec["sites"]):
            if tickets[y, s] == 0:
                continue
            rows.append(
                {
                    "site_code": f"{prefix}-{s + 1:03d}",
                    "location": picked.loc[s, "address"],
                    "latitude": round(float(picked.loc[s, "latitude"]), 6),
                    "longitude": round(float(picked.loc[s, "longitude"]), 6),
                    "year": year,
                    "charges": int(tickets[y, s]),
                    "fines": int(revenue[y, s]),
                }
            )
    return pd.DataFrame(rows, columns=CAMERA_COLUMNS)


def camera_dir() -> Path:
    return config.state_dir() / "demo" / "cameras"


def build_cameras(out_dir: Path | None = None, force: bool = False) -> list[Path]:
    """Write the demo camera charges files (red light and ASE), once."""
    out_dir = out_dir or camera_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for program, spec in CAMERA_PROGRAMS.items():
        path = out_dir / spec["file"]
        if path.exists() and not force:
            continue
        tmp = path.with_suffix(".csv.part")
        camera_charges(program).to_csv(tmp, index=False, lineterminator="\r\n")
        tmp.replace(path)
        written.append(path)
    return written


def source_folder(**_hints) -> Path:
    """The ``demo`` source of the camera charges: the two files, written once."""
    build_cameras()
    return camera_dir()
