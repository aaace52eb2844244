"""The demo workload for local mode: an HTTP echo and a TCP echo.

HTTP ports respond to every request with JSON describing what arrived: method, raw path, headers,
and the caller's verified principal taken from `x-forwarded-client-cert`, which the callee's Envoy
sets from the peer certificate (and strips when the caller sent its own). TCP ports echo bytes
back. The app trusts the header because only its own sidecar can reach it in local mode: it
listens on the workload's app address, which no other workload is given.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from typing import Sequence

from aiohttp import web

from controlplane.log import configure, get_logger

XFCC_HEADER = "x-forwarded-client-cert"

log = get_logger("demo-app")
WORKLOAD_KEY = web.AppKey("workload", str)


def split_xfcc(value: str) -> list[dict[str, str]]:
    """Parse an `x-forwarded-client-cert` value into one dict per element.

    Elements are separated by `,`, pairs by `;`, and keys from values by `=`. A value quoted with
    `"` may contain those separators, which Envoy relies on for Subject values.
    """
    elements: list[dict[str, str]] = []
    pairs: dict[str, str] = {}
    key, buf, in_quotes, reading_key = "", [], False, True
    for char in value + ",":
        if in_quotes:
            if char == '"':
                in_quotes = False
            else:
                buf.append(char)
        elif char == '"':
            in_quotes = True
        elif char == "=" and reading_key:
            key, buf, reading_key = "".join(buf).strip(), [], False
        elif char in ";,":
            if key:
                pairs[key] = "".join(buf).strip()
            key, buf, reading_key = "", [], True
            if char == "," and pairs:
                elements.append(pairs)
                pairs = {}
        else:
            buf.append(char)
    return elements


def caller_principal(headers: dict[str, str]) -> str | None:
    """Return the URI SAN of the closest caller in `x-forwarded-client-cert`, if any."""
    value = headers.get(XFCC_HEADER)
    if not value:
        return None
    elements = split_xfcc(value)
    return elements[-1].get("URI") if elements else None


async def _echo_http(request: web.Request) -> web.Response:
    headers = {name.lower(): value for name, value in request.headers.items()}
    body = await request.read()
    answer = {
        "workload": request.app[WORKLOAD_KEY],
        "method": request.method,
        "path": request.raw_path,
        "headers": headers,
        "principal": caller_principal(headers),
        "body_bytes": len(body),
    }
    return web.json_response(answer)


async def _echo_tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def serve(*, address: str, http_ports: Sequence[int], tcp_ports: Sequence[int], workload: str) -> None:
    """Serve until cancelled."""
    app = web.Application()
    app[WORKLOAD_KEY] = workload
    app.router.add_route("*", "/{tail:.*}", _echo_http)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    tcp_servers = []
    try:
        for port in http_ports:
            await web.TCPSite(runner, address, port).start()
        for port in tcp_ports:
            tcp_servers.append(await asyncio.start_server(_echo_tcp, address, port))
        log.info("demo.started", workload=workload, address=address, http_ports=list(http_ports), tcp_ports=list(tcp_ports))
        await asyncio.Event().wait()
    finally:
        for server in tcp_servers:
            server.close()
        await runner.cleanup()


def _ports(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="idmesh-demo-app", description="HTTP and TCP echo workload for local mode.")
    parser.add_argument("--address", required=True, help="IP address to listen on")
    parser.add_argument("--http-ports", type=_ports, default=[], help="comma-separated HTTP ports")
    parser.add_argument("--tcp-ports", type=_ports, default=[], help="comma-separated TCP echo ports")
    parser.add_argument("--workload", default="", help="namespace/name shown in responses")
    args = parser.parse_args(argv)
    configure(level="info")

    async def run() -> None:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await serve(address=args.address, http_ports=args.http_ports, tcp_ports=args.tcp_ports, workload=args.workload)
        except asyncio.CancelledError:
            pass

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
