"""RetryPolicy (pure): backoff growth, cap and jitter, Retry-After, which statuses are retried; and how
the transport boundary classifies the exceptions of a failed request."""

from __future__ import annotations

import email.utils
import http.client
import random
from fractions import Fraction

import pytest
import requests
import urllib3
from hypothesis import given
from hypothesis import strategies as st

from simvue_hpc.errors import ConfigurationError
from simvue_hpc.server import RetryPolicy, format_timestamp
from simvue_hpc.server.http import classify

NOW = 1_700_000_000.0


def test_defaults_follow_the_api_document() -> None:
    policy = RetryPolicy()
    assert policy.total == 8
    assert policy.statuses == frozenset({429, 502, 503, 504})
    assert policy.respect_retry_after and policy.deadline is None


def test_backoff_doubles_without_jitter() -> None:
    policy = RetryPolicy(backoff_factor=0.5, backoff_max=100.0, jitter=0.0)
    assert [policy.backoff(n, 0.9) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0]


def test_backoff_is_capped() -> None:
    policy = RetryPolicy(backoff_factor=1.0, backoff_max=5.0, jitter=0.0)
    assert [policy.backoff(n, -0.3) for n in (3, 4, 10, 1000, 10**9)] == [4.0, 5.0, 5.0, 5.0, 5.0]


def test_backoff_zero_factor_means_no_wait() -> None:
    assert RetryPolicy(backoff_factor=0.0).backoff(5, 1.0) == 0.0


def test_backoff_is_a_pure_function_of_attempt_and_draw() -> None:
    policy = RetryPolicy(backoff_factor=1.0, backoff_max=100.0, jitter=0.25)
    assert policy.backoff(3, 0.0) == 4.0  # the band's centre
    assert policy.backoff(3, -1.0) == 3.0 and policy.backoff(3, 1.0) == 5.0  # its edges
    assert policy.backoff(3, 7.0) == 5.0  # a draw outside [-1, 1] is clamped
    assert [policy.backoff(n, 0.5) for n in range(1, 5)] == [policy.backoff(n, 0.5) for n in range(1, 5)]


@given(
    attempt=st.integers(min_value=1, max_value=1100),
    factor=st.floats(min_value=0.0, max_value=10.0),
    cap=st.floats(min_value=0.0, max_value=120.0),
    jitter=st.floats(min_value=0.0, max_value=1.0),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_backoff_stays_within_the_jitter_band_and_the_cap(
    attempt: int, factor: float, cap: float, jitter: float, seed: int
) -> None:
    policy = RetryPolicy(backoff_factor=factor, backoff_max=cap, jitter=jitter)
    exact = Fraction(factor) * 2 ** (attempt - 1)  # no float overflow in the reference
    base = cap if exact >= Fraction(cap) else float(exact)
    delay = policy.backoff(attempt, random.Random(seed).uniform(-1.0, 1.0))
    assert 0.0 <= delay <= cap
    assert base * (1 - jitter) - 1e-9 <= delay <= base * (1 + jitter) + 1e-9


@given(seed=st.integers(min_value=0, max_value=2**32))
def test_jitter_spreads_the_delays(seed: int) -> None:
    policy = RetryPolicy(backoff_factor=1.0, backoff_max=100.0, jitter=0.25)
    rng = random.Random(seed)
    delays = {policy.backoff(3, rng.uniform(-1.0, 1.0)) for _ in range(20)}
    assert len(delays) > 1
    assert all(3.0 <= d <= 5.0 for d in delays)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("2", 2.0), ("0", 0.0), ("120", 120.0), (" 3 ", 3.0), ("1.5", 1.5)],
)
def test_retry_after_seconds(value: str, expected: float) -> None:
    assert RetryPolicy().retry_after({"Retry-After": value}, NOW) == expected


def test_retry_after_http_date() -> None:
    header = email.utils.formatdate(NOW + 30, usegmt=True)
    assert RetryPolicy().retry_after({"Retry-After": header}, NOW) == pytest.approx(30.0)


def test_retry_after_http_date_in_the_past_means_now() -> None:
    header = email.utils.formatdate(NOW - 30, usegmt=True)
    assert RetryPolicy().retry_after({"Retry-After": header}, NOW) == 0.0


def test_retry_after_header_name_is_case_insensitive() -> None:
    assert RetryPolicy().retry_after({"retry-after": "4"}, NOW) == 4.0
    assert RetryPolicy().retry_after(requests.structures.CaseInsensitiveDict({"RETRY-AFTER": "5"}), NOW) == 5.0


@pytest.mark.parametrize("value", ["", "soon", "-1", "Mon, 99 Foo 2023 12:00:00 GMT"])
def test_unreadable_retry_after_is_ignored(value: str) -> None:
    assert RetryPolicy().retry_after({"Retry-After": value}, NOW) is None


def test_missing_retry_after() -> None:
    assert RetryPolicy().retry_after({}, NOW) is None


@pytest.mark.parametrize(
    ("status", "retried"),
    [
        (429, True),
        (502, True),
        (503, True),
        (504, True),
        (500, False),
        (501, False),
        (400, False),
        (401, False),
        (403, False),
        (404, False),
        (409, False),
        (422, False),
        (200, False),
    ],
)
def test_should_retry_statuses(status: int, retried: bool) -> None:
    assert RetryPolicy().should_retry(status) is retried


def test_422_and_other_4xx_are_never_retried_even_when_listed() -> None:
    policy = RetryPolicy(statuses=frozenset({400, 404, 422, 429, 500}))
    assert not policy.should_retry(422)
    assert not policy.should_retry(400)
    assert not policy.should_retry(404)
    assert policy.should_retry(429)
    assert policy.should_retry(500)


@pytest.mark.parametrize(
    ("exception", "retried"),
    [
        (requests.exceptions.ConnectionError("refused"), True),
        (requests.exceptions.ConnectTimeout("slow"), True),
        (requests.exceptions.ReadTimeout("slow"), True),
        (requests.exceptions.Timeout("slow"), True),
        (requests.exceptions.ChunkedEncodingError("cut"), True),
        (ConnectionResetError("reset"), True),
        (TimeoutError("slow"), True),
        (requests.exceptions.SSLError("bad certificate"), False),
        (requests.exceptions.InvalidURL("nope"), False),
        (requests.exceptions.MissingSchema("nope"), False),
        (requests.exceptions.TooManyRedirects("loop"), False),
        (ValueError("bug"), False),
    ],
)
def test_which_exceptions_are_retried(exception: BaseException, retried: bool) -> None:
    assert classify(exception, 30.0, None).retryable is retried


def _refused() -> requests.exceptions.ConnectionError:
    try:
        raise ConnectionRefusedError(111, "Connection refused")
    except ConnectionRefusedError as refused:
        inner = urllib3.exceptions.NewConnectionError(None, f"Failed to establish a new connection: {refused}")  # type: ignore[arg-type]
        return requests.exceptions.ConnectionError(urllib3.exceptions.MaxRetryError(None, "/api", inner))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("exception", "ambiguous"),
    [
        (_refused(), False),  # never left this host
        (requests.exceptions.ConnectTimeout("slow"), False),
        (ConnectionRefusedError("refused"), False),
        (requests.exceptions.ReadTimeout("slow"), True),  # sent; the answer did not come
        (requests.exceptions.ConnectionError(ConnectionResetError("reset")), True),
        (requests.exceptions.ChunkedEncodingError("cut"), True),
        (
            requests.exceptions.ConnectionError(
                urllib3.exceptions.ProtocolError("Connection aborted.", http.client.RemoteDisconnected("closed"))
            ),
            True,
        ),
    ],
)
def test_a_failure_after_the_request_left_is_ambiguous(exception: BaseException, ambiguous: bool) -> None:
    failure = classify(exception, 30.0, None)
    assert failure.retryable and failure.ambiguous is ambiguous


def test_a_failure_reason_never_shows_the_token() -> None:
    token = "tok-123456789"
    failure = classify(requests.exceptions.ConnectionError(f"proxy said Bearer {token}"), 30.0, token)
    assert token not in failure.reason and "***" in failure.reason


@pytest.mark.parametrize(
    "kwargs",
    [{"total": -1}, {"total": 1.5}, {"backoff_factor": -1}, {"backoff_max": -0.1}, {"jitter": 1.5}, {"deadline": 0}],
)
def test_invalid_policies_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_policy_is_frozen() -> None:
    with pytest.raises(AttributeError):
        RetryPolicy().total = 3  # type: ignore[misc]


def test_format_timestamp_is_naive_utc_with_microseconds() -> None:
    assert format_timestamp(0) == "1970-01-01T00:00:00.000000"
    assert format_timestamp(1_700_000_000_123_456) == "2023-11-14T22:13:20.123456"
    assert format_timestamp(1_700_000_000_999_999) == "2023-11-14T22:13:20.999999"
