"""Secrets: which values are secret, and redacting them from every artifact before it is written.

Secret values are the passwords inside any ``*_URL`` / ``*_DSN`` variable, every
``OPSBOOK_SECRET_*`` value, and the private key of the service-account file named by
``GOOGLE_APPLICATION_CREDENTIALS``.
"""

from __future__ import annotations

import html
import json
import os
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
            found.update(line for line in value.splitlines() if len(line) >= 16)
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
    """The forms a secret takes once printed: as is, in JSON, in HTML, percent-encoded."""
    forms = {secret, quote(secret, safe=""), html.escape(secret), json.dumps(secret)[1:-1]}
    forms.add(html.escape(json.dumps(secret)[1:-1]))
    return {f for f in forms if f}


@dataclass
class Redactor:
    """Replaces every configured secret value; remembers where it found one."""

    secrets: list[str] = field(default_factory=lambda: secret_values())
    leaks: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        forms: set[str] = set()
        for secret in self.secrets:
            forms |= _variants(secret)
        self._forms = sorted(forms, key=len, reverse=True)

    def __call__(self, text: str, where: str = "") -> str:
        if not self._forms or not text:
            return text
        for form in self._forms:
            if form in text:
                text = text.replace(form, MASK)
                if where and where not in self.leaks:
                    self.leaks.append(where)
        return text

    def scrub(self, value):
        """Redact every string inside a JSON-like value (dicts, lists, strings)."""
        if isinstance(value, str):
            return self(value)
        if isinstance(value, dict):
            return {k: self.scrub(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.scrub(v) for v in value]
        return value
