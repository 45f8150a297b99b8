"""The demo: stand-in data for each team's input, and ``make demo`` (``python -m opsbook.demo``).

Nothing outside this package imports it. It reaches the library the way a plugin does: the
``opsbook.plugins`` entry point (``pyproject.toml``) calls :func:`register`, which registers a
``demo`` source for each kind of input and a ``demo`` reference for the tickets suite. A
procedure given ``source=demo`` asks the source where to read; the source writes its seeded
files once (in ``<state>/demo/``) and answers with their folder, which the procedure then reads
like any team's folder.

==================  ====================================================================
module              stand-in for
==================  ====================================================================
:mod:`.tickets`     the City's parking-ticket files (1 % of the real monthly figures)
:mod:`.cameras`     the red-light and ASE camera charges files
:mod:`.safety`      the traffic-safety index batches and intersections
:mod:`.weather`     the warehouse's Open-Meteo JSON files
==================  ====================================================================
"""

from __future__ import annotations

NAME = "demo"


def register() -> None:
    """Register the demo sources and reference (called through the ``opsbook.plugins`` entry point)."""
    from opsbook import standins

    standins.register_source(
        NAME,
        "toronto_parking_tickets",
        "opsbook.demo.tickets:source_folder",
        "City-format files following the City's monthly figures at 1 %",
    )
    standins.register_source(
        NAME,
        "toronto_camera_charges",
        "opsbook.demo.cameras:source_folder",
        "red-light and ASE charges adding up to the runbook's sanity totals",
    )
    standins.register_source(
        NAME, "safety_indices", "opsbook.demo.safety:source_folder", "hourly batches of 15-minute safety indices"
    )
    standins.register_source(
        NAME,
        "safety_index_files",
        "opsbook.demo.safety:index_files",
        "the bucket's processed/indices/indices_<date>.parquet for November 2025, older days in legacy column names",
    )
    standins.register_source(
        NAME,
        "safety_parquet_tree",
        "opsbook.demo.safety:local_tree",
        "the collector's local Parquet tree of October 2025: daily index files and raw BSM files",
    )
    standins.register_source(
        NAME, "weather_observations", "opsbook.demo.weather:source_folder", "Open-Meteo JSON files, a few malformed"
    )
    standins.register_reference(
        "toronto_parking_tickets",
        NAME,
        "opsbook.demo.tickets:expected_monthly",
        "the demo input's figures: the City's monthly figures scaled to 1 %, exact",
        source=NAME,
    )
