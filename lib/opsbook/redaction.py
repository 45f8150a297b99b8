"""Redact configured secret values from every artifact before it is written."""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit, urlunsplit

from opsbook import config

MASK = "***"


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

    secrets: list[str] = field(default_factory=config.secret_values)
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
