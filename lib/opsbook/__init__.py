"""opsbook: runbook procedures as parameterized notebooks over one shared library.

``import opsbook`` stays fast: heavy modules (pandas, pyarrow, papermill) load when used.
"""

import sys

__version__ = "0.1.0"

# jsonschema imports rfc3987_syntax (its optional "iri" format checker) at import time, and
# that module builds a lark grammar taking ~2 s, paid by every process that imports nbformat
# (the runner, papermill, scrapbook in the kernel). opsbook never validates "iri" formats.
# https://github.com/python-jsonschema/jsonschema/issues/1428
if "jsonschema" not in sys.modules:
    sys.modules.setdefault("rfc3987_syntax", None)
