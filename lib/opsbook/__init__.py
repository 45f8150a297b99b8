"""opsbook: runbook procedures as parameterized notebooks over one shared library.

``import opsbook`` stays fast: heavy modules (pandas, pyarrow, papermill) load when used.
"""

import sys

__version__ = "0.1.0"


def start(procedure: str, **values):
    """The first call of a procedure's notebook: validate its parameters and identify the run
    (see :func:`opsbook.run.context.start`)."""
    from opsbook.run import context

    return context.start(procedure, **values)


def query(statement: str, params=None, limit: int = 1000):
    """Ask the runs' database a read-only question; a DataFrame (see :mod:`opsbook.investigate`)."""
    from opsbook import investigate

    return investigate.query(statement, params, limit)


# jsonschema imports rfc3987_syntax (its optional "iri" format checker) at import time, and
# that module builds a lark grammar taking ~2 s, paid by every process that imports nbformat
# (the runner, papermill, scrapbook in the kernel). opsbook never validates "iri" formats.
# https://github.com/python-jsonschema/jsonschema/issues/1428
if "jsonschema" not in sys.modules:
    sys.modules.setdefault("rfc3987_syntax", None)
