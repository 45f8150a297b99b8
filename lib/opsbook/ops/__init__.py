"""Operations across the runbooks: retention and the morning check.

==================  ====================================================================
module              what
==================  ====================================================================
:mod:`.policy`      retention policies (``params/policies/<name>.yaml``): the model,
                    loading with file-and-line errors, and the parameter naming one
:mod:`.retention`   plan (one read-only snapshot) and apply a policy: drop old range
                    partitions, delete old rows, VACUUM ANALYZE (trafficsafety Task 5.3,
                    Toronto's "Disk full" troubleshooting)
:mod:`.health`      the morning check of breezeway_etl.md: lag, failures and row trends
                    per procedure from the run log, judged against limits
:mod:`.sessions`    what PostgreSQL shows: runs left 'running' and whether anything keeps
                    them, sessions waiting on locks, long queries, the database (the DW
                    runbook's "Database Lock Contention")
:mod:`.incident`    the escalation bundle: one zip of the run log, failed reports, their
                    error output and the findings, redacted
==================  ====================================================================

Domain modules compute and store; they never display (the procedures do).
"""
