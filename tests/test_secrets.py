"""Credentials never appear in an error, a repr, a pickle or a log record, even when the server
quotes them back.

A server or gateway can copy the submitted credential into its error body: a 401 whose message reads
``invalid token dapi...``, a 503 page that lists the request headers. Each test here builds such a
server (the loopback :class:`ServingServer` echoing what it was sent), then checks ``str``, ``repr``,
the whole chain of causes as a traceback prints it, ``pickle`` and every ``clip_client`` log record
at DEBUG, for the personal access token, OAuth bearer tokens that change on every refresh, and an
OAuth client secret.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import pickle
import traceback
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from databricks.sdk.core import Config
from databricks.sdk.credentials_provider import CredentialsStrategy
from harness import Make, clients_of
from serving_server import TOKEN, Reply, ServingServer

from clip_client import APIError, ClipClient, ClipClientError, CredentialsError
from clip_client._secrets import excerpt, redact, register

#: The statuses a serving endpoint or its gateway answers with; the retryable ones are retried.
STATUSES = [400, 401, 403, 404, 408, 413, 429, 500, 502, 503, 504]
RETRYABLE = {408, 429, 500, 502, 503, 504}


def rendered(exc: BaseException) -> str:
    """Everything a user or a log could see of an error: its traceback with every chained cause,
    its repr and attributes, and its pickle."""
    text = "".join(traceback.format_exception(exc)) + repr(exc) + repr(vars(exc))
    cause = exc.__cause__ or exc.__context__
    while cause is not None:
        text += repr(cause) + repr(vars(cause)) if hasattr(cause, "__dict__") else repr(cause)
        cause = cause.__cause__ or cause.__context__
    return text + pickle.dumps(exc).decode("latin-1")


def echo_bodies(secret_of: Callable[[dict[str, str]], str]) -> dict[str, Callable[[dict[str, str]], Any]]:
    """Error bodies that quote the credential back, in each place a server might put it."""

    def headers_page(headers: dict[str, str]) -> bytes:
        listed = "\n".join(f"{k}: {v}" for k, v in headers.items())
        return f"<html><body><h1>Service Unavailable</h1><pre>{listed}</pre></body></html>".encode()

    return {
        "message": lambda h: {"error_code": "UNAUTHENTICATED", "message": f"invalid token {secret_of(h)}"},
        "error_code": lambda h: {"error_code": f"BAD_{secret_of(h)}", "message": "no"},
        "headers_page": headers_page,
        "plain_text": lambda h: f"upstream rejected Authorization: {h.get('Authorization')}".encode(),
    }


def bearer(headers: dict[str, str]) -> str:
    return next(v for k, v in headers.items() if k.lower() == "authorization").partition(" ")[2]


@pytest.fixture
def server() -> Iterator[ServingServer]:
    with ServingServer() as started:
        yield started


@pytest.fixture(params=["sync", "async"])
async def make(request: pytest.FixtureRequest, server: ServingServer) -> AsyncIterator[Make]:
    async with clients_of(request.param, server) as factory:
        yield factory


def assert_hidden(secrets: list[str], exc: BaseException, caplog: pytest.LogCaptureFixture) -> None:
    text = rendered(exc)
    for secret in secrets:
        assert secret not in text, f"{secret!r} leaked into {type(exc).__name__}"
    records = [r for r in caplog.records if r.name.startswith("clip_client")]
    for record in records:
        message = record.getMessage()
        for secret in secrets:
            assert secret not in message, record


# --------------------------------------------------------------------------------------------------
# The personal access token, echoed by every status, on the first attempt and on retries


@pytest.mark.parametrize("status", STATUSES)
@pytest.mark.parametrize("where", ["message", "error_code", "headers_page", "plain_text"])
async def test_echoed_token_is_redacted(
    make: Make, server: ServingServer, caplog: pytest.LogCaptureFixture, status: int, where: str
) -> None:
    caplog.set_level(logging.DEBUG, logger="clip_client")
    body = echo_bodies(bearer)[where]
    retried = status in RETRYABLE
    server.script = [Reply(status, body)] * (2 if retried else 1)
    client = make(max_retries=1)
    with pytest.raises(APIError) as info:
        await client.embed_texts(["a"])  # one input: a 413 is not split
    error = info.value
    assert error.attempts == (2 if retried else 1)
    assert_hidden([TOKEN, TOKEN.split("-")[-1]], error, caplog)
    assert "***" in str(error) or (where == "error_code" and "***" in repr(vars(error)))
    if retried:  # the retry was logged, with the (redacted) server text
        logged = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
        assert len(logged) == 1
        assert "***" in logged[0]
    assert server.posts() == (2 if retried else 1)


async def test_echo_in_a_malformed_200_is_redacted(
    make: Make, server: ServingServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="clip_client")
    server.script = [Reply(200, lambda h: f"<html>welcome, {bearer(h)}</html>".encode())] * 2
    with pytest.raises(APIError) as info:
        await make(max_retries=1).embed_texts(["a"])
    assert_hidden([TOKEN], info.value, caplog)
    assert "welcome, ***" in str(info.value)


async def test_a_token_cut_by_the_excerpt_leaves_no_half_behind(make: Make, server: ServingServer) -> None:
    # Non-JSON error bodies are quoted up to 300 characters: put the token across that edge.
    pad = "x" * (300 - len("pad ") - 10)
    server.script = [
        Reply(502, lambda h: f"pad {pad} {bearer(h)} more".encode(), {"Content-Type": "text/plain"})
    ]
    with pytest.raises(APIError) as info:
        await make(max_retries=0).embed_texts(["a"])
    assert TOKEN[:9] not in str(info.value)
    assert str(info.value).count("x") >= 250  # the excerpt itself is still there


# --------------------------------------------------------------------------------------------------
# OAuth: bearer tokens that change on every refresh, and the client secret


class RefreshingStrategy(CredentialsStrategy):
    """An OAuth-like credentials strategy: a new bearer token on every call, as refreshes give."""

    def __init__(self, fail_with: str | None = None) -> None:
        self.issued: list[str] = []
        self.fail_with = fail_with
        self._counter = itertools.count()

    def auth_type(self) -> str:
        return "oauth-m2m-test"

    def __call__(self, cfg: Config) -> Callable[[], dict[str, str]]:
        def headers() -> dict[str, str]:
            if self.fail_with is not None:
                raise RuntimeError(self.fail_with)
            token = f"eyJhbGciOiJSUzI1NiJ9.refreshed-{next(self._counter)}.c2lnbmF0dXJl"
            self.issued.append(token)
            return {"Authorization": f"Bearer {token}"}

        return headers


CLIENT_SECRET = "dose0123456789abcdefOAUTHsecret"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith(("DATABRICKS_", "ARM_", "AZURE_", "GOOGLE_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(tmp_path / "none"))
    return monkeypatch


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_refreshed_oauth_tokens_and_client_secret_are_redacted(
    clean_env: pytest.MonkeyPatch, server: ServingServer, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    caplog.set_level(logging.DEBUG, logger="clip_client")
    strategy = RefreshingStrategy()
    config = Config(
        host=server.url, client_id="sp-id", client_secret=CLIENT_SECRET, credentials_strategy=strategy
    )

    def echo_everything(headers: dict[str, str]) -> dict[str, str]:
        return {"error_code": "TEMPORARILY_UNAVAILABLE", "message": f"{bearer(headers)} / {CLIENT_SECRET}"}

    server.script = [Reply(503, echo_everything), Reply(503, echo_everything), Reply(401, echo_everything)]
    async with clients_of(kind, server, host=None, token=None, config=config, max_retries=2) as make:
        with pytest.raises(APIError) as info:
            await make().embed_texts(["a"])
    assert len(set(strategy.issued)) == 3  # each attempt carried a different token
    assert_hidden([*strategy.issued, CLIENT_SECRET], info.value, caplog)
    assert str(info.value).count("***") == 2
    assert sum("retrying" in r.getMessage() for r in caplog.records) == 2


def test_a_failing_credentials_provider_does_not_leak_through_the_cause(
    clean_env: pytest.MonkeyPatch, server: ServingServer, caplog: pytest.LogCaptureFixture
) -> None:
    strategy = RefreshingStrategy(fail_with=f"invalid_client: secret {CLIENT_SECRET} was rejected")
    config = Config(
        host=server.url, client_id="sp-id", client_secret=CLIENT_SECRET, credentials_strategy=strategy
    )
    with ClipClient(config=config, max_retries=0) as client, pytest.raises(CredentialsError) as info:
        client.embed_texts(["a"])
    assert_hidden([CLIENT_SECRET], info.value, caplog)
    assert "invalid_client: secret *** was rejected" in str(info.value)
    assert info.value.__cause__ is None  # the SDK's own exception quoted the secret


def test_a_clean_credentials_failure_keeps_its_cause(
    clean_env: pytest.MonkeyPatch, server: ServingServer
) -> None:
    strategy = RefreshingStrategy(fail_with="the OAuth client secret has expired")
    config = Config(
        host=server.url, client_id="sp-id", client_secret=CLIENT_SECRET, credentials_strategy=strategy
    )
    with ClipClient(config=config, max_retries=0) as client, pytest.raises(CredentialsError) as info:
        client.embed_texts(["a"])
    assert isinstance(info.value.__cause__, RuntimeError)
    assert "has expired" in str(info.value)


# --------------------------------------------------------------------------------------------------
# The redactor itself


def test_redact_masks_registered_values_and_known_shapes() -> None:
    register("a-registered-credential-42")
    text = (
        "a-registered-credential-42 / Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.payload.sig / "
        "dapi0123456789abcdef0123456789abcdef-3 / Bearer token / basic usage"
    )
    assert redact(text) == "*** / Authorization: Bearer *** / *** / Bearer token / basic usage"


def test_short_values_are_not_registered() -> None:
    register("abc", "", None)
    assert redact("abc and more") == "abc and more"


def test_excerpt_redacts_before_cutting() -> None:
    register("zz-straddling-secret-zz")
    body = b"y" * 95 + b" zz-straddling-secret-zz tail"
    cut = excerpt(body, 100)
    assert "zz-str" not in cut
    assert cut.startswith("y" * 95)


def test_the_logger_filter_scrubs_any_record(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="clip_client")
    register("logged-credential-123456")
    logging.getLogger("clip_client").debug(
        "sent %s with %s", "logged-credential-123456", json.dumps({"a": 1})
    )
    assert caplog.records[-1].getMessage() == 'sent *** with {"a": 1}'


def test_errors_built_by_hand_are_redacted_too() -> None:
    register("hand-made-credential-987")
    error: ClipClientError = APIError("server said hand-made-credential-987", endpoint="e")
    assert "hand-made" not in rendered(error)
