"""Command line: ``python run_notebook.py <procedure> [-f params.yaml ...] [-p name=value ...]``.

A thin layer over :mod:`opsbook.run.runner`; it parses arguments, prints, and exits.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from opsbook.errors import EXIT_CODES, OpsbookError, UsageError

EXAMPLES = """\
examples:
  python run_notebook.py --list
  python run_notebook.py load -p dataset=toronto_parking_tickets -p source=DIR -p years=2016-2018
  python run_notebook.py load -f params/toronto/load.yaml -p years=2015
  python run_notebook.py load -p years=2017 --json --timeout 3600
  python run_notebook.py runbook toronto --quiet
  python run_notebook.py services status
  python run_notebook.py services stop
  python run_notebook.py signoff RUN_ID --by NAME --comment TEXT
  python run_notebook.py export RUN_ID -o report.html   # a self-contained copy to mail
"""


def _exit_codes_text() -> str:
    return "exit codes:\n" + "\n".join(f"  {code}  {text}" for code, text in EXIT_CODES.items())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run_notebook.py",
        description=(
            "Run an opsbook procedure's notebook headless with papermill, and save the executed "
            "notebook and its HTML report under reports/ (also when it fails). Parameters are "
            "layered: the notebook's defaults < each -f file in order < each -p. They are "
            "checked before any kernel starts. Credentials are never parameters: set "
            "DATABASE_URL, REDIS_URL, LAKE_URL in the environment or .env."
        ),
        epilog=f"procedures: run with --list\n\n{_exit_codes_text()}\n\n{EXAMPLES}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "procedure",
        nargs="?",
        help="procedure name (see --list), or a path to a .ipynb; "
        "also: runbook, services, signoff, export (each has --help)",
    )
    parser.add_argument(
        "output",
        nargs="?",
        help="papermill's output path: the executed notebook is also written there ('-': stdout); "
        "the report and executed notebook under reports/ are written in any case",
    )
    parser.add_argument(
        "-f",
        "--file",
        "--parameters_file",
        dest="files",
        action="append",
        default=[],
        type=Path,
        metavar="PARAMS.yaml",
        help="YAML file of parameter values (repeatable)",
    )
    parser.add_argument(
        "-y",
        "--parameters_yaml",
        dest="yaml",
        metavar="YAML",
        help="parameter values as a YAML mapping, e.g. -y 'years: 2017' (wins over -f)",
    )
    parser.add_argument(
        "-p",
        "--param",
        dest="params",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="one parameter value, NAME=VALUE or papermill's NAME VALUE (repeatable); wins over -f and -y",
    )
    parser.add_argument(
        "-r",
        dest="raw",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="one parameter value kept as text, never typed (papermill's --parameters_raw; repeatable)",
    )
    parser.add_argument(
        "-k",
        "--kernel",
        metavar="NAME",
        help="run a notebook given by path in this kernel instead of the one its kernelspec names",
    )
    parser.add_argument(
        "--cwd",
        type=Path,
        metavar="DIR",
        help="start a notebook given by path in DIR (default: where run_notebook.py was started, as "
        "papermill does; procedures always run from the project root)",
    )
    parser.add_argument(
        "--prepare-only",
        action="store_true",
        help="write the notebook with its parameters injected to the output path, without running it",
    )
    parser.add_argument("--log-output", action="store_true", help="write the cells' outputs on stderr as they come")
    parser.add_argument(
        "--report-mode", action="store_true", help="hide the code cells' input in the executed notebook"
    )
    parser.add_argument(
        "--help-params",
        action="store_true",
        help="list the parameters the procedure or notebook takes, their types and defaults, and exit",
    )
    parser.add_argument(
        "--no-progress-bar",
        "--progress-bar",
        dest="progress_bar",
        action="store_true",
        help=argparse.SUPPRESS,  # papermill's; the runner prints a line per cell instead (--quiet: none)
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print exactly one JSON object on stdout: status, exit_code, run_id, reports, results",
    )
    parser.add_argument(
        "--timeout", type=float, metavar="S", help="fail with exit 5 when the whole run takes longer than S seconds"
    )
    parser.add_argument("--list", action="store_true", help="list the procedures, one line each")
    parser.add_argument("--quiet", action="store_true", help="no per-cell progress lines on stderr")
    parser.add_argument(
        "--self-contained",
        action="store_true",
        help="write the HTML report with plotly.js inlined, readable alone (to mail it); ~5 MB more with charts",
    )
    return parser


def list_procedures() -> str:
    from opsbook import procedures

    return "\n".join(f"{name:<22} {procedures.PROCEDURES[name].summary}" for name in procedures.names())


def services_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="run_notebook.py services",
        description="Show, start or stop the embedded default services (used when DATABASE_URL / "
        "REDIS_URL are unset). Configured services are shown, never started or stopped.",
        epilog="examples:\n  python run_notebook.py services status\n  python run_notebook.py services url"
        "      # connection URLs for psql, a notebook, DBeaver (no password printed)\n"
        "  python run_notebook.py services stop",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("action", choices=["status", "start", "stop", "url"])
    args = parser.parse_args(argv)
    from opsbook import services

    if args.action == "url":
        for name, url, note in services.urls():
            print(f"{name:<9} {url}" + (f"  ({note})" if note else ""))
        return 0
    if args.action == "status":
        for row in services.status():
            print(row.line())
    elif args.action == "start":
        if services.database_is_embedded():
            services.database_url()
        services.redis_url()
        for row in services.status():
            print(row.line())
    else:
        stopped = services.stop()
        print("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
    return 0


def runbook_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="run_notebook.py runbook",
        description="Run a runbook's steps in order (params/runbooks/<team>/runbook.yaml, or a runbook file): "
        "each step is a procedure run with its params file; the runbook stops at the first step that fails "
        "(unless the step is marked independent) and writes one report linking every step's report.",
        epilog=f"runbooks: run with --list\n\n{_exit_codes_text()}\n(a runbook exits with the code of its first "
        "failing step)\n\nexamples:\n  python run_notebook.py runbook toronto --quiet\n"
        "  python run_notebook.py runbook trafficsafety --json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("runbook", nargs="?", help="a team (params/runbooks/<team>/runbook.yaml) or a runbook file")
    parser.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    parser.add_argument("--timeout", type=float, metavar="S", help="stop (exit 5) when the runbook takes longer")
    parser.add_argument("--quiet", action="store_true", help="no per-cell progress lines on stderr")
    parser.add_argument("--list", action="store_true", help="list the runbooks and their steps")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    from opsbook.run import runbook

    try:
        if args.list:
            for name in runbook.available():
                book = runbook.load(name)
                steps = " -> ".join(s.procedure for s in book.steps)
                print(f"{name:<16} {book.schedule or 'on demand':<14} {steps}")
            return 0
        if not args.runbook:
            parser.print_usage(sys.stderr)
            print("error: name a runbook (see --list)", file=sys.stderr)
            return 2
        outcome = runbook.execute(args.runbook, timeout=args.timeout, progress=None if args.quiet else sys.stderr)
    except OpsbookError as exc:
        return _refused(args, exc)
    if args.json:
        print(json.dumps(outcome.as_json(), default=str))
    if not args.quiet:
        for note in outcome.notes:
            print(f"note: {note}", file=sys.stderr)
    print(
        f"{outcome.status.upper()} runbook {outcome.runbook.name} {outcome.run_id}: {outcome.summary}", file=sys.stderr
    )
    if outcome.html:
        print(f"report: {outcome.html}", file=sys.stderr)
    return outcome.exit_code


def signoff_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="run_notebook.py signoff",
        description="Record a lead's sign-off of a run's HTML report: who, when, why, and the report's SHA-256. "
        "It is appended to reports/signoffs.jsonl, stored in the run log (opsbook.runs) and shown in "
        "reports/index.html, which flags a report changed after it was signed. A FAIL or WARN run needs a "
        "--comment saying why it is accepted; a report changed since its run wrote it is refused.",
        epilog="examples:\n  python run_notebook.py signoff 20261122T003712Z-load-3fa9c1 --by 'A. Lead'\n"
        "  python run_notebook.py signoff 20261122T003712Z-validate-9c0e11 --by alead@example.org "
        "--comment 'fine counts dip known, city notice 2024-11'\n"
        "  python run_notebook.py signoff --check      # from cron: exit 1 if a signed report was changed",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run_id", nargs="?", help="the run's id (reports/index.html, --json's run_id)")
    parser.add_argument("--by", metavar="NAME", help="who signs off (required to sign)")
    parser.add_argument("--comment", default="", metavar="TEXT", help="why (required for a FAIL or WARN run)")
    parser.add_argument(
        "--check",
        action="store_true",
        help="compare every signed report with the SHA-256 signed, list those changed since (exit 1 if any) "
        "and rewrite the index",
    )
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    from opsbook.report import signoff

    if args.check:
        changed = signoff.check()
        for line in changed:
            print(line)
        print(f"{len(changed)} signed report(s) changed since their sign-off", file=sys.stderr)
        return 1 if changed else 0
    if not args.run_id or not args.by:
        parser.print_usage(sys.stderr)
        print("error: name the run and who signs off: signoff RUN_ID --by NAME", file=sys.stderr)
        return 2
    try:
        record, notes = signoff.sign(args.run_id, args.by, args.comment)
    except OpsbookError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"signed off {record.run_id} by {record.by} at {record.at}: {record.html} (SHA-256 {record.html_sha256})")
    return 0


def export_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="run_notebook.py export",
        description="Write a self-contained copy of a run's HTML report (its charts' plotly.js inlined) that "
        "reads alone, to mail or archive. The report itself is left as it is.",
        epilog="example:\n  python run_notebook.py export 20261122T003712Z-load-3fa9c1 -o /tmp/load-2015.html",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run_id", help="the run's id (reports/index.html, --json's run_id)")
    parser.add_argument(
        "-o", "--output", type=Path, metavar="FILE", help="where to write it (default: beside the report, .mail.html)"
    )
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    from opsbook import config
    from opsbook.report import html, signoff

    try:
        run = signoff.find_run(args.run_id, config.reports_dir())
        report = Path(run["html"]) if run.get("html") else None
        if report is None or not report.is_file():
            raise OpsbookError(f"run {args.run_id} has no HTML report ({report or 'none was written'})")
        target = args.output or report.with_suffix(".mail.html")
        html.self_contained_copy(report, target)
    except OpsbookError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(target)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "runbook":
        return runbook_command(argv[1:])
    if argv and argv[0] == "signoff":
        return signoff_command(argv[1:])
    if argv and argv[0] == "export":
        return export_command(argv[1:])
    if argv and argv[0] == "services":
        try:
            return services_command(argv[1:])
        except OpsbookError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return exc.exit_code
    parser = build_parser()
    try:
        from opsbook.run.options import papermill_argv

        args = parser.parse_args(papermill_argv(argv))
    except OpsbookError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except SystemExit as exc:  # argparse exits 2 on bad usage, 0 on --help
        return int(exc.code or 0)
    if args.list:
        print(list_procedures())
        return 0
    if not args.procedure:
        parser.print_usage(sys.stderr)
        print("error: name a procedure (see --list)", file=sys.stderr)
        return 2

    from opsbook.run import options, runner

    try:
        if args.help_params:
            print(runner.describe_parameters(args.procedure))
            return 0
        settings = options.Options(args.kernel, args.cwd, args.output, args.log_output, args.report_mode)
        sources = {"inline": options.yaml_values(args.yaml), "raw": args.raw}
        if args.prepare_only:
            if not args.output:
                raise UsageError("--prepare-only writes the prepared notebook to an output path: give one")
            try:
                prepared = runner.prepare_only(
                    args.procedure, args.output, args.files, args.params, settings, **sources
                )
            except OSError as exc:
                raise UsageError(f"--prepare-only: {exc}") from None
            print(prepared)
            return 0
        options.check_stdout(args.output, args.json)
        outcome = runner.execute(
            args.procedure,
            args.files,
            args.params,
            timeout=args.timeout,
            progress=None if args.quiet else sys.stderr,
            self_contained=args.self_contained,
            options=settings,
            **sources,
        )
    except OpsbookError as exc:  # bad parameters, a lock held, no database: refused before a kernel started
        return _refused(args, exc)

    if args.json:
        print(json.dumps(outcome.as_json(), default=str))
    if not args.quiet:  # --quiet is two lines: the notes are in the report and the JSON
        for note in outcome.notes:
            print(f"note: {note}", file=sys.stderr)
    print(f"{outcome.status.upper()} {outcome.procedure} {outcome.run_id}: {outcome.summary}", file=sys.stderr)
    if outcome.html:
        print(f"report: {outcome.html}", file=sys.stderr)
    if outcome.next_step and not args.quiet:  # --quiet stays two lines: the step is in the report and the JSON
        print(f"next step: {outcome.next_step}", file=sys.stderr)
    return outcome.exit_code


def _refused(args, exc: OpsbookError) -> int:
    """A run refused before it started: no kernel, no report; the error and its exit code."""
    if args.json:
        print(
            json.dumps(
                {
                    "status": "fail",
                    "exit_code": exc.exit_code,
                    "run_id": None,
                    "reports": None,
                    "results": {},
                    "error": str(exc),
                }
            )
        )
    print(f"error: {exc}", file=sys.stderr)
    return exc.exit_code
