"""The traffic-safety migration's domain code (runbook: trafficsafety_postgres_migration.md).

Phase 3 writes every batch three ways: the indices to the bucket's processed files and to
PostgreSQL, the raw BSM files to the bucket's raw archive; the reconcile checks that they agree;
Phase 5 builds the rollups, Phase 6 backfills history from the bucket.

==================  ====================================================================
module              what
==================  ====================================================================
:mod:`.schema`      the runbook's tables (realtime partitioned by day, rollups, intersections,
                    normalization constants, the quality log) and the partitions ahead
:mod:`.layout`      the bucket: processed day files and raw objects; rows in the spec's types
:mod:`.batches`     the incoming batch files (chosen by window from their footers) and
                    the ``intersections.csv`` upserted beside them
:mod:`.dualwrite`   each batch staged, then written to every target, with the write ledger
:mod:`.sides`       the two sides of a reconcile read as Arrow (lake files, PostgreSQL
                    through ADBC), and their row counts without a scan where possible
:mod:`.compare`     lake against PostgreSQL: the hash join in DuckDB, each difference
                    classified (the entry point, :func:`.compare.compare`)
:mod:`.buckets`     the path past ``row_limit`` rows: bucketed checksums pushed down to
                    both sides, only the mismatched buckets fetched
:mod:`.archive`     the archive's objects against the write ledger
:mod:`.repair`      the source of truth re-applied to the differing keys only
:mod:`.rollups`     hourly and daily rollups with the peak hour, checked against the readings
:mod:`.migrate`     the local Parquet tree copied to the bucket, MD5 verified, resumable
:mod:`.backfill`    the bucket's daily index files into the realtime partitions by COPY
==================  ====================================================================

Domain modules compute and store; they never display (the procedures do).
"""

# here, not in .dualwrite, so that a procedure's parameters can name them without importing pyarrow
TARGETS = ("lake", "postgres", "archive")
INDEX_TARGETS = ("lake", "postgres")  # where an index batch goes
RAW_TARGETS = ("archive",)  # where a raw file (bsm_*.parquet) goes


def write_lock(dataset: str) -> str:
    """The lock every writer of a dataset's dual-write holds (dual_write; a reconcile's repair):
    they share the write ledger and the staging area."""
    from opsbook.history.locks import key

    return key("dual_write", dataset)
