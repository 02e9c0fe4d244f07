"""Secrets out of error text: what a server sends back or an exception says is stored (Parquet error columns,
manifests, summaries) and logged, and a server may echo the request's headers, key included (issue 9).

`redact(text, secrets=...)` is applied wherever an error string is made from foreign text; it replaces
Authorization/Bearer values, the values of key-like JSON fields, headers and query parameters, well-known key
shapes, and the literal values given in `secrets` (the configured api key), then keeps the text short.
"""

from __future__ import annotations

import os
import re
from typing import Iterable
from urllib.parse import quote

REDACTED = "[REDACTED]"
MAX_CHARS = 300

# "Bearer <token>" / "Basic <b64>" anywhere (a header line, a repr of a header dict, a log line)
_SCHEME = re.compile(r"(?i)\b(bearer|basic)(\s+)(?!\[REDACTED\])[A-Za-z0-9._~+/=:-]+")
# a key-like name (api_key, x-api-key, access_token, client_secret, password, authorization, cookie, ...)
# followed by : or = and a value, quoted or not; quotes may be JSON-escaped (a JSON document inside a string)
_PAIR = re.compile(
    r"""(?ix)
    (?P<name>\b[\w.-]*?(?:api[_-]?key|apikey|key|token|secret|password|passwd|pwd|authorization|cookie|credentials?)
        (?!\w)(?:\\*["'])?)
    (?P<sep>\s*[:=]\s*)
    (?:(?P<q>\\*["'])(?P<quoted>.*?)(?P=q)|(?P<bare>(?!\[REDACTED\]|(?i:bearer|basic)\s)[^\s,;&}\]"'\\]+))
    """
)
# credentials in a URL: scheme://user:password@host
_USERINFO = re.compile(r"(?<=://)[^/@\s:]+:[^/@\s]+@")
# well-known key shapes, caught even without a name next to them
_SHAPES = re.compile(r"\b(?:sk-[A-Za-z0-9_-]{16,}|hf_[A-Za-z0-9]{20,}|gh[pousr]_[A-Za-z0-9]{20,})")


def _pair(m: re.Match) -> str:
    q = m.group("q") or ""
    return f"{m.group('name')}{m.group('sep')}{q}{REDACTED}{q}"


def redact(text: object, secrets: Iterable[str | None] = (), max_chars: int | None = MAX_CHARS) -> str:
    """`text` with secrets replaced by "[REDACTED]", cut to `max_chars` (after redacting, so a cut cannot
    split a secret past recognition). `secrets`: literal values to remove wherever they appear."""
    s = str(text)
    if max_chars is not None:
        s = s[: max_chars + 10_000]  # a proxy's 10 MB error page is not worth the regex time; kept: the head
    for secret in secrets:
        if secret and len(secret) >= 4:  # a 1-3 character "secret" would blank out ordinary text
            for form in {secret, quote(secret, safe="")}:
                s = s.replace(form, REDACTED)
    s = _SCHEME.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", s)
    s = _PAIR.sub(_pair, s)
    s = _SHAPES.sub(REDACTED, s)
    s = _USERINFO.sub(REDACTED + "@", s)
    if max_chars is not None and len(s) > max_chars:
        s = s[:max_chars] + f"... [{len(s) - max_chars} more chars]"
    return s


def env_secrets(*env_names: str | None) -> list[str]:
    """The values of the named environment variables that are set (the configured api key)."""
    return [os.environ[n] for n in env_names if n and os.environ.get(n)]


__all__ = ["REDACTED", "redact", "env_secrets"]
