"""One redaction function for every text that leaves the LLM client: error messages, log lines, the call
log, cached replies and program records.

``redact(text)`` replaces each registered secret (the API key, registered by the backend that reads it; the
values of ``--base-url``'s credential parameters; a proxy's password), any ``Bearer <token>`` / ``Authorization: [Basic|Bearer]
<value>`` and anything shaped like an OpenAI key (``sk-...``) with ``[REDACTED]``. A server that echoes the
request's Authorization header in its 401 message cannot make leap print or store the key. A lone UTF-16
surrogate (a JSON escape of half a character, ``"\\ud83d"``, from a reply cut inside an emoji) becomes U+FFFD: UTF-8
cannot hold it, and the cache, the output file or the terminal refused the whole reply with a traceback.
"""

from __future__ import annotations

import logging
import re

REDACTED = "[REDACTED]"
_SECRETS: set[str] = set()
_PATTERNS = re.compile(r"(?i)(?P<pre>\bbearer\s+|\bauthorization\s*[:=]\s*[\"']?(?:(?:bearer|basic)\s+)?)[^\s\"',}]+"
                       r"|\bsk-[A-Za-z0-9_\-]{12,}")
_SURROGATE = re.compile("[\ud800-\udfff]")


def register_secret(value: str | None) -> None:
    """Redact ``value`` from every later message (values shorter than 6 characters are not secrets)."""
    if value and len(value) >= 6:
        _SECRETS.add(value)


def redact(text):
    """``text`` without secrets, nor lone surrogates (anything not a str is returned as it is)."""
    if not isinstance(text, str) or not text:
        return text
    for s in sorted(_SECRETS, key=len, reverse=True):  # a secret inside another (a proxy password in the key):
        if s in text:  # the longer first, or the rest of it would be printed around the shorter's [REDACTED]
            text = text.replace(s, REDACTED)
    # the patterns only where they can match (a regex pass over every reply costs more than the rest of redact;
    # the patterns ignore case, and so does this test: a long text's "bEaReR" was let through)
    low = text.lower()
    if "bearer" in low or "authoriz" in low or "sk-" in low:
        text = _PATTERNS.sub(lambda m: (m.group("pre") or "") + REDACTED, text)
    return well_formed(text)


def well_formed(text: str) -> str:
    """``text`` with each lone surrogate replaced by U+FFFD (module docstring)."""
    if not text.isascii() and _SURROGATE.search(text):
        return _SURROGATE.sub("\ufffd", text)
    return text


class RedactingFilter(logging.Filter):
    """A logging filter that redacts the rendered message of every record it sees."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        clean = redact(msg)
        if clean != msg:
            record.msg, record.args = clean, None
        return True


_filter = RedactingFilter()


def redact_logs(logger: logging.Logger) -> None:
    """Redact every record logged through ``logger`` (a logger's filters do not see its children's records)."""
    if _filter not in logger.filters:
        logger.filters.append(_filter)
