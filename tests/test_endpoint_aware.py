"""What the client does about what an endpoint says of itself (``GET /api/2.0/serving-endpoints/{name}``),
read once per client and endpoint before the first request to it:

- ``max_concurrency="auto"``: the ceiling of the adaptive limit, the request thread pool and each
  call's window follow the endpoint's provisioned concurrency plus one; the default when unreadable.
- Route-optimized endpoints: requests go to the data plane with an exchanged data-plane token, on the
  same request path (retries, the limit, time bounds, error mapping, redaction).
- Scale from zero: the 503s of an endpoint that is starting are waited out, not taken for overload.

Everything runs against loopback servers: ``ServingServer`` (control plane and serving),
``ControlPlaneServer`` (plus the OIDC token exchange) and ``DataPlaneServer``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pytest
from databricks.sdk.core import Config
from databricks.sdk.credentials_provider import OAuthCredentialsProvider, OauthCredentialsStrategy
from databricks.sdk.oauth import Token
from harness import IMAGE, KINDS, TEXT, Make, clients_of, embed_in_threads, rendered, text_rows
from pydantic import ValidationError
from serving_server import (
    JWT_BEARER_GRANT,
    TOKEN,
    ControlPlaneServer,
    DataPlaneServer,
    Faults,
    Reply,
    ServingServer,
    answer_rows,
    endpoint_state,
)

from clip_client import AsyncClipClient, ClipClient, Settings
from clip_client._core.concurrency import AIMDLimit
from clip_client.errors import APITimeoutError, BadRequestError, CredentialsError, ServerError

#: The workspace OAuth token the test credentials hand out (what the SDK exchanges for a data-plane one).
WORKSPACE_OAUTH_TOKEN = "eyJhbGciOiJSUzI1NiJ9.workspace-oauth.c2lnbmF0dXJl"
TEXTS = [f"text {i}" for i in range(40)]


def gets(server: ServingServer) -> list[str]:
    """The paths of the control-plane GETs ``server`` received (the state reads)."""
    return [path for method, path in server.requests if method == "GET" and path.startswith("/api/")]


def ceiling_log(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "max_concurrency='auto'" in r.getMessage()]


class Gate:
    """A server model that holds the first ``n`` requests until ``n`` are being served at once, then
    answers everything: a client that cannot reach ``n`` in flight leaves the gate shut (each held
    request gives up after ``patience`` seconds, so a failing test ends)."""

    def __init__(self, n: int, dim: int, patience: float = 10.0) -> None:
        self.n = n
        self.dim = dim
        self.patience = patience
        self.arrived = 0
        self.opened = False
        self._cond = threading.Condition()

    def __call__(self, kind: str, inputs: list[str]) -> list[list[float]]:
        with self._cond:
            self.arrived += 1
            if self.arrived >= self.n:
                self.opened = True
                self._cond.notify_all()
            self._cond.wait_for(lambda: self.opened, self.patience)
        return answer_rows(None, self.dim, kind, inputs)


# --------------------------------------------------------------------------------------------------
# max_concurrency="auto"


def test_settings_take_a_number_or_auto() -> None:
    assert Settings(max_concurrency="auto").max_concurrency == "auto"
    assert Settings(max_concurrency=" AUTO ").max_concurrency == "auto"  # type: ignore[arg-type]
    assert Settings(max_concurrency=256).max_concurrency == 256
    for bad in (0, 257, "many", 2.5):
        with pytest.raises(ValidationError, match="max_concurrency"):
            Settings(max_concurrency=bad)  # type: ignore[arg-type]


@pytest.mark.server(dim=4)
async def test_auto_serves_as_many_at_once_as_a_medium_endpoint_can_plus_one(
    make: Make, server: ServingServer
) -> None:
    server.states[TEXT] = endpoint_state(TEXT, workload_size="Medium")  # 8-16 at once: 16
    gate = Gate(17, dim=4)
    server.model = gate
    client = make(max_concurrency="auto", batch_size=1)
    assert client.stats.max_concurrency == 5  # the default, until the endpoint has said
    out = await client.embed_texts(TEXTS)

    np.testing.assert_array_equal(out, text_rows(TEXTS, 4))
    assert gate.opened
    assert server.max_in_flight == 17  # the pool, the window and the limit all followed: no fewer, no more
    assert client.stats.max_concurrency == 17
    assert client.stats.concurrency_limit == 17
    assert gets(server) == [f"/api/2.0/serving-endpoints/{TEXT}"]


@pytest.mark.server(dim=4)
async def test_a_number_stays_the_ceiling_whatever_the_endpoint_serves(
    make: Make, server: ServingServer
) -> None:
    server.states[TEXT] = endpoint_state(TEXT, workload_size="Large")
    gate = Gate(3, dim=4)
    server.model = gate
    client = make(max_concurrency=3, batch_size=1)
    await client.embed_texts(TEXTS)
    assert gate.opened
    assert server.max_in_flight == 3
    assert client.stats.max_concurrency == 3
    assert len(gets(server)) == 1  # the one GET any client pays, for route optimization and readiness


@pytest.mark.server(dim=4)
@pytest.mark.parametrize(
    ("state", "ceiling"),
    [
        (endpoint_state(TEXT, workload_size="Small"), 5),
        (endpoint_state(TEXT, workload_size="Large"), 65),
        (endpoint_state(TEXT, workload_size=None, max_concurrency=40, entities=2), 81),
        (endpoint_state(TEXT, workload_size=None, max_concurrency=300), 256),
        (endpoint_state(TEXT, workload_size="Small", entities=3, scale_to_zero=True), 13),
    ],
    ids=["small", "large", "two-entities-explicit", "capped", "three-small"],
)
async def test_auto_reads_the_ceiling_from_the_served_entities(
    make: Make, server: ServingServer, state: dict[str, Any], ceiling: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="clip_client")
    server.states[TEXT] = state
    client = make(max_concurrency="auto")
    await client.embed_texts(["a", "b"])
    assert client.stats.max_concurrency == ceiling
    assert [r.levelno for r in caplog.records if "max_concurrency='auto'" in r.getMessage()] == [
        logging.DEBUG
    ]


@pytest.mark.server(dim=4)
@pytest.mark.parametrize(
    ("state", "why"),
    [
        (Reply(403, {"error_code": "PERMISSION_DENIED", "message": "no"}), "needs CAN VIEW"),
        (Reply(500, {"error_code": "INTERNAL_ERROR", "message": "oops"}), "oops"),
        (Reply(200, b"<html>not json</html>"), "did not parse"),
        (Reply(404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "gone"}), "gone"),
        (endpoint_state(TEXT, workload_size="Custom"), "workload sizes 'Custom'"),
    ],
    ids=["forbidden", "server-error", "not-json", "not-found", "unknown-size"],
)
async def test_auto_falls_back_to_the_default_and_says_why_once(
    make: Make,
    server: ServingServer,
    state: Any,
    why: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="clip_client")
    server.states[TEXT] = state
    client = make(max_concurrency="auto")
    for _ in range(3):
        np.testing.assert_array_equal(await client.embed_texts(["a"]), text_rows(["a"], 4))
    assert client.stats.max_concurrency == 5
    logged = ceiling_log(caplog)
    assert len(logged) == 1, logged  # once per client and endpoint, at INFO
    assert why in logged[0]
    assert "using the default 5" in logged[0]
    assert len(gets(server)) == 1  # a failed read is not repeated either


@pytest.mark.server(dim=4)
async def test_auto_takes_the_largest_ceiling_of_the_endpoints_called(
    make: Make, server: ServingServer
) -> None:
    server.states[TEXT] = endpoint_state(TEXT, workload_size="Small")
    server.states[IMAGE] = endpoint_state(IMAGE, workload_size="Medium")
    client = make(max_concurrency="auto")
    await client.embed_texts(["a"])
    assert client.stats.max_concurrency == 5
    await client.embed_images([np.zeros((8, 8, 3), dtype=np.uint8)])
    assert client.stats.max_concurrency == 17
    await client.embed_texts(["b"])
    assert client.stats.max_concurrency == 17
    assert sorted(gets(server)) == [f"/api/2.0/serving-endpoints/{n}" for n in (IMAGE, TEXT)]


@pytest.mark.server(dim=4)
def test_threads_starting_together_share_one_state_read(server: ServingServer) -> None:
    server.states[TEXT] = endpoint_state(TEXT, workload_size="Medium")
    server.latency = 0.02
    with ClipClient(**server.client_kwargs(max_concurrency="auto")) as client:
        results = embed_in_threads(client, [[f"t{i}-{j}" for j in range(5)] for i in range(8)])
        assert client.stats.max_concurrency == 17
    assert len(results) == 8
    assert gets(server) == [f"/api/2.0/serving-endpoints/{TEXT}"]


@pytest.mark.server(dim=4)
async def test_tasks_starting_together_share_one_state_read(server: ServingServer) -> None:
    server.states[TEXT] = endpoint_state(TEXT, workload_size="Medium")
    async with AsyncClipClient(**server.client_kwargs(max_concurrency="auto")) as client:
        results = await asyncio.gather(*(client.embed_texts([f"t{i}"]) for i in range(8)))
        assert client.stats.max_concurrency == 17
    assert len(results) == 8
    assert gets(server) == [f"/api/2.0/serving-endpoints/{TEXT}"]


@pytest.mark.server(dim=4)
async def test_a_call_that_sends_nothing_reads_no_state(make: Make, server: ServingServer) -> None:
    client = make(max_concurrency="auto")
    await client.embed_texts([])
    with pytest.raises(Exception, match="input 0"):
        await client.embed_images(["/no/such/file.png"])
    assert server.requests == []


def test_the_ceiling_moves_the_live_limit_by_as_much() -> None:
    limit = AIMDLimit(5)
    limit.set_ceiling(17)
    assert (limit.maximum, limit.current) == (17, 17)
    slot = limit.start()
    slot.overloaded = True
    limit.finish(slot)
    assert limit.current == 8  # halved
    limit.set_ceiling(33)
    assert (limit.maximum, limit.current) == (33, 24)  # as far below the new ceiling as before
    limit.set_ceiling(2)
    assert (limit.maximum, limit.current) == (2, 1)  # never below the minimum


# --------------------------------------------------------------------------------------------------
# Route-optimized endpoints


def oauth_config(host: str) -> Config:
    """A ``Config`` whose credentials are OAuth (``oauth_token()`` works, as for a service principal),
    with a fixed workspace token, so no OIDC discovery is needed."""

    def provider(cfg: Config) -> OAuthCredentialsProvider:
        token = Token(
            access_token=WORKSPACE_OAUTH_TOKEN,
            token_type="Bearer",
            expiry=datetime.now() + timedelta(hours=1),
        )
        return OAuthCredentialsProvider(
            lambda: {"Authorization": f"Bearer {token.access_token}"}, lambda: token
        )

    return Config(host=host, credentials_strategy=OauthCredentialsStrategy("oauth-m2m", provider))


class Planes:
    """A workspace (control plane and OIDC token endpoint) and the data plane of its route-optimized
    text endpoint."""

    def __init__(self, stack: ExitStack) -> None:
        self.control = stack.enter_context(ControlPlaneServer(dim=4))
        self.data = stack.enter_context(DataPlaneServer(lambda: self.control.issued, dim=4))
        self.control.states[TEXT] = endpoint_state(
            TEXT, route_optimized=True, data_plane_url=self.data.invocations_url(TEXT)
        )

    def oauth_options(self, **overrides: Any) -> dict[str, Any]:
        return {"config": oauth_config(self.control.url), "retry_backoff": 0, "timeout": 30, **overrides}


@pytest.fixture
def planes(clean_env: pytest.MonkeyPatch) -> Iterator[Planes]:
    with ExitStack() as stack:
        yield Planes(stack)


@pytest.mark.parametrize("kind", KINDS)
async def test_route_optimized_requests_go_to_the_data_plane_with_an_exchanged_token(
    planes: Planes, kind: str
) -> None:
    async with clients_of(kind, **planes.oauth_options(batch_size=4)) as make:
        client = make()
        out = await client.embed_texts(TEXTS)
        await client.embed_texts(["again"])
    np.testing.assert_array_equal(out, text_rows(TEXTS, 4))

    assert planes.control.posts(TEXT) == 0  # nothing to the workspace's invocations URL
    assert planes.data.posts(TEXT) == 11
    assert planes.data.refused == 0
    assert len(planes.control.issued) == 1  # one exchange, its token cached
    token = planes.control.issued[0]
    assert {r.headers["Authorization"] for r in planes.data.received} == {f"Bearer {token}"}
    assert planes.control.exchanges == [
        {
            "grant_type": JWT_BEARER_GRANT,
            "assertion": WORKSPACE_OAUTH_TOKEN,
            "authorization_details": '[{"type":"workspace_permission"}]',
        }
    ]
    assert gets(planes.control) == [f"/api/2.0/serving-endpoints/{TEXT}"]


@pytest.mark.parametrize("kind", KINDS)
async def test_the_data_plane_has_the_same_retries_limit_and_error_mapping(planes: Planes, kind: str) -> None:
    overloaded = {"error_code": "REQUEST_LIMIT_EXCEEDED", "message": "slow down"}
    planes.data.script = [
        Reply(429, overloaded),
        Reply(503, {"error_code": "TEMPORARILY_UNAVAILABLE", "message": "busy"}),
    ]
    async with clients_of(kind, **planes.oauth_options(max_concurrency=4)) as make:
        client = make()
        np.testing.assert_array_equal(await client.embed_texts(["a"]), text_rows(["a"], 4))
        assert (client.stats.retries, client.stats.overloads) == (2, 2)
        assert client.stats.concurrency_limit < 4  # the adaptive limit was lowered

        bad_record = {"error_code": "BAD_REQUEST", "message": "bad record"}
        planes.data.script = [Reply(400, bad_record, headers={"x-request-id": "req-dp-1"})]
        with pytest.raises(BadRequestError) as bad:
            await client.embed_texts(["b"])
        assert bad.value.endpoint == TEXT
        assert bad.value.request_id == "req-dp-1"
        assert "bad record" in str(bad.value)

        planes.data.script = [Reply(answer=True, delay=1.0)]
        with pytest.raises(APITimeoutError):
            await client.embed_texts(["c"], deadline=0.3)
    assert planes.control.posts(TEXT) == 0


@pytest.mark.parametrize("kind", KINDS)
async def test_a_data_plane_token_echoed_back_is_redacted(planes: Planes, kind: str) -> None:
    def echo(headers: dict[str, str]) -> dict[str, str]:
        return {"error_code": "UNAUTHENTICATED", "message": f"rejected {headers['Authorization']}"}

    planes.data.script = [Reply(401, echo)]
    async with clients_of(kind, **planes.oauth_options()) as make:
        with pytest.raises(Exception, match=r"rejected") as info:
            await make().embed_texts(["a"])
    token = planes.control.issued[0]
    assert token not in rendered(info.value)
    assert "***" in str(info.value)


@pytest.mark.parametrize("kind", KINDS)
async def test_a_refused_token_exchange_is_a_credentials_error(planes: Planes, kind: str) -> None:
    planes.control.refuse_exchange = True
    async with clients_of(kind, **planes.oauth_options()) as make:
        with pytest.raises(CredentialsError, match="invalid_grant"):
            await make().embed_texts(["a"])
    assert planes.data.posts() == 0
    assert planes.control.posts(TEXT) == 0


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("credentials", ["explicit-pat", "config-pat"])
async def test_a_personal_access_token_falls_back_to_the_workspace_url_and_says_why(
    planes: Planes, kind: str, credentials: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="clip_client")
    if credentials == "explicit-pat":
        options = planes.control.client_kwargs()
    else:
        options = {"config": Config(host=planes.control.url, token=TOKEN), "retry_backoff": 0}
    async with clients_of(kind, **options) as make:
        client = make()
        np.testing.assert_array_equal(await client.embed_texts(["a"]), text_rows(["a"], 4))
        await client.embed_texts(["b"])
    assert planes.control.posts(TEXT) == 2
    assert planes.data.posts() == 0
    assert planes.control.exchanges == []
    warnings = [
        r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "clip_client"
    ]
    assert len(warnings) == 1, warnings
    assert "route-optimized" in warnings[0]
    assert "OAuth" in warnings[0]
    assert "/serving-endpoints/clip-text-embedding/invocations" in warnings[0]


@pytest.mark.parametrize("kind", KINDS)
async def test_a_refusal_at_the_workspace_url_says_why_the_data_plane_was_not_used(
    planes: Planes, kind: str
) -> None:
    planes.control.script = [Reply(403, {"error_code": "PERMISSION_DENIED", "message": "use the data plane"})]
    async with clients_of(kind, **planes.control.client_kwargs()) as make:
        with pytest.raises(Exception, match="use the data plane") as info:
            await make().embed_texts(["a"])
    assert "route-optimized" in str(info.value)
    assert "personal access token" in str(info.value)


async def test_a_plain_http_data_plane_url_elsewhere_is_not_used(
    planes: Planes, caplog: pytest.LogCaptureFixture
) -> None:
    planes.control.states[TEXT] = endpoint_state(
        TEXT,
        route_optimized=True,
        data_plane_url="http://dataplane.example.com/1/serving-endpoints/x/invocations",
    )
    async with clients_of("sync", **planes.oauth_options()) as make:
        await make().embed_texts(["a"])
    assert planes.control.posts(TEXT) == 1
    assert any("clear text" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


# --------------------------------------------------------------------------------------------------
# Scale from zero

UNAVAILABLE = Reply(503, {"error_code": "TEMPORARILY_UNAVAILABLE", "message": "scaling up from zero"})


def start_logs(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "waiting for it to start" in r.getMessage()]


@pytest.mark.server(dim=4)
@pytest.mark.parametrize(
    ("state", "says"),
    [
        (endpoint_state(TEXT, ready=False, deployment_message="Scaling from zero"), "not ready"),
        (endpoint_state(TEXT, scale_to_zero=True), "scaled to zero"),
    ],
    ids=["not-ready", "scales-to-zero"],
)
async def test_the_503s_of_a_starting_endpoint_are_waited_out_not_taken_for_overload(
    make: Make, server: ServingServer, caplog: pytest.LogCaptureFixture, state: dict[str, Any], says: str
) -> None:
    caplog.set_level(logging.INFO, logger="clip_client")
    server.states[TEXT] = state
    server.script = [UNAVAILABLE] * 4
    client = make(max_concurrency=4, max_retries=1)  # fewer retries than 503s: they are not counted
    out = await client.embed_texts(["a"])

    np.testing.assert_array_equal(out, text_rows(["a"], 4))
    assert server.posts(TEXT) == 5
    assert client.stats.overloads == 0
    assert client.stats.concurrency_limit == 4  # not halved
    logged = start_logs(caplog)
    assert len(logged) == 1, logged
    assert says in logged[0]
    assert "retry_deadline=900s" in logged[0]

    # Started: a 503 is overload again.
    server.script = [UNAVAILABLE]
    await client.embed_texts(["b"])
    assert client.stats.overloads == 1
    assert client.stats.concurrency_limit == 2
    assert len(start_logs(caplog)) == 1


@pytest.mark.server(dim=4)
async def test_the_wait_for_a_start_is_bounded_by_retry_deadline(make: Make, server: ServingServer) -> None:
    server.states[TEXT] = endpoint_state(TEXT, ready=False)
    server.faults = Faults(status_for_all=503)
    client = make(max_retries=1, retry_backoff=0.02, retry_backoff_max=0.02, retry_deadline=1.0)
    with pytest.raises(ServerError) as info:
        await client.embed_texts(["a"])
    assert info.value.status_code == 503
    assert info.value.attempts > 2  # past max_retries: only the deadline stopped it
    assert client.stats.overloads == 0


@pytest.mark.server(dim=4)
async def test_a_ready_endpoint_without_scale_to_zero_still_counts_503_as_overload(
    make: Make, server: ServingServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="clip_client")
    server.script = [UNAVAILABLE]
    client = make(max_concurrency=4)
    await client.embed_texts(["a"])
    assert client.stats.overloads == 1
    assert client.stats.concurrency_limit == 2
    assert start_logs(caplog) == []


SCALING_555 = Reply(555, {"error_code": "TEMPORARILY_UNAVAILABLE", "message": "scaling up from zero"})
"""Databricks' own status for an endpoint scaling up from zero."""


@pytest.mark.server(dim=4)
async def test_555s_of_an_endpoint_scaling_from_zero_are_waited_out_not_taken_for_overload(
    make: Make, server: ServingServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Databricks answers 555 while an endpoint scales up from zero: retried as the 503s of a starting
    endpoint are, even when nothing said it was starting, and never counted as overload."""
    caplog.set_level(logging.INFO, logger="clip_client")
    server.script = [SCALING_555] * 4
    client = make(max_concurrency=4, max_retries=1)  # fewer retries than 555s: they are not counted
    out = await client.embed_texts(["a"])

    np.testing.assert_array_equal(out, text_rows(["a"], 4))
    assert server.posts(TEXT) == 5
    assert client.stats.overloads == 0
    assert client.stats.concurrency_limit == 4  # not halved
    logged = start_logs(caplog)
    assert len(logged) == 1, logged
    assert "scaling up from zero, and answered 555" in logged[0]


@pytest.mark.server(dim=4)
async def test_555s_past_the_call_s_deadline_name_the_scale_from_zero(
    make: Make, server: ServingServer
) -> None:
    server.faults = Faults(status_for_all=555)
    client = make(max_retries=1, retry_backoff=0.05, retry_backoff_max=0.05)
    with pytest.raises(APITimeoutError) as info:
        await client.embed_texts(["a"], deadline=1.5)
    text = str(info.value)
    assert "deadline of 1.5s" in text
    assert "HTTP 555" in text
    assert "scales up from zero" in text
    assert isinstance(info.value.__cause__, ServerError)
    assert info.value.__cause__.status_code == 555
    assert server.posts(TEXT) > 2  # past max_retries: only the deadline stopped it
    assert client.stats.overloads == 0


@pytest.mark.server(dim=4)
async def test_555s_past_retry_deadline_raise_a_server_error_that_says_so(
    make: Make, server: ServingServer
) -> None:
    server.faults = Faults(status_for_all=555)
    client = make(max_retries=1, retry_backoff=0.02, retry_backoff_max=0.02, retry_deadline=1.0)
    with pytest.raises(ServerError) as info:
        await client.embed_texts(["a"])
    assert info.value.status_code == 555
    assert info.value.attempts > 2
    assert "HTTP 555" in str(info.value)
    assert "scales up from zero" in str(info.value)
    assert "retry_deadline" in (info.value.advice() or "")


# --------------------------------------------------------------------------------------------------
# Fresh-tester findings


@pytest.mark.server(dim=4)
async def test_late_503s_to_requests_sent_while_starting_are_not_overload(
    make: Make, server: ServingServer
) -> None:
    """Five requests go out while the endpoint is starting. One 503 comes back at once and its
    retry succeeds; the other four 503s arrive a second later, after that success. They answered
    requests sent while the endpoint was starting, so they are not overload either."""
    server.states[TEXT] = endpoint_state(TEXT, ready=False)
    late = Reply(503, {"error_code": "TEMPORARILY_UNAVAILABLE", "message": "starting"}, delay=1.0)
    server.script = [UNAVAILABLE, late, late, late, late]
    client = make(batch_size=1, max_concurrency=5)
    out = await client.embed_texts([f"t{i}" for i in range(5)])
    np.testing.assert_array_equal(out, text_rows([f"t{i}" for i in range(5)], 4))
    assert client.stats.overloads == 0
    assert client.stats.concurrency_limit == 5


@pytest.mark.server(dim=4)
async def test_a_slow_control_plane_never_costs_a_call_its_deadline(
    make: Make, server: ServingServer
) -> None:
    """The state read hangs for 6 s; a first call with deadline=4 waits a quarter of its time for
    it, then goes on with the defaults and is answered (it used to raise at its deadline, having
    sent nothing)."""
    server.states[TEXT] = Reply(200, endpoint_state(TEXT), delay=6.0)
    out = await make().embed_texts(["a"], deadline=4)
    np.testing.assert_array_equal(out, text_rows(["a"], 4))
    assert server.posts(TEXT) == 1


@pytest.mark.server(dim=4)
async def test_an_explicit_maximum_of_zero_says_nothing_and_auto_keeps_the_default(
    make: Make, server: ServingServer
) -> None:
    server.states[TEXT] = endpoint_state(TEXT, workload_size=None, max_concurrency=0)
    client = make(max_concurrency="auto")
    await client.embed_texts(["a"])
    assert client.stats.max_concurrency == 5


@pytest.mark.parametrize("body", [{}, {"name": 5, "state": "weird"}])
def test_an_answer_without_a_state_object_is_an_unknown_state(body: dict[str, Any]) -> None:
    from clip_client._remote.endpoint_state import parse_endpoint_state

    state = parse_endpoint_state(body, "clip-text-embedding")
    assert state.known is False
    assert state.name == "clip-text-embedding"
