"""The redactor over generated secrets: any password, in any of the forms it is printed in,
leaves no trace (hypothesis)."""

import html
import json
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from opsbook.run.redaction import Redactor

pytestmark = pytest.mark.unit

# any printable character but the mask's own
passwords = st.text(
    st.characters(min_codepoint=33, max_codepoint=0x2FF, exclude_characters="*"), min_size=1, max_size=24
)
SETTINGS = settings(max_examples=300, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])


def libpq_quoted(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


@SETTINGS
@given(password=passwords)
def test_a_password_is_found_by_its_position_whatever_it_is(password):
    redact = Redactor([])  # nothing configured: position alone
    encoded = quote(password, safe="")
    assert redact(f"connect postgresql://ops:{encoded}@db:5432/parking failed") == (
        "connect postgresql://ops:***@db:5432/parking failed"
    )
    assert redact(f"postgresql://ops@db/parking?sslmode=require&password={encoded}&x=1") == (
        "postgresql://ops@db/parking?sslmode=require&password=***&x=1"
    )
    assert redact(f"host=db password={libpq_quoted(password)} dbname=parking") == (
        "host=db password='***' dbname=parking"
    )


@SETTINGS
@given(
    secret=st.text(
        st.characters(min_codepoint=32, max_codepoint=0x2FF, exclude_characters="*"), min_size=4, max_size=24
    )
)
def test_a_configured_secret_leaves_no_printed_form(secret):
    redact = Redactor([secret])
    forms = {
        secret,
        quote(secret, safe=""),
        html.escape(secret),
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        json.dumps(html.escape(secret))[1:-1],
    }
    for form in forms:
        text = redact(f"<p>value: {form}</p>")
        assert form not in text.replace("***", "\x00"), (form, text)


@SETTINGS
@given(password=passwords)
def test_a_password_in_python_code_is_found_in_either_quotes(password):
    """An analyst's cell is part of an interactive run's report: a password typed into it."""
    redact = Redactor([])
    double = json.dumps(password)  # a Python string literal in double quotes, escapes included
    assert (
        redact(f"conn = psycopg.connect(host=h, password={double})") == 'conn = psycopg.connect(host=h, password="***")'
    )
    assert redact(f"password = {double}\n") == 'password = "***"\n'
