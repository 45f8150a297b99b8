"""Secrets never reach an artifact: the executed notebook, the HTML, runs.jsonl, the run log."""

import pytest
from helpers import ROOT, run_cli
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from opsbook.run import redaction
from opsbook.run.redaction import Redactor, redact_url

PASSWORD = "pa55-Wörd/with:odd@chars"


def artifacts_text(reports_dir, db, run_id) -> str:
    texts = [p.read_text(encoding="utf-8") for p in reports_dir.rglob("*") if p.is_file()]
    row = db.execute("SELECT to_jsonb(r)::text FROM opsbook.runs r WHERE run_id = %s", (run_id,)).fetchone()
    texts.append(row[0] if row else "")
    return "\n".join(texts)


@pytest.mark.unit
def test_secret_values_come_from_urls_dsns_and_opsbook_secret_variables(tmp_path):
    key = tmp_path / "sa.json"
    key.write_text('{"type": "service_account", "private_key": "-----BEGIN PRIVATE KEY-----\\nMIIEabc\\n-----END"}')
    env = {
        "DATABASE_URL": "postgresql://u:s%40cret@h/db",
        "REDIS_URL": "redis://:r3dis-pass@h:6379/0",
        "WAREHOUSE_DSN": "host=h user=u password=dsn-secret",
        "OPSBOOK_SECRET_API": "tok-123456",
        "GOOGLE_APPLICATION_CREDENTIALS": str(key),
        "HOME": "/root",
    }
    found = redaction.secret_values(env)
    for secret in ("s@cret", "r3dis-pass", "dsn-secret", "tok-123456"):
        assert secret in found
    assert any("BEGIN PRIVATE KEY" in s for s in found)
    redact = Redactor(found)
    assert redact("connect postgresql://u:s%40cret@h/db failed", "log") == "connect postgresql://u:***@h/db failed"
    assert redact.leaks == ["log"]
    assert redact_url("redis://:r3dis-pass@h:6379/0") == "redis://:***@h:6379/0"


@pytest.mark.notebook
def test_a_password_in_database_url_reaches_no_artifact(database_url, pg_admin_url, db, demo_dir, reports_dir):
    """The acceptance case: the load command through a URL holding a password."""
    role, database = "opsbook_pw_user", "opsbook_test_pw"
    with __import__("psycopg").connect(
        pg_admin_url.replace("postgresql+psycopg", "postgresql"), autocommit=True
    ) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
        admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(PASSWORD)))
        admin.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(database), sql.Identifier(role)))
    info = conninfo_to_dict(pg_admin_url)
    from urllib.parse import quote

    host, port, secret = info.get("host", "127.0.0.1"), info.get("port", 5432), quote(PASSWORD, safe="")
    if host.startswith("/"):  # the embedded server listens on a Unix socket only
        url = f"postgresql://{role}:{secret}@/{database}?host={quote(host)}&port={port}"
    else:
        url = f"postgresql://{role}:{secret}@{host}:{port}/{database}"
    done = run_cli(
        "load",
        "-p",
        "dataset=toronto_parking_tickets",
        "-p",
        f"source={demo_dir}",
        "-p",
        "years=2016-2018",
        "--json",
        env={"DATABASE_URL": url},
    )
    assert done.code == 0, done.stderr
    outcome = done.json()
    assert outcome["status"] == "pass"
    with __import__("psycopg").connect(url) as conn:
        everything = artifacts_text(reports_dir, conn, outcome["run_id"])
        assert conn.execute("SELECT count(*) FROM opsbook.runs").fetchone()[0] == 1
    assert outcome["run_id"] in everything
    for form in (PASSWORD, quote(PASSWORD, safe="")):
        assert form not in everything
        assert form not in done.stdout + done.stderr


@pytest.mark.notebook
def test_a_secret_printed_by_a_cell_is_redacted_and_the_run_warns(database_url, db, reports_dir):
    secret = "opsbook-test-secret-7f3a9"
    done = run_cli(str(ROOT / "tests/notebooks/leak.ipynb"), "--json", env={"OPSBOOK_SECRET_TEST": secret})
    assert done.code == 0
    outcome = done.json()
    assert outcome["status"] == "warn"
    assert any("redacted from: executed notebook" in n for n in outcome["notes"])
    text = artifacts_text(reports_dir, db, outcome["run_id"])
    assert secret not in text and "the password is ***" in text


@pytest.mark.notebook
def test_a_secret_inside_an_exception_message_is_redacted(database_url, db, reports_dir):
    secret = "opsbook-test-secret-e41b"
    done = run_cli(
        str(ROOT / "tests/notebooks/leak.ipynb"), "-p", "fail=true", "--json", env={"OPSBOOK_SECRET_TEST": secret}
    )
    assert done.code == 3
    outcome = done.json()
    assert "connection refused for secret ***" in outcome["error"]
    assert secret not in artifacts_text(reports_dir, db, outcome["run_id"])
    assert secret not in done.stdout + done.stderr


@pytest.mark.unit
@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("db_password=" + PASSWORD, "db_password"),
        ("api_token=" + PASSWORD, "api_token"),
        ("client_secret=" + PASSWORD, "client_secret"),
        ("source=postgresql://etl:" + PASSWORD + "@db.example.org/city", "source"),
        ("source=host=db.example.org password=" + PASSWORD, "source"),
        ("source=opsbook-configured-secret", "source"),
    ],
)
def test_a_credential_given_as_a_parameter_is_refused_before_anything_is_written(
    database_url, db, reports_dir, override, named
):
    done = run_cli("load", "-p", override, "--json", env={"OPSBOOK_SECRET_TEST": "opsbook-configured-secret"})
    assert done.code == 2
    outcome = done.json()
    assert f"parameter {named!r} (from -p)" in outcome["error"] and "environment" in outcome["error"]
    assert outcome["run_id"] is None and not any(reports_dir.rglob("*.ipynb"))
    assert PASSWORD not in done.stdout + done.stderr and "opsbook-configured-secret" not in done.stdout + done.stderr


@pytest.mark.unit
def test_a_credential_in_a_params_file_names_the_file(tmp_path):
    params_file = tmp_path / "nightly.yaml"
    params_file.write_text(f"years: 2017\nsource: postgresql://etl:{PASSWORD}@db/city\n")
    done = run_cli("load", "-f", str(params_file))
    assert done.code == 2
    assert f"parameter 'source' (from {params_file})" in done.stderr and PASSWORD not in done.stderr


@pytest.mark.integration
@pytest.mark.parametrize(
    "url",
    [
        "postgresql://ops:{pw}@127.0.0.1:1/parking",
        "postgresql://ops@127.0.0.1:1/parking?password={pw}",
        "host=127.0.0.1 port=1 dbname=parking user=ops password={pw}",
        "host=127.0.0.1 port=1 dbname=parking user=ops password='{pw} x'",
    ],
)
def test_a_database_that_cannot_be_reached_is_named_without_its_password(url, tmp_path):
    """The connection-failure line names host, port and database; the password appears in no
    form (plain, percent-encoded, quoted) in stdout, stderr or the JSON."""
    from urllib.parse import quote

    password = "Sh0rt&<q>'"
    if url.startswith("postgresql://"):
        given = url.format(pw=quote(password, safe=""))
    else:  # inside quotes, libpq reads \' as a quote
        given = url.format(pw=password.replace("'", "\\'") if "'{pw}" in url else password)
    done = run_cli(
        "validate",
        "-f",
        "params/demo/toronto/validate.yaml",
        "--json",
        env={"DATABASE_URL": given, "OPSBOOK_STATE_DIR": str(tmp_path / "state")},
    )
    assert done.code == 3, done.stderr
    assert "cannot connect to PostgreSQL at 127.0.0.1:1/parking" in done.json()["error"]
    for form in (password, quote(password, safe=""), "Sh0rt"):
        assert form not in done.stdout + done.stderr


@pytest.mark.unit
@pytest.mark.parametrize(
    "text, redacted",
    [
        ("postgresql://ops:pw@db/parking", "postgresql://ops:***@db/parking"),  # a short password, by position
        ("redis://:x@cache:6379/0", "redis://:***@cache:6379/0"),
        (
            "postgresql://ops@db/parking?sslmode=require&password=pw",
            "postgresql://ops@db/parking?sslmode=require&password=***",
        ),
        ("host=db user=ops password=pw dbname=p", "host=db user=ops password=*** dbname=p"),
        ("host=db password='p w\\'x' user=ops", "host=db password='***' user=ops"),
        ("<a href='x?a=1&amp;password=pw'>", "<a href='x?a=1&amp;password=***'>"),
        ('{"password": "pw", "n": 1}', '{"password": "***", "n": 1}'),
        ('"{\\"private_key\\": \\"-----BEGIN PRIVATE KEY-----\\\\nMIIE\\\\n\\"}"', '"{\\"private_key\\": \\"***\\"}"'),
        (
            "-----BEGIN PRIVATE KEY-----\nMIIEvQ\nAbC=\n-----END PRIVATE KEY-----",
            "-----BEGIN PRIVATE KEY-----\n***\n-----END PRIVATE KEY-----",
        ),
        ("-----BEGIN RSA PRIVATE KEY-----\nMIIEvQ\nAb", "-----BEGIN RSA PRIVATE KEY-----\n***"),  # cut short
        ("http://host:8080/path at 10:20:30", "http://host:8080/path at 10:20:30"),  # nothing secret
        ("postgresql://ops:***@db/parking", "postgresql://ops:***@db/parking"),  # already redacted
    ],
)
def test_secrets_are_found_by_position_whatever_their_length(text, redacted):
    redact = Redactor([])
    assert redact(text, "here") == redacted
    assert redact.leaks == (["here"] if text != redacted else [])


@pytest.mark.unit
def test_every_printed_form_of_a_secret_is_redacted():
    import html
    import json
    from urllib.parse import quote

    from markupsafe import escape

    secret = "s3cr&t<\"q'>ö"
    redact = Redactor([secret])
    forms = [
        secret,
        quote(secret, safe=""),
        html.escape(secret),
        str(escape(secret)),  # Jinja's spelling: &#39; and &#34;
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        json.dumps(html.escape(secret))[1:-1],  # an HTML output inside an ipynb
    ]
    for form in forms:
        assert redact(f"before {form} after") == "before *** after", form


@pytest.mark.unit
def test_a_stream_joins_pieces_before_redacting():
    import io

    out = io.StringIO()
    stream = redaction.RedactingStream(out, Redactor(["abcdef-secret"]))
    stream.write("the password is abcdef")
    stream.write("-secret and more\n")
    stream.write("tail abcdef-")
    stream.write("secret")
    stream.flush()
    assert out.getvalue() == "the password is *** and more\ntail ***"


@pytest.mark.integration
def test_the_write_ledger_and_run_log_store_errors_redacted(db, monkeypatch):
    from opsbook.history import ledger, runs, schema, writes

    monkeypatch.setenv("LAKE_URL", "gs://lake-user:lake-Pa55word@storage.example.org/lake")
    schema.ensure_schema(db)
    writes.stage(db, "safety_indices", "b1", "lake", 10, None, None, "staged/b1.parquet")
    writes.record(
        db, "safety_indices", "b1", "lake", "pending", True, "upload to gs://lake-user:lake-Pa55word@storage failed"
    )
    ledger.running(db, "safety_indices", "2016", "load", "r1", "h", "f")
    ledger.failed(db, "safety_indices", "2016", "load", "r1", "gs://u:tiny@x refused; host=h password=pw")
    runs.mark_failed(db, "nonexistent", "postgresql://a:b@c/d")
    stored = db.execute(
        "SELECT (SELECT last_error FROM opsbook.writes WHERE batch_id = 'b1'),"
        " (SELECT error FROM opsbook.partitions WHERE run_id = 'r1')"
    ).fetchone()
    assert stored == ("upload to gs://lake-user:***@storage failed", "gs://u:***@x refused; host=h password=***")


@pytest.mark.notebook
@pytest.mark.parametrize("how", ["pieces", "html", "json", "url", "pem"])
def test_a_secret_shown_in_any_form_reaches_no_artifact(how, database_url, db, reports_dir, tmp_path):
    """The executed notebook, the HTML report, runs.jsonl, the run log, stdout and stderr."""
    import html
    import json

    secret = "Opsbook&<Secret>'7f\""
    key_lines = ["MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7", "XyZ="]  # the last line is short
    key = tmp_path / "sa.json"
    pem = "-----BEGIN PRIVATE KEY-----\n" + "\n".join(key_lines) + "\n-----END PRIVATE KEY-----\n"
    key.write_text(json.dumps({"type": "service_account", "private_key": pem}))
    env = {"OPSBOOK_SECRET_TEST": secret, "SHORT_PASSWORD": "q7", "GOOGLE_APPLICATION_CREDENTIALS": str(key)}
    done = run_cli(str(ROOT / "tests/notebooks/leak.ipynb"), "-p", f"how={how}", "--json", env=env)
    assert done.code == 0, done.stderr
    outcome = done.json()
    assert outcome["status"] == "warn" and any("redacted from: executed notebook" in n for n in outcome["notes"])
    text = artifacts_text(reports_dir, db, outcome["run_id"]) + done.stdout + done.stderr
    leaked = {
        "pieces": [secret, secret[5:]],
        "html": [html.escape(secret), json.dumps(html.escape(secret))[1:-1], "Secret"],
        "json": [json.dumps(secret)[1:-1], "Secret"],
        "url": [":q7@"],
        "pem": key_lines,
    }[how]
    for form in leaked:
        assert form not in text, form
