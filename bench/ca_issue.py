"""Benchmark: X.509-SVIDs per second through the gRPC API with TLS, against `sign_csr` in-process.

Starts the control plane's gRPC server in this process on 127.0.0.1 with a fresh CA in a
temporary directory. Then it signs N CSRs through `CertificateService.CreateCertificate` on the
bootstrap port (server TLS, one join token per CSR), and N CSRs by calling
`CertificateAuthority.sign_csr` directly. Keys, CSRs and tokens are made before timing. Client and
server share one event loop and one process, so the gRPC figure includes the client's cost.

Prints one line:
`ca_issue: grpc <x> SVIDs/s, in-process <y> SVIDs/s, grpc/in-process <r> (n=N, concurrency=C, <key type>)`
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from controlplane import log as logging_setup
from controlplane.api import ca_pb2, ca_pb2_grpc
from controlplane.identity.ca import CertificateAuthority
from controlplane.identity.join_token import JoinTokenIssuer, load_join_token_key
from controlplane.identity.keys import KEY_TYPES, generate_private_key
from controlplane.identity.spiffe_id import SpiffeId
from controlplane.server.serve import ServeOptions, build_control_plane

TRUST_DOMAIN = "bench.example.org"
IDENTITY = SpiffeId.parse(f"spiffe://{TRUST_DOMAIN}/ns/bench/sa/workload")


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def build_csrs(count: int, key_type: str) -> list[str]:
    csrs = []
    for _ in range(count):
        key = generate_private_key(key_type)
        csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(key, hashes.SHA256())
        csrs.append(csr.public_bytes(serialization.Encoding.PEM).decode())
    return csrs


async def sign_over_grpc(ca_dir: Path, ca: CertificateAuthority, csrs: list[str], concurrency: int) -> float:
    """Return SVIDs per second through the gRPC API."""
    options = ServeOptions(
        ca_dir=ca_dir,
        trust_domain=TRUST_DOMAIN,
        grpc_address="127.0.0.1:0",
        bootstrap_address="127.0.0.1:0",
        admin_address="127.0.0.1:0",
        shutdown_grace_seconds=1.0,
    )
    control_plane = build_control_plane(options, ca, clock=utc_now)
    tokens = JoinTokenIssuer(load_join_token_key(ca_dir, create=False), trust_domain=TRUST_DOMAIN)
    minted = [tokens.mint(IDENTITY, ttl=timedelta(hours=1), now=utc_now()) for _ in csrs]
    await control_plane.start()
    try:
        credentials = grpc.ssl_channel_credentials(control_plane.credentials.material.roots_pem)
        channel_options = [("grpc.ssl_target_name_override", "localhost")]
        target = f"127.0.0.1:{control_plane.grpc.bootstrap_port}"
        async with grpc.aio.secure_channel(target, credentials, options=channel_options) as channel:
            stub = ca_pb2_grpc.CertificateServiceStub(channel)
            # Connect before timing, so the TLS handshake is not counted.
            await channel.channel_ready()
            limit = asyncio.Semaphore(concurrency)

            async def call(csr: str, token: str) -> None:
                async with limit:
                    await stub.CreateCertificate(
                        ca_pb2.CreateCertificateRequest(csr=csr),
                        metadata=(("authorization", f"Bearer {token}"),),
                        timeout=60,
                    )

            started = time.perf_counter()
            await asyncio.gather(*(call(csr, token) for csr, token in zip(csrs, minted)))
            elapsed = time.perf_counter() - started
    finally:
        await control_plane.stop()
    return len(csrs) / elapsed


def sign_in_process(ca: CertificateAuthority, csrs: list[str]) -> float:
    """Return SVIDs per second calling `sign_csr` directly."""
    encoded = [csr.encode() for csr in csrs]
    started = time.perf_counter()
    for csr in encoded:
        ca.sign_csr(csr, identity=IDENTITY, ttl=None, now=utc_now())
    elapsed = time.perf_counter() - started
    return len(csrs) / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--count", type=int, default=300, help="CSRs to sign on each path (default 300)")
    parser.add_argument("--concurrency", type=int, default=8, help="gRPC calls in flight at once (default 8)")
    parser.add_argument("--key-type", choices=KEY_TYPES, default="ec-p256", help="key type of the CSRs and the CA")
    args = parser.parse_args(argv)
    if args.count < 1 or args.concurrency < 1:
        parser.error("--count and --concurrency must be at least 1")

    # Both paths log the same events; keep them off the terminal so the output is one line.
    logging_setup.configure(level="warning")
    with tempfile.TemporaryDirectory(prefix="idmesh-bench-") as temporary:
        ca_dir = Path(temporary) / "ca"
        ca = CertificateAuthority.create(ca_dir, trust_domain=TRUST_DOMAIN, key_type=args.key_type, now=utc_now())
        grpc_csrs = build_csrs(args.count, args.key_type)
        local_csrs = build_csrs(args.count, args.key_type)
        grpc_rate = asyncio.run(sign_over_grpc(ca_dir, ca, grpc_csrs, args.concurrency))
        local_rate = sign_in_process(ca, local_csrs)

    print(
        f"ca_issue: grpc {grpc_rate:.0f} SVIDs/s, in-process {local_rate:.0f} SVIDs/s, "
        f"grpc/in-process {grpc_rate / local_rate:.2f} "
        f"(n={args.count}, concurrency={args.concurrency}, {args.key_type})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
