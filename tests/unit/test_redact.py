"""The one place that hides credentials: URLs in messages, tokens in quoted answers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from simvue_hpc.redact import excerpt, redact_url, scrub

TOKEN = "eyJ.secret-token.sig"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://simvue.example.com/api", "https://simvue.example.com/api"),
        ("https://user:pw@simvue.example.com/api", "https://***@simvue.example.com/api"),
        ("ftp://user:pw@x.example.com", "ftp://***@x.example.com"),
        ("http://127.0.0.1:9/storage/ab?op=put&sig=SIGNATURE", "http://127.0.0.1:9/storage/ab"),
        ("http://h/p#frag", "http://h/p"),
        ("user:pw@host/path?x=1", "***@host/path"),
        ("http://u:p@[::1/x", "http://***@[::1/x"),  # not parseable as a URL: still masked
    ],
)
def test_redact_url_hides_credentials_and_signatures(url: str, shown: str) -> None:
    assert redact_url(url) == shown


@given(user=st.text(alphabet="abcdefXYZ019-_.", min_size=1), password=st.text(alphabet="abcXYZ019-_.~", min_size=4))
def test_redact_url_never_shows_a_password(user: str, password: str) -> None:
    shown = redact_url(f"https://{user}:{password}@host.example.com/api?token={password}")
    assert password not in shown.replace("host.example.com/api", "")


def test_scrub_replaces_the_token_and_its_escaped_form() -> None:
    token = 'ab"c\\d'
    assert scrub(f"a {token} b {token!r}", token) == "a *** b '***'"
    assert scrub("nothing here", None) == "nothing here"


@pytest.mark.parametrize("cut", range(180, 221))
def test_excerpt_scrubs_before_it_cuts(cut: int) -> None:
    # the token straddles the cut at every offset around it
    text = "x" * (cut - len(TOKEN) // 2) + f"Authorization: Bearer {TOKEN} trailing"
    shown = excerpt(text, TOKEN, 200)
    for n in range(4, len(TOKEN) + 1):
        for start in range(len(TOKEN) - n + 1):
            assert TOKEN[start : start + n] not in shown
    assert len(shown) <= 203
