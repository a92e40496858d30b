"""The test scaffold: no test can see another test's requests.

A request that a finished test's client still sends (a batch still on the wire when its call raised,
a retry, a worker thread that outlived its test) must not reach a later test's server: there it would
take the reply scripted for that test (``test_e2e``'s endpoint-name errors once failed that way, 3
runs in 19 under load) or show up in its request counts.
"""

from __future__ import annotations

import json
import socket
from contextlib import ExitStack
from urllib.parse import urlsplit

import pytest
from harness import start_server
from serving_server import Reply, ServingServer

_SEEN: list[tuple[str, int]] = []


def _address(server: ServingServer) -> tuple[str, int]:
    url = urlsplit(server.url)
    assert url.hostname is not None
    assert url.port is not None
    return url.hostname, url.port


def _invocation(text: str) -> bytes:
    body = json.dumps({"dataframe_records": [{"input": text}]}).encode()
    head = (
        "POST /serving-endpoints/clip-text-embedding/invocations HTTP/1.1\r\n"
        f"Host: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


def _status_of(sock: socket.socket) -> int | None:
    """The status of the answer on ``sock``, read to its end; None when the connection was reset
    or closed without an answer (its server stopped before it accepted the connection)."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        return None
    return int(data.split(b" ", 2)[1]) if data else None


def test_a_request_sent_after_its_test_ended_reaches_no_later_test() -> None:
    """The request of a client that outlived its test: its connection was open (the request not yet
    read by the server) when the test ended, and it goes out while the next test runs. It is
    answered by its own test's server (or reset, if that server stopped first); the next test's
    script, history and counters are untouched. So is a fresh connection to the earlier test's
    address."""
    with ExitStack() as first_test:
        first = start_server(first_test)
        late = socket.create_connection(_address(first), timeout=10)
        first_address = _address(first)
    with late, ExitStack() as second_test:
        second = start_server(second_test)
        scripted = Reply(404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "scripted"})
        second.script = [scripted]
        try:
            late.sendall(_invocation("late"))
        except OSError:  # the earlier server stopped before it accepted the connection: reset
            pass
        # Answered normally by the earlier test's server, or (when that server stopped before it
        # accepted the connection) reset: never the reply scripted for this test.
        assert _status_of(late) in (200, None)
        assert _address(second) != first_address
        try:  # the earlier server may still be closing (in the background), or gone
            with socket.create_connection(first_address, timeout=10) as fresh:
                fresh.sendall(_invocation("later still"))
                fresh.recv(1)
        except OSError:
            pass
        assert second.script == [scripted]
        assert second.requests == []
        assert second.received == []
        assert second.max_in_flight == 0


@pytest.mark.parametrize(
    ("test", "dim"),
    [
        ("one", 768),
        ("another", 768),
        pytest.param("a narrow one", 2, marks=pytest.mark.server(dim=2)),
        pytest.param("another narrow one", 2, marks=pytest.mark.server(dim=2)),
    ],
)
def test_each_test_gets_a_server_on_an_address_no_other_test_had(
    server: ServingServer, test: str, dim: int
) -> None:
    """The ``server`` fixture: a fresh server per test (of its marker's options), never one shared
    between tests and reset."""
    assert server.dim == dim
    assert _address(server) not in _SEEN
    _SEEN.append(_address(server))
    assert server.requests == []
    assert server.script == []


def test_no_two_servers_of_the_process_ever_share_a_port() -> None:
    """Even when the system hands out a port again (it may, once a server closed it), the next server
    listens elsewhere, so a late request to a closed server's port reaches no later one."""
    ports = set()
    for _ in range(20):
        with ExitStack() as stack:
            ports.add(_address(start_server(stack))[1])
    assert len(ports) == 20
    assert ports <= ServingServer._ports_taken
