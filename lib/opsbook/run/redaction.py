"""Secrets: which values are secret, and redacting them from every artifact before it is written.

One :class:`Redactor` serves every channel: the executed notebook, the HTML report, runs.jsonl,
the run log and the ledgers in PostgreSQL, stdout and stderr (:func:`guard_streams`),
incident bundles. It removes secrets two ways:

- by value: the passwords inside any ``*_URL`` / ``*_DSN`` variable, every ``OPSBOOK_SECRET_*``
  value, and the private key of the service-account file named by
  ``GOOGLE_APPLICATION_CREDENTIALS`` (every line of it), in each form they take once printed
  (percent-encoded, JSON-escaped, HTML-escaped, and combinations);
- by position, whatever their length or origin: the password of any URL
  (``scheme://user:PASSWORD@host``), a ``password=`` in a query string or a libpq keyword
  DSN, a ``"password"`` or ``"private_key"`` JSON field, and the body of a PEM private key.
"""

from __future__ import annotations

import html
import json
import os
import re
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit, urlunsplit

MASK = "***"

SECRET_ENV_PREFIX = "OPSBOOK_SECRET_"
URL_VARIABLES = ("DATABASE_URL", "REDIS_URL", "TEST_DATABASE_URL", "TEST_REDIS_URL", "LAKE_URL")


def url_password(url: str) -> str | None:
    """The password inside a URL (``postgresql://user:pw@host/db``) or a libpq connection
    string (``host=h password=pw``), or None."""
    if "://" in url:
        try:
            parts = urlsplit(url)
        except ValueError:
            return None
        if parts.password:
            return unquote(parts.password)
        if "password=" not in parts.query:
            return None
    elif "password" not in url:
        return None
    try:
        from psycopg.conninfo import conninfo_to_dict

        return conninfo_to_dict(url).get("password") or None
    except Exception:  # not a connection string at all
        return None


def secret_values(environ: dict[str, str] | None = None) -> list[str]:
    """Every configured secret value, longest first, so redaction never leaves a tail.

    Passwords inside any ``*_URL`` variable, every ``OPSBOOK_SECRET_*`` value, and the
    private key of the service account file named by ``GOOGLE_APPLICATION_CREDENTIALS``.
    """
    env = os.environ if environ is None else environ
    found: set[str] = set()
    for name, value in env.items():
        if not value:
            continue
        if name.startswith(SECRET_ENV_PREFIX):
            found.add(value)
        elif name.endswith(("_URL", "_DSN")) or name in URL_VARIABLES:
            password = url_password(value)
            if password:
                found.add(password)
                if "://" in value:
                    # the percent-encoded form appears wherever the URL itself is printed
                    found.add(urlsplit(value).password or password)
    credentials = env.get("GOOGLE_APPLICATION_CREDENTIALS")
    if credentials:
        found.update(_service_account_secrets(credentials))
    # very short values would redact ordinary words; a real secret is longer
    return sorted((s for s in found if len(s) >= 4), key=len, reverse=True)


def _service_account_secrets(path: str) -> set[str]:
    try:
        info = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return set()
    found = set()
    for key in ("private_key", "private_key_id", "client_secret", "refresh_token"):
        value = info.get(key)
        if isinstance(value, str) and value:
            found.add(value)
            # a PEM key may be printed one line at a time
            found.update(line.strip() for line in value.splitlines() if len(line.strip()) >= 4 and "-----" not in line)
    return found


def redact_url(url: str) -> str:
    """``postgresql://u:pw@h/db`` -> ``postgresql://u:***@h/db``; other URLs unchanged."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if not parts.password:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    userinfo = netloc[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{userinfo}:{MASK}@{netloc[1]}"))


def _variants(secret: str) -> set[str]:
    """The forms a secret takes once printed: as is, percent-encoded, HTML-escaped (Python's and
    Jinja's spellings), JSON-escaped (ASCII or not), and JSON of HTML (an ipynb's HTML output)."""
    from markupsafe import escape

    bases = {secret, quote(secret, safe=""), html.escape(secret), html.escape(secret, quote=False), str(escape(secret))}
    forms = set(bases)
    for base in bases:
        for ascii_only in (True, False):
            encoded = json.dumps(base, ensure_ascii=ascii_only)[1:-1]
            forms |= {encoded, html.escape(encoded), str(escape(encoded))}
    return {f for f in forms if f}


# secrets found by where they stand, whatever their length; each pattern's group "secret" is
# replaced. Masked text ("***") matches too and is left as it is.
_POSITIONAL = [
    # scheme://user:PASSWORD@host (up to the last @ of the authority)
    # (a scheme is at most 32 characters, and starts where no scheme character precedes it: a
    # long run of such characters must not be rescanned from each of its positions)
    re.compile(r"(?<![A-Za-z0-9+.-])[a-zA-Z][a-zA-Z0-9+.-]{0,31}://[^\s:/?#@\[\]\"'<>]*:(?P<secret>[^\s/?#\"'<>]+)@"),
    # password=... in a query string, a libpq keyword DSN or Python code (quoted or not; &amp; in HTML)
    re.compile(
        r"(?:(?<=[?&;\s'\"(])|^)(?:password|passwd|sslpassword)\s*=\s*"
        r"(?P<secret>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[^\s&;'\"<>]+)",
        re.IGNORECASE | re.MULTILINE,
    ),
    # "password": "..." and "private_key": "..." in JSON (and the same with escaped quotes), and
    # 'password': '...' in a Python dict's repr
    re.compile(
        r"\\?\"(?:password|private_key|client_secret|refresh_token)\\?\"\s*:\s*\\?\""
        r"(?P<secret>(?:[^\"\\]|\\[^\"])+)",
        re.IGNORECASE,
    ),
    re.compile(
        r"'(?:password|private_key|client_secret|refresh_token)'\s*:\s*'(?P<secret>(?:[^'\\]|\\.)+)'",
        re.IGNORECASE,
    ),
    # the body of a PEM private key: its base64 lines (real or escaped line breaks between them)
    re.compile(
        r"-----BEGIN [A-Z ]*PRIVATE KEY-----"
        r"(?P<secret>(?:(?:\r?\n|(?:\\r)?\\n)[A-Za-z0-9+/=]+)+(?:\r?\n|(?:\\r)?\\n)?)"
    ),
]


@dataclass
class Redactor:
    """Replaces every configured secret value and every secret found by position; remembers
    where it found one."""

    secrets: list[str] = field(default_factory=lambda: secret_values())
    leaks: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        forms: set[str] = set()
        for secret in self.secrets:
            forms |= _variants(secret)
        self._forms = sorted(forms, key=len, reverse=True)

    def __call__(self, text: str, where: str = "") -> str:
        if not text:
            return text
        found = False
        for form in self._forms:
            if form in text:
                text = text.replace(form, MASK)
                found = True
        changed = [False]
        for pattern in _POSITIONAL:
            text = pattern.sub(lambda m: _mask_secret(m, changed), text)
        if (found or changed[0]) and where and where not in self.leaks:
            self.leaks.append(where)
        return text

    def scrub(self, value, where: str = ""):
        """Redact every string inside a JSON-like value (dicts, lists, strings)."""
        if isinstance(value, str):
            return self(value, where)
        if isinstance(value, dict):
            return {k: self.scrub(v, where) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.scrub(v, where) for v in value]
        return value


def _mask_secret(match: re.Match, changed: list[bool]) -> str:
    """The match with its "secret" group masked (quotes around it, and the line breaks around a
    key's body, kept); a secret that is already the mask, or empty, is left as it is."""
    secret = match.group("secret")
    core = secret.strip("'\"").replace("\\n", "").replace("\\r", "").strip(" \r\n\t")
    if not core or core == MASK:
        return match.group(0)
    changed[0] = True
    if secret[:1] in ("'", '"') and secret.endswith(secret[0]) and len(secret) >= 2:
        replacement = f"{secret[0]}{MASK}{secret[0]}"
    elif match.group(0).startswith("-----BEGIN"):
        lead = re.match(r"\r?\n|(?:\\r)?\\n", secret)
        tail = re.search(r"(?:\r?\n|(?:\\r)?\\n)$", secret)
        replacement = (lead.group(0) if lead else "") + MASK + (tail.group(0) if tail else "")
    else:
        replacement = MASK
    start, end = match.span("secret")
    return match.string[match.start() : start] + replacement + match.string[end : match.end()]


def redact(text: str, where: str = "") -> str:
    """``text`` through a Redactor of the configured secrets (for one-off writes: a ledger's
    error column, a message)."""
    return Redactor()(text, where) if text else text


class RedactingStream:
    """A text stream that redacts what is written to it, line by line: a secret printed in
    pieces (``print(a, end="")``, ``print(b)``) is joined before it is checked."""

    def __init__(self, stream, redactor: Redactor | None = None) -> None:
        self._stream = stream
        self._redact = redactor or Redactor()
        self._pending = ""
        self._lock = threading.Lock()  # progress lines arrive from a relay thread too

    def write(self, text: str) -> int:
        with self._lock:
            self._pending += text
            if "\n" in self._pending:
                complete, self._pending = self._pending.rsplit("\n", 1)
                self._stream.write(self._redact(complete + "\n"))
            elif len(self._pending) > 65536:
                self._stream.write(self._redact(self._pending))
                self._pending = ""
        return len(text)

    def flush(self) -> None:
        with self._lock:
            if self._pending:
                self._stream.write(self._redact(self._pending))
                self._pending = ""
        self._stream.flush()

    def __getattr__(self, name):
        return getattr(self._stream, name)


def guard_streams() -> None:
    """Redact everything this process prints to stdout and stderr from here on."""
    if not isinstance(sys.stdout, RedactingStream):
        redactor = Redactor()
        sys.stdout = RedactingStream(sys.stdout, redactor)
        sys.stderr = RedactingStream(sys.stderr, redactor)


def scrub_notebook(nb, redact: Redactor, where: str = "executed notebook"):
    """Redact a notebook in place, string by string, before it is serialized: consecutive
    stream outputs are joined first (a secret printed in pieces is whole again), then every
    cell source, output text, display data, error message and traceback line is redacted."""
    from nbconvert.preprocessors import CoalesceStreamsPreprocessor

    CoalesceStreamsPreprocessor().preprocess(nb, {})
    for cell in nb.cells:
        cell.source = redact(cell.source, where)
        for output in cell.get("outputs", []):
            if isinstance(output.get("text"), str):
                output.text = redact(output.text, where)
            if "data" in output:  # images are base64 of bytes: no secret is readable there, nor replaceable
                output.data = type(output.data)(
                    {k: v if k.startswith("image/") else redact.scrub(v, where) for k, v in output.data.items()}
                )
            if "evalue" in output:
                output.evalue = redact(output.evalue, where)
            if "traceback" in output:
                output.traceback = redact("\n".join(output.traceback), where).split("\n")
    return nb
