"""How a run is executed, from the command line to the exit code.

==================  ====================================================================
module              job
==================  ====================================================================
:mod:`.cli`         ``run_notebook.py``: arguments, printing, exit codes (no logic)
:mod:`.params`      the typed parameter models: layering files and ``-p``, clear refusals
:mod:`.runner`      one run: validate, run log, papermill, report, index, exit code
:mod:`.runbook`     a runbook: its steps in order, one report linking them
:mod:`.engine`      the papermill engine: a progress line per cell, a whole-run deadline
:mod:`.notebooks`   a notebook given by path: its parameters cell as a model
:mod:`.context`     inside the notebook: ``start`` and ``finish``, the run's context
:mod:`.verdict`     PASS / WARN / FAIL, the summary, the error class (its exit code)
:mod:`.results`     what a notebook records (scrapbook) and the runner reads back
:mod:`.progress`    progress lines for both the notebook and the terminal
:mod:`.redaction`   which values are secret, and their removal from every artifact
:mod:`.process`     a kernel dies with its runner; a worker stops for a dead coordinator
==================  ====================================================================
"""
