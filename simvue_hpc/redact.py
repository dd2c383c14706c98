"""What a message may show of a URL or of a secret: the one place that hides credentials.

Both the settings (an invalid URL in an error) and the REST client (every request and answer it
quotes) go through these functions, so a token, a ``user:password@`` part or a presigned URL's
signature never reaches a log record or an exception.
"""

from __future__ import annotations

import re
import urllib.parse

MASK = "***"


def redact_url(url: str) -> str:
    """``url`` fit for a message: a ``user:password@`` part becomes ``***@`` and the query string and
    fragment are dropped (presigned storage URLs carry their signature there)."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:  # e.g. an unbalanced IPv6 bracket: fall back to masking up to the last '@'
        return re.sub(r"^(\w+://)?[^/]*@", lambda m: f"{m.group(1) or ''}{MASK}@", url).partition("?")[0]
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@{netloc.rpartition('@')[2]}"
    elif not parts.netloc and "@" in parts.path:  # no scheme: "user:pw@host/..." parses as a path
        return re.sub(r"^[^/]*@", f"{MASK}@", url).partition("?")[0].partition("#")[0]
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def scrub(text: str, secret: str | None) -> str:
    """``text`` with every occurrence of ``secret`` (also as ``repr`` escapes it) replaced by ``***``."""
    if not secret:
        return text
    text = text.replace(secret, MASK)
    escaped = repr(secret)[1:-1]
    return text.replace(escaped, MASK) if escaped != secret else text


def excerpt(text: str, secret: str | None, limit: int) -> str:
    """A server's answer quoted in a message: whitespace folded, ``secret`` scrubbed FIRST, then cut to
    ``limit`` characters (cutting first could leave most of a token that straddles the cut)."""
    text = scrub(re.sub(r"\s+", " ", text).strip(), secret)
    return text if len(text) <= limit else text[:limit] + "..."
