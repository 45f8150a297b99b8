"""The layout's rules hold (DESIGN.md "Target layout"): each is a grep that would catch a breach."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LIB = ROOT / "lib" / "opsbook"
MODULES = sorted(LIB.rglob("*.py"))
DOMAINS = ("toronto", "trafficsafety", "warehouse", "ops")
MAX_LINES = 550  # "no module over ~500 lines"


def _code(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _outside(*parts: str) -> list[Path]:
    return [p for p in MODULES if not any(p.is_relative_to(LIB / part) or p == LIB / part for part in parts)]


def test_only_the_demo_and_the_registration_hook_name_the_demo():
    found = [
        f"{p.relative_to(ROOT)}:{n}"
        for p in _outside("demo", "standins.py")
        for n, line in enumerate(_code(p).splitlines(), 1)
        if re.search(r"demo", line, re.I)
    ]
    assert found == []


def test_the_runbooks_params_name_no_demo():
    found = [str(p) for p in (ROOT / "params" / "runbooks").rglob("*.yaml") if re.search(r"\bdemo\b", _code(p))]
    assert found == []


def test_only_stores_uri_tells_a_folder_from_gcs():
    found = [
        str(p.relative_to(ROOT))
        for p in _outside("stores/uri.py", "stores/gcs.py", "stores/gcs_emulator.py")
        if re.search(r"""startswith\(\s*["']gs:""", _code(p))
    ]
    assert found == []


def test_only_history_touches_the_opsbook_schema():
    statement = re.compile(r"\b(FROM|INTO|UPDATE|JOIN|TABLE|EXISTS)\s+opsbook\.(runs|partitions|writes|locks|meta)\b")
    found = [str(p.relative_to(ROOT)) for p in _outside("history") if statement.search(_code(p))]
    assert found == []


@pytest.mark.parametrize("domain", DOMAINS)
def test_domain_packages_never_display(domain):
    found = [
        str(p.relative_to(ROOT))
        for p in (LIB / domain).rglob("*.py")
        if re.search(r"from opsbook import report\b|from opsbook\.report\b|IPython", _code(p))
    ]
    assert found == []


def test_no_module_is_too_long():
    long = {str(p.relative_to(ROOT)): n for p in MODULES if (n := len(_code(p).splitlines())) > MAX_LINES}
    assert long == {}
