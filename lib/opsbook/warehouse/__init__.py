"""The weather warehouse of the DW runbook (dw_prefect_operations.md): raw -> core -> mart.

One module per step of ``refresh_marts``, each safe to run again; every step takes the
warehouse lock (:data:`.schema.LOCK`) for as long as it works.

==================  ====================================================================
module              what
==================  ====================================================================
:mod:`.schema`      the DDL of the ``raw``, ``core`` and ``mart`` schemas, the lock, and
                    the version of core (what a checkpoint saw)
:mod:`.land`        the source files (``<location>/<YYYY-MM-DD>.json``), staged as they
                    came for the run (``raw.weather_landing``)
:mod:`.transform`   one transaction: the staged files into ``raw.weather_observations``,
                    parsed and checked in SQL, upserted into ``core``; malformed files
                    and hours quarantined in ``raw.weather_rejected``; too many of them
                    roll it all back
:mod:`.checkpoint`  the runbook's expectations on core over the window (one snapshot)
:mod:`.marts`       the materialized views, refreshed only after a passing checkpoint of
                    the core they read
==================  ====================================================================

Python only reads the files and feeds them to COPY; parsing, checking and upserting happen in
the database. Domain modules compute and store; they never display (the procedure does).
"""
