"""Credentials never appear in a repr, an error, a pickle or a log record, even when the server
quotes them back; they travel only as the request's bearer header.

All the secrecy tests of the suite are here. A server or gateway can copy the submitted credential
into its error body: a 401 whose message reads ``invalid token dapi...``, a 503 page that lists the
request headers. Most tests here build such a server (the loopback :class:`ServingServer` echoing
what it was sent), then check ``str``, ``repr``, the whole chain of causes as a traceback prints it
(``harness.rendered``), ``pickle`` and every ``clip_client`` log record at DEBUG, for the personal
access token, OAuth bearer tokens that change on every refresh, and an OAuth client secret. A few
mock the workspace with respx (``mock_workspace``) instead.
"""

from __future__ import annotations

import itertools
import json
import logging
import pickle
from collections.abc import Callable
from typing import Any

import httpx
import mock_workspace as mock
import pytest
from databricks.sdk.core import Config
from databricks.sdk.credentials_provider import CredentialsStrategy
from harness import KINDS, TEXT, Make, assert_secret_absent, clients_of, header, rendered
from mock_workspace import OK, error_response, scripted
from serving_server import TOKEN, Reply, ServingServer

from clip_client import (
    APIConnectionError,
    APIError,
    AsyncClipClient,
    AuthenticationError,
    ClipClient,
    ClipClientError,
    CredentialsError,
    ResponseFormatError,
)
from clip_client._core.secrets import excerpt, redact, register

#: The statuses a serving endpoint or its gateway answers with; the retryable ones are retried.
STATUSES = [400, 401, 403, 404, 408, 413, 429, 500, 502, 503, 504]
RETRYABLE = {408, 429, 500, 502, 503, 504}


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
    return (header(headers, "Authorization") or "").partition(" ")[2]


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
# The token: only in the bearer header, never in a repr, an error or a log


async def test_token_is_sent_as_bearer_header(make: Make, server: ServingServer) -> None:
    await make().embed_texts(["a"])
    assert header(server.received[0].headers, "Authorization") == f"Bearer {TOKEN}"


async def test_token_never_shown_in_repr_or_errors(make: Make, server: ServingServer) -> None:
    client = make(max_retries=0)
    backend = client.client.backend
    for text in (repr(client.client), repr(backend), repr(backend.workspace), repr(backend.workspace.auth)):
        assert TOKEN not in text
        assert TOKEN[:12] not in text

    server.script = [Reply(401, {"error_code": "UNAUTHENTICATED", "message": "Invalid access token."})]
    with pytest.raises(AuthenticationError) as auth:
        await client.embed_texts(["a"])
    server.script = [Reply(200, b"<html>login page</html>")]
    with pytest.raises(ResponseFormatError) as fmt:
        await client.embed_texts(["a"])
    server.script = [Reply(drop=True)]
    with pytest.raises(APIConnectionError) as dropped:
        await client.embed_texts(["a"])

    for exc in (auth.value, fmt.value, dropped.value):
        assert TOKEN not in rendered(exc)
    assert "401" in str(auth.value)
    assert server.posts(TEXT) == 3


async def test_token_never_in_tracebacks_or_debug_logs(
    make: Make, server: ServingServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # the root logger: httpx, httpcore and clip_client alike
    client = make(max_retries=1)

    server.script = [Reply(401, {"error_code": "UNAUTHENTICATED", "message": "Invalid access token."})]
    with pytest.raises(AuthenticationError) as auth:
        await client.embed_texts(["a"])
    server.script = [Reply(200, b"<html>login</html>")] * 2
    with pytest.raises(ResponseFormatError) as fmt:
        await client.embed_texts(["a"])
    server.script = [Reply(drop=True)] * 2
    with pytest.raises(APIConnectionError) as dropped:
        await client.embed_texts(["a"])
    await client.embed_texts(["a"])

    secret = TOKEN.split("-")[-1]
    for exc in (auth.value, fmt.value, dropped.value):
        assert TOKEN not in rendered(exc)
        assert secret not in rendered(exc)
    loggers = {r.name.split(".")[0] for r in caplog.records}
    assert {"httpcore", "clip_client"} <= loggers  # DEBUG logging was really on
    for record in caplog.records:
        text = record.getMessage() + (
            logging.Formatter().formatException(record.exc_info) if record.exc_info else ""
        )
        assert secret not in text, record
        assert "Bearer" not in text, record
    assert secret not in caplog.text


async def test_a_response_header_echoing_the_token_is_masked_in_httpcore_debug_logs(
    make: Make, server: ServingServer, caplog: pytest.LogCaptureFixture
) -> None:
    """httpcore logs each response's headers at DEBUG (`receive_response_headers.complete
    return_value=(..., [(b'x-request-id', b'dapi...')])`, on its child logger `httpcore.http11`, as
    bytes): a server that echoes the token in a header must not put it in those lines."""
    caplog.set_level(logging.DEBUG)  # the root logger, as `logging.basicConfig(level=DEBUG)`
    client = make()
    server.script = [Reply(answer=True, headers={"x-request-id": TOKEN})]
    await client.embed_texts(["a"])

    headers = [r for r in caplog.records if "receive_response_headers.complete" in r.getMessage()]
    assert headers, "httpcore logged no response headers: DEBUG was not on"
    assert all(r.name == "httpcore.http11" for r in headers)
    assert any("x-request-id" in r.getMessage() for r in headers)  # the line is kept, masked
    for record in caplog.records:
        assert TOKEN not in record.getMessage(), record
        assert TOKEN.split("-")[-1] not in repr(record.args), record
    assert TOKEN not in caplog.text


def test_records_of_any_http_library_logger_are_masked(caplog: pytest.LogCaptureFixture) -> None:
    """Every logger under httpx, httpcore, databricks.sdk and urllib3 (a child httpcore may add in
    a later version too), whatever its level and arguments, bytes included; other loggers are
    left as they are."""
    from clip_client._core.secrets import redact_library_logs

    redact_library_logs()
    redact_library_logs()  # once: no second wrapper around the record factory
    factory = logging.getLogRecordFactory()
    redact_library_logs()
    assert logging.getLogRecordFactory() is factory
    caplog.set_level(logging.DEBUG)
    register("library-credential-24680")
    for name in ("httpx", "httpcore.http2", "httpcore.socks", "httpcore.some.future.child", "urllib3"):
        logging.getLogger(name).debug("headers=%r token=%s", [(b"x-id", b"library-credential-24680")], "x")
    logging.getLogger("databricks.sdk").warning("< %s", b"dapi0123456789abcdef0123456789abcdef")
    logging.getLogger("my_app").info("mine: %s", "library-credential-24680")
    *library, mine = caplog.records
    assert [r.getMessage() for r in library] == ["headers=[(b'x-id', b'***')] token=x"] * 5 + ["< b'***'"]
    assert mine.getMessage() == "mine: library-credential-24680"  # not the client's to touch
    assert mine.args == ("library-credential-24680",)


def test_importing_clip_client_leaves_logging_alone() -> None:
    """The record factory is wrapped by the first client, not at `import clip_client`."""
    import subprocess
    import sys

    code = (
        "import logging; before = logging.getLogRecordFactory(); import clip_client; "
        "assert logging.getLogRecordFactory() is before; "
        "clip_client.ClipClient(host='https://example.cloud.databricks.com', token='dapi-x-123456789'); "
        "assert logging.getLogRecordFactory() is not before; print('ok')"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.stdout.strip() == "ok", done.stderr


# -- the same against a mocked workspace (respx) ---------------------------------------------------


async def test_token_never_in_reprs(router: Any, make: Make) -> None:
    client = make().client
    workspace = client.backend.workspace  # type: ignore[attr-defined]
    assert_secret_absent(mock.TOKEN, client, client.backend, workspace, workspace.auth, client.settings)
    assert "example.cloud.databricks.com" in repr(client)


async def test_token_never_in_errors_or_logs(
    router: Any, make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = make(max_retries=1)
    router.post(mock.TEXT_URL).mock(
        side_effect=scripted(
            OK,  # a successful call
            error_response(503, "TEMPORARILY_UNAVAILABLE"),  # a retried call
            OK,
            error_response(401, "UNAUTHENTICATED", "Invalid access token"),  # a failed call
            httpx.ConnectError,  # a call that gives up
            httpx.ConnectError,
        )
    )
    await client.embed_texts(["one"])
    await client.embed_texts(["two"])
    with pytest.raises(AuthenticationError) as auth_info:
        await client.embed_texts(["three"])
    with pytest.raises(APIConnectionError) as conn_info:
        await client.embed_texts(["four"])

    assert_secret_absent(mock.TOKEN, auth_info.value, conn_info.value, conn_info.value.__cause__)
    for err in (auth_info.value, conn_info.value):
        assert mock.TOKEN.encode() not in pickle.dumps(err)
    assert any("retrying" in r.getMessage() for r in caplog.records)  # the logs did run
    assert any(r.levelno == logging.DEBUG for r in caplog.records)
    for record in caplog.records:
        assert mock.TOKEN not in record.getMessage()
    assert mock.TOKEN not in caplog.text


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


@pytest.mark.parametrize("status", [200, 500])
async def test_a_body_that_does_not_decode_is_a_typed_error_without_the_token(
    make: Make, server: ServingServer, caplog: pytest.LogCaptureFixture, status: int
) -> None:
    """``Content-Encoding: gzip`` on a body that is not gzip: httpx raises DecodingError, whose
    ``request`` carries the Authorization header. It becomes a ResponseFormatError (retried once),
    which ``on_error="mark"`` contains, and nothing of it holds the token."""
    caplog.set_level(logging.DEBUG, logger="clip_client")
    broken = Reply(status, b"not gzip at all " + TOKEN.encode(), {"Content-Encoding": "gzip"})
    server.script = [broken, broken]
    client = make(max_retries=3)
    with pytest.raises(ResponseFormatError, match="could not be decoded") as info:
        await client.embed_texts(["a"])
    assert info.value.attempts == 2
    assert_hidden([TOKEN], info.value, caplog)
    server.script = [broken, broken]
    result = await client.embed_texts(["a", "b"], on_error="mark")
    assert [f.index for f in result.failures] == [0, 1]


async def test_a_protocol_error_quoting_the_token_is_not_chained(
    make: Make, server: ServingServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A malformed answer whose bad header line quotes the Authorization header: httpx's
    RemoteProtocolError carries the raw line, which cannot be rewritten, so it is left out of the
    chain (and out of the implicit context) while the message, masked, still says what happened."""
    caplog.set_level(logging.DEBUG, logger="clip_client")
    server.script = [Reply(raw=lambda h: f"HTTP/1.1 200 OK\r\nX-Echo Bearer {bearer(h)}\r\n\r\n".encode())]
    with pytest.raises(APIConnectionError) as info:
        await make(max_retries=0).embed_texts(["a"])
    assert_hidden([TOKEN], info.value, caplog)
    assert info.value.__cause__ is None
    assert info.value.__context__ is None
    assert "RemoteProtocolError" in str(info.value)


async def test_a_clean_protocol_error_keeps_its_cause(make: Make, server: ServingServer) -> None:
    server.script = [Reply(raw=b"HTTP/1.1 200 OK\r\nnot a header line\r\n\r\n")]
    with pytest.raises(APIConnectionError) as info:
        await make(max_retries=0).embed_texts(["a"])
    assert isinstance(info.value.__cause__, httpx.RemoteProtocolError)


async def test_whitespace_before_a_token_cannot_push_it_past_the_redaction(
    make: Make, server: ServingServer
) -> None:
    body = b" " * (300 + 4096 - 35) + TOKEN.encode() + b" tail"
    server.script = [Reply(503, body, {"Content-Type": "text/plain"})]
    with pytest.raises(APIError) as info:
        await make(max_retries=0).embed_texts(["a"])
    assert TOKEN[:8] not in rendered(info.value)
    assert "***" in str(info.value)


async def test_a_huge_server_message_is_quoted_short(
    make: Make, server: ServingServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="clip_client")
    huge = {"error_code": "E" * 100_000, "message": "x" * 2_000_000}
    server.script = [Reply(503, huge), Reply(503, huge)]
    with pytest.raises(APIError) as info:
        await make(max_retries=1).embed_texts(["a"])
    assert len(str(info.value)) < 3_000
    assert "2,000,000 characters in all" in str(info.value)
    assert len(info.value.error_code or "") <= 100
    assert all(len(r.getMessage()) < 3_000 for r in caplog.records)


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


@pytest.mark.parametrize("kind", KINDS)
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
    options = server.client_kwargs(host=None, token=None, config=config, max_retries=2)
    async with clients_of(kind, **options) as make:
        with pytest.raises(APIError) as info:
            await make().embed_texts(["a"])
    state_reads = sum(path.startswith("/api/") for _, path in server.requests)  # a GET takes one too
    assert len(set(strategy.issued)) == 3 + state_reads  # each attempt carried a different token
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


@pytest.mark.parametrize("cls", [ClipClient, AsyncClipClient])
def test_a_token_passed_to_the_wrong_option_is_masked_in_the_validation_error(
    cls: type[ClipClient] | type[AsyncClipClient], server: ServingServer
) -> None:
    """pydantic quotes a bad value in its message; a token given as, say, ``timeout=`` too (a
    pasted-in-the-wrong-place mistake) is masked there, and the error is still a ValueError."""
    secret = "dapi-misplaced-0123456789abcdef"
    with pytest.raises(ValueError, match=r"timeout") as caught:
        cls(host=server.url, token=secret, timeout=secret)  # type: ignore[arg-type]
    assert_secret_absent(secret, caught.value)
    assert "input_value='***'" in str(caught.value)
