"""The Toronto parking ETL's domain code (runbook: toronto_parking_etl.md).

==================  ====================================================================
module              what
==================  ====================================================================
:mod:`.tickets`     the City's ticket files into ``parking_tickets``, one year at a time
:mod:`.yearly`      the yearly tables per location (tickets, red-light and ASE cameras)
:mod:`.cameras`     the camera GeoJSON and summaries on the lake
:mod:`.cache`       the map payloads in Redis
:mod:`.backfill`    load and aggregate a window of years with a ledger, resume and a pool
:mod:`.reference`   the City's published figures, the reference for the check suite
==================  ====================================================================

Domain modules compute and store; they never display (the procedures do).
"""
