"""Run history: the ``opsbook`` schema in the target database, and the only code that touches it.

=====================  ==================================================================
module                 owns
=====================  ==================================================================
:mod:`.schema`         the DDL, as numbered migrations (``ensure_schema``)
:mod:`.runs`           ``opsbook.runs``: one row per run, where it ran, how it ended
:mod:`.ledger`         ``opsbook.partitions``: per dataset, partition and step, what was
                       done from which inputs, and the heartbeat of work in progress
:mod:`.writes`         ``opsbook.writes``: the dual-write ledger, per batch and target
:mod:`.locks`          advisory locks and ``opsbook.locks`` (who holds what)
:mod:`.meta`           ``opsbook.meta``: small named values (input digests)
=====================  ==================================================================

Rows never hold a secret: parameters and errors are redacted before they are written.
"""
