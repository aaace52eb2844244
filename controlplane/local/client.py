"""A deliberately plain HTTP/1.1 and TCP client for scenario calls.

Paths and headers go on the wire exactly as written, with no normalization or validation, so a
scenario can send what a sloppy or hostile client would (`/a/../admin`, `//x`, `/api/[`) and see
what the mesh does with it. Every connection is closed after one exchange.
"""

from __future__ import annotations

import asyncio
import json

from controlplane.local.scenario import Outcome

TCP_PROBE = b"idmesh-echo-probe\n"


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionResetError("connection closed before a response")
    parts = status_line.decode("latin-1").split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise ConnectionResetError(f"malformed status line {status_line!r}")
    headers: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while (size := int((await reader.readline()).split(b";")[0].strip() or b"0", 16)) > 0:
            body += await reader.readexactly(size)
            await reader.readline()
    else:
        body = await reader.read()
    return int(parts[1]), headers, body


async def _exchange(address: str, port: int, talk, *, timeout: float, what: str) -> Outcome:
    """Connect, run `talk(reader, writer)`, close; a failure to connect or a drop is `reset`."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(address, port)
            try:
                return await talk(reader, writer)
            finally:
                writer.close()
    except (OSError, asyncio.IncompleteReadError) as exc:
        return Outcome(result="reset", detail=f"{type(exc).__name__}: {exc}")
    except TimeoutError:
        return Outcome(result="reset", detail=f"no {what} within {timeout}s")


def _principal_from_body(body: bytes) -> str | None:
    try:
        answer = json.loads(body)
    except ValueError:
        return None
    return answer.get("principal") if isinstance(answer, dict) else None


async def http_call(
    address: str,
    port: int,
    *,
    method: str,
    path: str,
    authority: str,
    headers: tuple[tuple[str, str], ...] = (),
    body: str = "",
    timeout: float = 10.0,
) -> Outcome:
    """Send one request to `address:port`; `reset` if the connection fails or drops."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {authority}"]
    lines += [f"{name}: {value}" for name, value in headers]
    payload = body.encode()
    lines += [f"Content-Length: {len(payload)}", "Connection: close", "", ""]

    async def talk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Outcome:
        writer.write("\r\n".join(lines).encode("latin-1") + payload)
        await writer.drain()
        status, _headers, response_body = await _read_response(reader)
        detail = response_body[:200].decode("utf-8", "replace")
        return Outcome(result=status, principal=_principal_from_body(response_body), detail=detail)

    return await _exchange(address, port, talk, timeout=timeout, what="response")


async def _echo_round_trip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Outcome:
    writer.write(TCP_PROBE)
    await writer.drain()
    echoed = await reader.readexactly(len(TCP_PROBE))
    if echoed != TCP_PROBE:
        return Outcome(result="reset", detail=f"echo returned {echoed!r}")
    return Outcome(result="ok")


async def tcp_call(address: str, port: int, *, timeout: float = 10.0) -> Outcome:
    """Open a TCP connection to an echo server and make one round trip."""
    return await _exchange(address, port, _echo_round_trip, timeout=timeout, what="echo")


async def tcp_call_via_connect(proxy_address: str, proxy_port: int, *, authority: str, timeout: float = 10.0) -> Outcome:
    """Tunnel one echo round trip through an HTTP CONNECT proxy (the caller's sidecar)."""
    request = f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode("latin-1")

    async def talk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Outcome:
        writer.write(request)
        await writer.drain()
        status_line = await reader.readline()
        while await reader.readline() not in (b"\r\n", b"\n", b""):
            pass
        fields = status_line.split(b" ", 2)
        if len(fields) < 2 or not fields[1].isdigit():
            return Outcome(result="reset", detail=f"CONNECT got {status_line!r}")
        if fields[1] != b"200":
            return Outcome(result=int(fields[1]), detail=f"CONNECT got {status_line!r}")
        return await _echo_round_trip(reader, writer)

    return await _exchange(proxy_address, proxy_port, talk, timeout=timeout, what="echo")
