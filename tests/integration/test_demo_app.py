"""The demo app echoes what it received, and the scenario client sends paths byte for byte."""

from __future__ import annotations

import asyncio
import socket

import pytest

from controlplane.local import demo_app
from controlplane.local.client import http_call, tcp_call


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
async def app_ports():
    http_port, tcp_port = free_port(), free_port()
    task = asyncio.create_task(
        demo_app.serve(address="127.0.0.1", http_ports=[http_port], tcp_ports=[tcp_port], workload="payments/ledger")
    )
    for _ in range(100):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", http_port)
            writer.close()
            break
        except OSError:
            await asyncio.sleep(0.02)
    yield http_port, tcp_port
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_http_echo_reports_raw_path_and_principal(app_ports) -> None:
    http_port, _ = app_ports
    xfcc = 'By=spiffe://td/ns/payments/sa/api;Hash=ab;Subject="O=idmesh,CN=x";URI=spiffe://td/ns/shop/sa/web'
    outcome = await http_call(
        "127.0.0.1", http_port, method="POST", path="/v1//settle%2F?x=1", authority="ledger:8080",
        headers=(("x-forwarded-client-cert", xfcc),),
    )
    assert outcome.result == 200
    assert outcome.principal == "spiffe://td/ns/shop/sa/web"
    assert '"/v1//settle%2F?x=1"' in outcome.detail


async def test_tcp_echo_round_trip(app_ports) -> None:
    _, tcp_port = app_ports
    assert (await tcp_call("127.0.0.1", tcp_port)).result == "ok"


async def test_closed_port_is_reset() -> None:
    outcome = await http_call("127.0.0.1", free_port(), method="GET", path="/", authority="x:1")
    assert outcome.result == "reset"


def test_xfcc_with_two_elements_takes_the_closest_caller() -> None:
    value = "URI=spiffe://td/ns/a/sa/first,By=x;URI=spiffe://td/ns/b/sa/second"
    assert demo_app.caller_principal({"x-forwarded-client-cert": value}) == "spiffe://td/ns/b/sa/second"
