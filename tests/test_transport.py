"""Unit tests of the HTTP layer: request shape, error mapping, retries and auth.

httpx is mocked with respx (the ``router`` fixture and ``mock_workspace``; its router serves both
``httpx.Client`` and ``httpx.AsyncClient``), so every client test runs once with :class:`ClipClient`
and once with :class:`AsyncClipClient` against the same mocked answers. The databricks-sdk
``Config`` tests use the real loopback ``ServingServer`` because ``Config()`` probes the host with
``requests``, which respx does not see. Token secrecy is tested in ``test_secrets``.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import json
import threading
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import pytest
from databricks.sdk.core import Config
from databricks.sdk.credentials_provider import CredentialsStrategy
from harness import KINDS, assert_secret_absent, clients_of, header, text_rows
from image_factory import noise, png
from mock_workspace import (
    HOST,
    IMAGE_URL,
    OK,
    TEXT_URL,
    TOKEN,
    client_kwargs,
    echo,
    error_response,
    expected,
    scripted,
)
from serving_server import ServingServer
from tenacity import RetryCallState, Retrying

from clip_client import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AsyncClipClient,
    AuthenticationError,
    BadRequestError,
    ClipClient,
    CredentialsError,
    EndpointNotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    ResponseFormatError,
    ServerError,
)
from clip_client._constants import RETRY_AFTER_MAX
from clip_client._remote.retry import retry_arguments
from clip_client._remote.status import error_from_response, parse_retry_after
from clip_client._remote.workspace import normalize_host, resolve_workspace


def png_bytes(size: int = 224, seed: int = 0) -> bytes:
    return png(noise(size, size, seed))


# --------------------------------------------------------------------------------------------------
# Request shape


async def test_text_request_shape(router, make):
    route = router.post(TEXT_URL).mock(side_effect=echo)
    texts = ["a red car", 'quote " and \\ backslash', "日本語 🙂", "line\nbreak"]
    out = await make().embed_texts(texts)

    np.testing.assert_array_equal(out, expected(texts))
    assert out.dtype == np.float32
    assert route.call_count == 1
    request = route.calls.last.request
    assert request.method == "POST"
    assert str(request.url) == TEXT_URL
    assert json.loads(request.content) == {"dataframe_records": [{"input": t} for t in texts]}
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"].startswith("clip-serving-client/")


async def test_body_has_no_llm_keys(router, make):
    route = router.post(TEXT_URL).mock(side_effect=echo)
    await make().embed_text("hello")
    doc = json.loads(route.calls.last.request.content)
    assert list(doc) == ["dataframe_records"]
    assert not {"input", "inputs", "prompt", "messages", "instances"} & set(doc)


async def test_image_request_shape(router, make, tmp_path):
    route = router.post(IMAGE_URL).mock(side_effect=echo)
    text_route = router.post(TEXT_URL).mock(side_effect=echo)
    raw = [png_bytes(seed=1), png_bytes(seed=2)]
    paths = []
    for i, data in enumerate(raw):
        path = tmp_path / f"img{i}.png"
        path.write_bytes(data)
        paths.append(path)

    out = await make().embed_images(paths)

    b64 = [base64.b64encode(data).decode() for data in raw]  # 224x224 RGB PNG: sent as it is
    np.testing.assert_array_equal(out, expected(b64))
    assert route.call_count == 1
    assert text_route.call_count == 0
    request = route.calls.last.request
    assert json.loads(request.content) == {"dataframe_records": [{"input": s} for s in b64]}
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.headers["content-type"] == "application/json"


async def test_custom_endpoint_names(router, make):
    text = router.post(f"{HOST}/serving-endpoints/my-text/invocations").mock(side_effect=echo)
    image = router.post(f"{HOST}/serving-endpoints/my-image/invocations").mock(side_effect=echo)
    client = make(text_endpoint="my-text", image_endpoint="my-image")
    await client.embed_texts(["a"])
    await client.embed_images([png_bytes()])
    assert text.call_count == 1
    assert image.call_count == 1


async def test_batches_are_split_and_reassembled_in_order(router, make):
    route = router.post(TEXT_URL).mock(side_effect=echo)
    texts = [f"text number {i}" for i in range(23)]
    out = await make(batch_size=5, max_concurrency=3).embed_texts(texts)
    np.testing.assert_array_equal(out, expected(texts))
    sizes = sorted(len(json.loads(c.request.content)["dataframe_records"]) for c in route.calls)
    assert sizes == [3, 5, 5, 5, 5]


async def test_host_is_normalised_in_the_url(router, make):
    route = router.post(TEXT_URL).mock(side_effect=echo)
    await make(host="example.cloud.databricks.com/").embed_text("x")
    assert route.call_count == 1


# --------------------------------------------------------------------------------------------------
# Error mapping

STATUS_CASES = [
    (400, "BAD_REQUEST", BadRequestError),
    (401, "UNAUTHENTICATED", AuthenticationError),
    (403, "PERMISSION_DENIED", PermissionDeniedError),
    (404, "RESOURCE_DOES_NOT_EXIST", EndpointNotFoundError),
    (413, "REQUEST_ENTITY_TOO_LARGE", PayloadTooLargeError),
    (429, "REQUEST_LIMIT_EXCEEDED", RateLimitError),
    (500, "INTERNAL_ERROR", ServerError),
    (502, "BAD_GATEWAY", ServerError),
    (503, "TEMPORARILY_UNAVAILABLE", ServerError),
    (504, "DEADLINE_EXCEEDED", ServerError),
]


@pytest.mark.parametrize(("status", "code", "cls"), STATUS_CASES)
async def test_status_maps_to_error(router, make, status, code, cls):
    message = f"the server said no ({status})"
    router.post(TEXT_URL).mock(return_value=error_response(status, code, message))
    with pytest.raises(cls) as info:
        await make(max_retries=0).embed_texts(["a"])
    err = info.value
    assert type(err) is cls
    assert isinstance(err, APIStatusError)
    assert err.status_code == status
    assert err.error_code == code
    assert err.message == message
    assert err.request_id == f"req-{status}"
    assert err.endpoint == "clip-text-embedding"
    assert err.attempts == 1
    text = str(err)
    for part in ("clip-text-embedding", f"HTTP {status}", code, message, f"req-{status}"):
        assert part in text
    assert TOKEN not in text
    assert TOKEN not in repr(err)


@pytest.mark.parametrize(
    ("status", "cls"), [(409, APIStatusError), (418, APIStatusError), (599, ServerError)]
)
def test_other_statuses_get_the_closest_class(status, cls):
    err = error_from_response(httpx.Response(status, text="nope"), "ep")
    assert type(err) is cls
    assert err.status_code == status


def test_plain_text_504_body_becomes_the_message():
    response = httpx.Response(504, text="upstream request timeout", headers={"x-request-id": "abc-123"})
    err = error_from_response(response, "clip-image-embedding")
    assert isinstance(err, ServerError)
    assert err.message == "upstream request timeout"
    assert err.error_code is None
    assert str(err) == (
        "endpoint 'clip-image-embedding' answered HTTP 504: upstream request timeout [request_id=abc-123]"
    )


def test_html_body_is_condensed():
    html = (
        "<html>\n  <head>\n    <title>502 Bad Gateway</title>\n  </head>\n  <body>\n"
        + "    <center><h1>502 Bad Gateway</h1></center>\n" * 100
        + "  </body>\n</html>\n"
    )
    err = error_from_response(httpx.Response(502, text=html), "ep")
    assert isinstance(err, ServerError)
    assert "502 Bad Gateway" in err.message
    assert "\n" not in err.message
    assert "  " not in err.message
    assert len(err.message) <= 300


def test_request_id_falls_back_to_the_databricks_header():
    response = httpx.Response(500, json={"message": "m"}, headers={"x-databricks-request-id": "db-9"})
    assert error_from_response(response, "ep").request_id == "db-9"


def test_empty_error_body_uses_the_reason_phrase():
    err = error_from_response(httpx.Response(503), "ep")
    assert err.message == "Service Unavailable"
    assert err.request_id is None
    assert "request_id" not in str(err)


def test_json_error_without_message_keeps_the_body():
    err = error_from_response(httpx.Response(400, json={"detail": "missing column 'input'"}), "ep")
    assert "missing column 'input'" in err.message


def test_status_error_hints_say_what_to_do():
    err = error_from_response(error_response(404, "RESOURCE_DOES_NOT_EXIST"), "nope")
    assert "text_endpoint=" in str(err)
    err = error_from_response(error_response(401, "UNAUTHENTICATED"), "ep")
    assert "DATABRICKS_TOKEN" in str(err)


# --------------------------------------------------------------------------------------------------
# Retries


@pytest.mark.parametrize(
    ("exc", "cls"),
    [
        (httpx.ConnectError, APIConnectionError),
        (httpx.RemoteProtocolError, APIConnectionError),
        (httpx.ReadTimeout, APITimeoutError),
        (httpx.ConnectTimeout, APITimeoutError),
        (httpx.WriteTimeout, APITimeoutError),
    ],
)
async def test_transport_errors_are_retried_then_raised(router, make, exc, cls):
    route = router.post(TEXT_URL).mock(side_effect=scripted(*[exc] * 10))
    with pytest.raises(cls) as info:
        await make(max_retries=3).embed_texts(["a"])
    err = info.value
    assert type(err) is cls
    assert route.call_count == 4
    assert err.attempts == 4
    assert "gave up after 4 attempts" in str(err)
    assert err.endpoint == "clip-text-embedding"
    assert isinstance(err.__cause__, exc)
    assert TOKEN not in str(err)


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
async def test_retryable_statuses_are_retried_until_success(router, make, status):
    route = router.post(TEXT_URL).mock(
        side_effect=scripted(error_response(status, "X"), error_response(status, "X"), OK)
    )
    texts = ["first", "second", "third"]
    out = await make(max_retries=3).embed_texts(texts)
    np.testing.assert_array_equal(out, expected(texts))
    assert route.call_count == 3
    bodies = {c.request.content for c in route.calls}
    assert len(bodies) == 1  # the very same body is sent again


async def test_transport_error_then_success(router, make):
    route = router.post(TEXT_URL).mock(side_effect=scripted(httpx.ConnectError, httpx.ReadTimeout, OK))
    out = await make(max_retries=2).embed_texts(["x", "y"])
    np.testing.assert_array_equal(out, expected(["x", "y"]))
    assert route.call_count == 3


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413])
async def test_client_errors_are_not_retried(router, make, status):
    route = router.post(TEXT_URL).mock(side_effect=scripted(error_response(status, "NOPE"), OK))
    with pytest.raises(APIStatusError) as info:
        await make(max_retries=5).embed_texts(["a"])
    assert route.call_count == 1
    assert info.value.status_code == status
    assert info.value.attempts == 1
    assert "gave up" not in str(info.value)


async def test_client_error_after_retries_reports_every_attempt(router, make):
    route = router.post(TEXT_URL).mock(
        side_effect=scripted(
            error_response(503, "TEMPORARILY_UNAVAILABLE"),
            httpx.ConnectError,
            error_response(400, "BAD_REQUEST", "bad input"),
            OK,
        )
    )
    with pytest.raises(BadRequestError) as info:
        await make(max_retries=5).embed_texts(["a"])
    assert route.call_count == 3
    assert info.value.attempts == 3
    assert "bad input" in str(info.value)


async def test_a_malformed_200_is_retried_like_a_transient_failure(router, make):
    # A gateway's HTML page or a truncated answer is a glitch of that attempt, not of the input.
    route = router.post(TEXT_URL).mock(
        side_effect=scripted(httpx.Response(200, json={"predictions": [[1.0]]}), OK)
    )
    out = await make(max_retries=5).embed_texts(["a", "b"])
    np.testing.assert_array_equal(out, expected(["a", "b"]))
    assert route.call_count == 2


async def test_a_malformed_200_that_persists_is_an_error_not_a_short_array(router, make):
    route = router.post(TEXT_URL).mock(return_value=httpx.Response(200, json={"predictions": [[1.0]]}))
    with pytest.raises(ResponseFormatError, match="sent 2 records but got 1 rows back"):
        await make(max_retries=2).embed_texts(["a", "b"])
    assert route.call_count == 2  # a malformed 200 is retried once at most


@pytest.mark.parametrize("status", [429, 503])
async def test_status_retries_exhausted(router, make, status):
    route = router.post(TEXT_URL).mock(return_value=error_response(status, "BUSY", "try later"))
    with pytest.raises(APIStatusError) as info:
        await make(max_retries=2).embed_texts(["a"])
    err = info.value
    assert route.call_count == 3
    assert err.attempts == 3
    assert err.status_code == status
    assert str(err).endswith("(gave up after 3 attempts)")
    assert "try later" in str(err)


async def test_retry_after_zero_is_honoured_and_recorded(router, make):
    route = router.post(TEXT_URL).mock(
        side_effect=scripted(error_response(429, "REQUEST_LIMIT_EXCEEDED", **{"Retry-After": "0"}), OK)
    )
    out = await make(max_retries=1).embed_texts(["a"])
    np.testing.assert_array_equal(out, expected(["a"]))
    assert route.call_count == 2

    router.post(TEXT_URL).mock(
        return_value=error_response(429, "REQUEST_LIMIT_EXCEEDED", **{"Retry-After": "0"})
    )
    with pytest.raises(RateLimitError) as info:
        await make(max_retries=1).embed_texts(["a"])
    assert info.value.retry_after == 0.0


async def test_retry_deadline_stops_retries(router, make):
    route = router.post(TEXT_URL).mock(return_value=error_response(503, "TEMPORARILY_UNAVAILABLE"))
    with pytest.raises(ServerError) as info:
        await make(max_retries=50, retry_deadline=1e-6).embed_texts(["a"])
    assert route.call_count == 1
    assert info.value.attempts == 1


async def test_each_batch_retries_independently(router, make):
    seen: set[bytes] = set()

    def flaky(request: httpx.Request) -> httpx.Response:
        if request.content not in seen:  # every batch fails its first attempt, whatever the order
            seen.add(request.content)
            return error_response(503, "TEMPORARILY_UNAVAILABLE")
        return echo(request)

    route = router.post(TEXT_URL).mock(side_effect=flaky)
    texts = [f"t{i}" for i in range(6)]
    out = await make(max_retries=1, batch_size=2, max_concurrency=1).embed_texts(texts)
    np.testing.assert_array_equal(out, expected(texts))
    assert route.call_count == 6


# -- the retry policy itself ----------------------------------------------------------------------


def state_after(exc: BaseException, attempt: int) -> RetryCallState:
    state = RetryCallState(retry_object=Retrying(), fn=None, args=(), kwargs={})
    state.attempt_number = attempt
    state.set_exception((type(exc), exc, None))
    return state


def policy(**overrides: Any) -> dict[str, Any]:
    kwargs = {"max_retries": 5, "deadline": 900.0, "backoff": 0.5, "backoff_max": 30.0, **overrides}
    return retry_arguments(**kwargs)


def rate_limited(retry_after: float | None) -> RateLimitError:
    return RateLimitError("slow down", status_code=429, endpoint="ep", retry_after=retry_after)


@pytest.mark.parametrize("seconds", [0.0, 1.0, 7.0, 42.5])
@pytest.mark.parametrize("attempt", [1, 4])
def test_wait_honours_retry_after(seconds, attempt):
    wait = policy()["wait"]
    assert wait(state_after(rate_limited(seconds), attempt)) == seconds


def test_wait_honours_retry_after_from_a_real_response():
    response = error_response(503, "TEMPORARILY_UNAVAILABLE", **{"Retry-After": "17"})
    err = error_from_response(response, "ep")
    assert err.retry_after == 17.0
    assert policy()["wait"](state_after(err, 1)) == 17.0


def test_wait_caps_retry_after():
    wait = policy()["wait"]
    assert wait(state_after(rate_limited(RETRY_AFTER_MAX * 10), 1)) == RETRY_AFTER_MAX
    assert wait(state_after(rate_limited(float("inf")), 1)) == RETRY_AFTER_MAX


@pytest.mark.parametrize(
    "exc",
    [
        rate_limited(None),
        ServerError("x", status_code=503),
        APIConnectionError("refused"),
        APITimeoutError("slow"),
    ],
)
def test_backoff_without_retry_after_is_jittered_within_half_to_full_ceiling(exc):
    backoff, backoff_max = 0.5, 6.0
    wait = policy(backoff=backoff, backoff_max=backoff_max)["wait"]
    for attempt in range(1, 12):
        ceiling = min(backoff_max, backoff * 2 ** (attempt - 1))
        waits = [wait(state_after(exc, attempt)) for _ in range(50)]
        assert all(ceiling / 2 <= w <= ceiling for w in waits), (attempt, waits)
        assert len(set(waits)) > 1  # jittered, not fixed
    assert max(wait(state_after(exc, 30)) for _ in range(50)) <= backoff_max


def test_zero_backoff_waits_zero():
    wait = policy(backoff=0.0)["wait"]
    assert {wait(state_after(ServerError("x", status_code=503), n)) for n in range(1, 6)} == {0.0}


def test_retry_predicate():
    retry = policy()["retry"]
    for status in (408, 429, 500, 502, 503, 504):
        assert retry(state_after(APIStatusError("x", status_code=status), 1)), status
    for status in (400, 401, 403, 404, 413, 409):
        assert not retry(state_after(APIStatusError("x", status_code=status), 1)), status
    assert retry(state_after(APIConnectionError("x"), 1))
    assert retry(state_after(APITimeoutError("x"), 1))
    assert retry(state_after(ResponseFormatError("x"), 1))
    assert not retry(state_after(ValueError("x"), 1))


def fake_state(attempt: int, elapsed: float, upcoming: float) -> Any:
    return SimpleNamespace(attempt_number=attempt, seconds_since_start=elapsed, upcoming_sleep=upcoming)


def test_stop_after_max_retries_plus_one_attempts():
    stop = policy(max_retries=2)["stop"]
    assert not stop(fake_state(1, 0.0, 0.0))
    assert not stop(fake_state(2, 0.0, 0.0))
    assert stop(fake_state(3, 0.0, 0.0))
    assert policy(max_retries=0)["stop"](fake_state(1, 0.0, 0.0))


def test_stop_before_the_deadline():
    stop = policy(max_retries=100, deadline=10.0)["stop"]
    assert not stop(fake_state(2, 3.0, 2.0))
    assert stop(fake_state(2, 9.0, 2.0))  # the next wait would cross the deadline
    assert stop(fake_state(2, 10.5, 0.0))


def test_give_up_sets_attempts_and_reraises_the_last_error():
    err = ServerError("down", status_code=503, endpoint="ep")

    def always_down() -> None:
        raise err

    def run() -> None:
        for attempt in Retrying(**policy(max_retries=2, backoff=0.0)):
            with attempt:
                always_down()

    with pytest.raises(ServerError) as info:
        run()
    assert info.value is err
    assert err.attempts == 3


def test_sync_and_async_share_one_policy_through_tenacity():
    calls = []

    def fails_twice() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ServerError("down", status_code=503)
        return "done"

    args = policy(backoff=0.0)
    for attempt in Retrying(**args):
        with attempt:
            result = fails_twice()
    assert result == "done"
    assert len(calls) == 3


# -- Retry-After parsing --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("0", 0.0), ("3", 3.0), (" 120 ", 120.0), ("1.5", 1.5), ("-4", 0.0)],
)
def test_parse_retry_after_seconds(value, seconds):
    assert parse_retry_after(value) == seconds


def test_parse_retry_after_http_date():
    now = time.time()
    later = email.utils.formatdate(now + 30, usegmt=True)
    # formatdate drops the fraction of a second
    assert parse_retry_after(later, now=now) == pytest.approx(30, abs=1.0)
    fixed_now = email.utils.parsedate_to_datetime("Wed, 21 Oct 2015 07:28:00 GMT").timestamp()
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:45 GMT", now=fixed_now) == 45.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now=fixed_now) == 0.0  # in the past


@pytest.mark.parametrize("value", [None, "", "soon", "Wed, 99 Foo 2015", "12 parsecs"])
def test_parse_retry_after_garbage_is_none(value):
    assert parse_retry_after(value) is None


# --------------------------------------------------------------------------------------------------
# Sync and async agree


SCENARIOS: dict[str, list[Any]] = {
    "ok": [OK],
    "retry-then-ok": [lambda: error_response(503, "TEMPORARILY_UNAVAILABLE"), httpx.ConnectError, OK],
    "bad-request": [lambda: error_response(400, "BAD_REQUEST", "Encountered an unexpected error")],
    "not-found": [lambda: error_response(404, "RESOURCE_DOES_NOT_EXIST", "no such endpoint")],
    "rate-limited": [lambda: error_response(429, "REQUEST_LIMIT_EXCEEDED", **{"Retry-After": "0"})] * 3,
    "timeouts": [httpx.ReadTimeout] * 3,
    "dropped": [httpx.RemoteProtocolError] * 3,
    "wrong-rows": [lambda: httpx.Response(200, json={"predictions": [[1.0, 2.0]]})] * 3,
    "nan": [lambda: httpx.Response(200, content=b'{"predictions": [[1.0], [NaN]]}')] * 3,
    "html-200": [lambda: httpx.Response(200, text="<html><body>Login</body></html>")] * 3,
    "plain-504": [lambda: httpx.Response(504, text="upstream request timeout")] * 3,
}


def outcome_of(result: Any) -> Any:
    if isinstance(result, BaseException):
        attrs = dict(vars(result))
        return type(result), str(result), attrs
    return result.tolist()


@pytest.mark.parametrize("scenario", list(SCENARIOS))
async def test_sync_and_async_agree(router, scenario):
    outcomes = []
    for kind in KINDS:
        router.reset()  # clear the call history of the previous kind
        route = router.post(TEXT_URL).mock(side_effect=scripted(*SCENARIOS[scenario]))
        async with clients_of(kind, **client_kwargs(max_retries=2)) as make:
            try:
                result: Any = await make().embed_texts(["alpha", "beta"])
            except Exception as exc:
                result = exc
        outcomes.append((outcome_of(result), route.call_count))
    assert outcomes[0] == outcomes[1]
    if scenario in ("ok", "retry-then-ok"):
        assert outcomes[0][0] == expected(["alpha", "beta"]).tolist()
    else:
        assert isinstance(outcomes[0][0], tuple)


# --------------------------------------------------------------------------------------------------
# Workspace resolution and databricks-sdk auth


def auth_headers(srv: ServingServer) -> list[str | None]:
    return [header(r.headers, "Authorization") for r in srv.received]


class CountingStrategy(CredentialsStrategy):
    """A credentials strategy whose header factory records each call and the thread it ran on."""

    def __init__(self, headers: dict[str, str] | None = None, fail: bool = False) -> None:
        self.headers = headers or {"Authorization": "Bearer from-strategy"}
        self.fail = fail
        self.threads: list[int] = []
        self.lock = threading.Lock()

    def auth_type(self) -> str:
        return "counting"

    def __call__(self, cfg: Config) -> Callable[[], dict[str, str]]:
        def factory() -> dict[str, str]:
            with self.lock:
                self.threads.append(threading.get_ident())
            if self.fail:
                raise RuntimeError("OAuth client secret expired")
            return dict(self.headers)

        return factory


def test_explicit_host_and_token_need_no_config(clean_env):
    workspace = resolve_workspace(host="adb-123.azuredatabricks.net/", token=TOKEN)
    assert workspace.host == "https://adb-123.azuredatabricks.net"
    assert workspace.auth_type == "pat"
    assert_secret_absent(TOKEN, workspace, workspace.auth)


async def test_config_token_reaches_the_server(clean_env, server, make):
    config = Config(host=server.url, token=TOKEN)
    client = make(host=None, token=None, config=config)
    out = await client.embed_texts(["a", "b"])
    np.testing.assert_array_equal(out, text_rows(["a", "b"]))
    assert auth_headers(server) == [f"Bearer {TOKEN}"]
    assert client.client.backend.workspace.auth_type == "pat"
    assert_secret_absent(TOKEN, client.client, client.client.backend.workspace)


async def test_config_authenticate_runs_per_request_and_merges_all_headers(clean_env, server, make):
    strategy = CountingStrategy(
        {"Authorization": "Bearer fresh", "X-Databricks-Azure-SP-Management-Token": "mgmt"}
    )
    config = Config(host=server.url, credentials_strategy=strategy)
    before = len(strategy.threads)
    client = make(host=None, token=None, config=config, batch_size=1)
    await client.embed_texts(["a", "b", "c"])
    state_reads = sum(path.startswith("/api/") for _, path in server.requests)  # the endpoint's state
    assert state_reads == 1
    assert len(strategy.threads) - before == 3 + state_reads  # once per request, never cached
    assert len(server.received) == 3
    for received in server.received:
        headers = {k.lower(): v for k, v in received.headers.items()}
        assert headers["authorization"] == "Bearer fresh"
        assert headers["x-databricks-azure-sp-management-token"] == "mgmt"
    assert client.client.backend.workspace.auth_type == "counting"


async def test_async_client_authenticates_off_the_event_loop(clean_env, server):
    strategy = CountingStrategy()
    config = Config(host=server.url, credentials_strategy=strategy)
    loop_thread = threading.get_ident()
    before = len(strategy.threads)
    async with AsyncClipClient(config=config, batch_size=1) as client:
        await asyncio.gather(client.embed_texts(["a", "b"]), client.embed_texts(["c"]))
    calls = strategy.threads[before:]
    assert len(calls) == 3 + 1  # the three POSTs and the endpoint state's GET
    assert loop_thread not in calls


async def test_credential_failure_is_a_credentials_error(clean_env, server, make):
    config = Config(host=server.url, credentials_strategy=CountingStrategy(fail=True))
    with pytest.raises(CredentialsError, match="OAuth client secret expired"):
        await make(host=None, token=None, config=config).embed_texts(["a"])
    assert server.received == []


async def test_env_vars_resolve_the_workspace(clean_env, server, make):
    clean_env.setenv("DATABRICKS_HOST", server.url)
    clean_env.setenv("DATABRICKS_TOKEN", TOKEN)
    client = make(host=None, token=None)
    await client.embed_text("hello")
    assert auth_headers(server) == [f"Bearer {TOKEN}"]
    assert client.client.backend.workspace.host == server.url


def write_profiles(path, server_url: str) -> None:
    path.write_text(
        "[DEFAULT]\nhost = https://default.invalid\ntoken = dapi-default\n\n"
        f"[staging]\nhost = {server_url}\ntoken = dapi-staging\n"
    )


async def test_profile_from_a_config_file(clean_env, server, make, tmp_path):
    cfg = tmp_path / "databrickscfg"
    write_profiles(cfg, server.url)
    clean_env.setenv("DATABRICKS_CONFIG_FILE", str(cfg))
    client = make(host=None, token=None, profile="staging")
    await client.embed_text("hello")
    assert auth_headers(server) == ["Bearer dapi-staging"]
    assert client.client.backend.workspace.host == server.url


async def test_profile_from_env_var(clean_env, server, make, tmp_path):
    cfg = tmp_path / "databrickscfg"
    write_profiles(cfg, server.url)
    clean_env.setenv("DATABRICKS_CONFIG_FILE", str(cfg))
    clean_env.setenv("DATABRICKS_CONFIG_PROFILE", "staging")
    await make(host=None, token=None).embed_text("hello")
    assert auth_headers(server) == ["Bearer dapi-staging"]


def test_missing_workspace_is_a_helpful_value_error(clean_env):
    with pytest.raises(ValueError, match="could not resolve a Databricks workspace") as info:
        ClipClient()
    message = str(info.value)
    assert "host=" in message
    assert "DATABRICKS_HOST" in message


def test_missing_profile_is_a_value_error(clean_env, tmp_path):
    cfg = tmp_path / "databrickscfg"
    cfg.write_text("[other]\nhost = https://other.invalid\ntoken = t\n")
    clean_env.setenv("DATABRICKS_CONFIG_FILE", str(cfg))
    with pytest.raises(ValueError, match="could not resolve a Databricks workspace"):
        resolve_workspace(profile="nope")


def test_config_without_host_is_refused(clean_env):
    config = Config(credentials_strategy=CountingStrategy())
    with pytest.raises(ValueError, match="no workspace host"):
        resolve_workspace(config=config)


def test_config_and_explicit_options_conflict(clean_env, server):
    config = Config(host=server.url, token=TOKEN)
    with pytest.raises(ValueError, match="not both"):
        resolve_workspace(config=config, host=server.url)
    with pytest.raises(ValueError, match="not both"):
        ClipClient(config=config, token=TOKEN)


# -- normalize_host -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "normalised"),
    [
        ("example.cloud.databricks.com", "https://example.cloud.databricks.com"),
        ("https://example.cloud.databricks.com/", "https://example.cloud.databricks.com"),
        ("  https://example.cloud.databricks.com//  ", "https://example.cloud.databricks.com"),
        ("HTTPS://Example.Cloud.Databricks.com", "https://Example.Cloud.Databricks.com"),
        ("https://example.com:8443/", "https://example.com:8443"),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("http://127.0.0.1:8080/", "http://127.0.0.1:8080"),
        ("http://localhost:5000", "http://localhost:5000"),
        ("http://[::1]:5000", "http://[::1]:5000"),
    ],
)
def test_normalize_host(given, normalised):
    assert normalize_host(given) == normalised


@pytest.mark.parametrize(
    ("host", "fragment"),
    [
        ("http://example.cloud.databricks.com", "clear text"),
        ("http://10.0.0.5:8080", "clear text"),
        ("", "empty"),
        ("   ", "empty"),
        ("ftp://example.com", "not an http(s) URL"),
        ("https://", "not an http(s) URL"),
    ],
)
def test_normalize_host_refuses(host, fragment):
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        normalize_host(host)


def test_plain_http_host_is_refused_by_the_client():
    with pytest.raises(ValueError, match="clear text"):
        ClipClient(host="http://example.cloud.databricks.com", token=TOKEN)
