"""The `controlplane` command: create and use the mesh CA, mint join tokens, run the server.

Exit status: 0 on success, 1 when the operation fails (a message on stderr explains why), 2 for
invalid arguments. Every error is one line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import NoReturn

from controlplane.identity.svid import format_serial
from controlplane import log as logging_setup
from controlplane.errors import ConfigError, MeshError, SpiffeIdError
from controlplane.identity.ca import CertificateAuthority
from controlplane.identity.join_token import DEFAULT_TTL as JOIN_TOKEN_DEFAULT_TTL
from controlplane.identity.join_token import JoinTokenIssuer, load_join_token_key
from controlplane.identity.keys import DEFAULT_KEY_TYPE, KEY_TYPES
from controlplane.identity.pemfiles import PUBLIC_FILE_MODE, certificate_to_pem, write_file, write_secret_file
from controlplane.identity.spiffe_id import SpiffeId, validate_trust_domain
from controlplane.model.types import DEFAULT_ROOT_NAMESPACE, DEFAULT_TRUST_DOMAIN
from controlplane.server.addresses import (
    DEFAULT_ADMIN_ADDRESS,
    DEFAULT_BOOTSTRAP_ADDRESS,
    DEFAULT_MTLS_ADDRESS,
    split_address,
)

PROGRAM = "controlplane"
EXIT_FAILURE = 1
EXIT_USAGE = 2

# A DNS subdomain name (RFC 1123), which is what Kubernetes accepts as a Secret name.
_SECRET_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_DURATION = re.compile(r"(?:(?P<h>\d+)h)?(?:(?P<m>\d+)m)?(?:(?P<s>\d+)s)?")


def parse_duration(text: str) -> timedelta:
    """Parse a positive duration such as `90s`, `10m`, `1h` or `2h30m`."""
    match = _DURATION.fullmatch(text)
    if not text or match is None:
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r}: use whole numbers with units h, m and s, such as 90s, 10m, 1h or 2h30m"
        )
    duration = timedelta(
        hours=int(match["h"] or 0),
        minutes=int(match["m"] or 0),
        seconds=int(match["s"] or 0),
    )
    if duration <= timedelta(0):
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: it must be longer than zero")
    return duration


def parse_spiffe_id(text: str) -> SpiffeId:
    try:
        return SpiffeId.parse(text)
    except SpiffeIdError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def parse_trust_domain(text: str) -> str:
    try:
        validate_trust_domain(text)
    except SpiffeIdError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return text


def parse_namespace(text: str) -> str:
    try:
        SpiffeId.for_workload(DEFAULT_TRUST_DOMAIN, text, "service-account")
    except SpiffeIdError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return text


def parse_secret_name(text: str) -> str:
    if not _SECRET_NAME.fullmatch(text) or len(text) > 253:
        raise argparse.ArgumentTypeError(
            f"invalid Secret name {text!r}: use lower case letters, digits, '-' and '.', "
            "starting and ending with a letter or digit"
        )
    return text


def parse_address(text: str) -> str:
    try:
        split_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return text


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line on stderr, with exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=PROGRAM, description="The idmesh control plane.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=OneLineParser)

    ca = commands.add_parser("ca", help="create the mesh CA and issue certificates with it")
    ca_commands = ca.add_subparsers(dest="ca_command", required=True, metavar="COMMAND")
    init = ca_commands.add_parser("init", help="create a new CA directory")
    init.add_argument("--ca-dir", type=Path, required=True, help="directory to create the CA in (mode 0700)")
    init.add_argument("--trust-domain", type=parse_trust_domain, default=DEFAULT_TRUST_DOMAIN,
                      help=f"trust domain of every SPIFFE ID the CA signs (default {DEFAULT_TRUST_DOMAIN})")
    init.add_argument("--key-type", choices=KEY_TYPES, default=DEFAULT_KEY_TYPE,
                      help=f"key type of the CA keys (default {DEFAULT_KEY_TYPE})")
    init.add_argument("--intermediate", action="store_true",
                      help="sign leaves with an intermediate CA under the root instead of the root itself")
    init.set_defaults(handler=command_ca_init)

    issue = ca_commands.add_parser("issue", help="issue an X.509-SVID with a key generated here")
    issue.add_argument("--ca-dir", type=Path, required=True, help="an existing CA directory")
    issue.add_argument("--spiffe-id", type=parse_spiffe_id, required=True, help="SPIFFE ID to certify")
    issue.add_argument("--out-dir", type=Path, required=True,
                       help="directory for svid.pem, svid.key and bundle.pem; existing files are not replaced")
    issue.add_argument("--ttl", type=parse_duration, default=None,
                       help="certificate lifetime such as 1h or 2h30m (default: the CA's default TTL)")
    issue.set_defaults(handler=command_ca_issue)

    token = commands.add_parser("token", help="mint join tokens")
    token_commands = token.add_subparsers(dest="token_command", required=True, metavar="COMMAND")
    create = token_commands.add_parser("create", help="print a single-use join token for one SPIFFE ID")
    create.add_argument("--ca-dir", type=Path, required=True, help="the CA directory the control plane serves")
    create.add_argument("--spiffe-id", type=parse_spiffe_id, required=True, help="SPIFFE ID the token proves")
    create.add_argument("--ttl", type=parse_duration, default=JOIN_TOKEN_DEFAULT_TTL,
                        help="how long the token can be redeemed, such as 10m (default 10m)")
    create.set_defaults(handler=command_token_create)

    serve = commands.add_parser("serve", help="run the control plane")
    ca_source = serve.add_mutually_exclusive_group(required=True)
    ca_source.add_argument("--ca-dir", type=Path,
                           help="CA directory; a new CA is created there on first start")
    ca_source.add_argument("--ca-secret", type=parse_secret_name, metavar="NAME",
                           help="with --source kubernetes: Secret in the root namespace that contains the CA; "
                                "the leader creates it on first start, and other replicas wait for it")
    serve.add_argument("--trust-domain", type=parse_trust_domain, default=None,
                       help=f"trust domain of the CA: used when one is created on first start (default "
                            f"{DEFAULT_TRUST_DOMAIN}), and an existing CA for another trust domain is an error")
    serve.add_argument("--root-namespace", type=parse_namespace, default=DEFAULT_ROOT_NAMESPACE,
                       help="namespace of the control plane's own identity (default %(default)s)")
    serve.add_argument("--grpc-address", type=parse_address, default=DEFAULT_MTLS_ADDRESS,
                       help="HOST:PORT for gRPC with mutual TLS: ADS and certificate renewal (default %(default)s)")
    serve.add_argument("--bootstrap-address", type=parse_address, default=DEFAULT_BOOTSTRAP_ADDRESS,
                       help="HOST:PORT for gRPC with server-only TLS: first certificates with a join token "
                            "(default %(default)s)")
    serve.add_argument("--admin-address", type=parse_address, default=DEFAULT_ADMIN_ADDRESS,
                       help="HOST:PORT for /healthz, /readyz, /metrics and the debug API (default %(default)s)")
    serve.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info",
                       help="lowest level of log events written to stderr (default %(default)s)")
    serve.add_argument("--log-format", choices=("console", "json"), default="console",
                       help="log lines as readable text or as one JSON object each (default %(default)s)")
    serve.add_argument("--source", default="none", metavar="SOURCE",
                       help="where mesh configuration comes from: files:DIR (a folder of Kubernetes YAML, "
                            "followed for changes), kubernetes (the API server), or none (default %(default)s)")
    serve.add_argument("--local-addresses", type=Path, default=None, metavar="FILE",
                       help="local mode: JSON map of namespace/name to the workload's loopback address, "
                            "as written by meshctl up")
    serve.add_argument("--kubeconfig", type=Path, default=None,
                       help="with --source kubernetes: kubeconfig file (default: in-cluster, then ~/.kube/config)")
    serve.add_argument("--context", default=None, help="with --source kubernetes: kubeconfig context to use")
    serve.add_argument("--webhook-address", type=parse_address, default=None, metavar="HOST:PORT",
                       help="with --source kubernetes: HOST:PORT for the sidecar injection webhook (HTTPS, "
                            "certificate from the mesh CA); without it no webhook runs")
    serve.add_argument("--proxy-image", default=None, metavar="IMAGE",
                       help="image of the sidecar and init containers the webhook injects "
                            "(default: the proxy image of this release)")
    serve.add_argument("--sidecar-control-plane", type=parse_address, default=None, metavar="HOST:PORT",
                       help="control plane address injected sidecars connect to "
                            "(default idmesh-controlplane.<root namespace>.svc:15012)")
    serve.set_defaults(handler=command_serve, usage_error=serve.error)
    return parser


def _now() -> datetime:
    return datetime.now(timezone.utc)


def command_ca_init(args: argparse.Namespace) -> int:
    ca = CertificateAuthority.create(
        args.ca_dir,
        trust_domain=args.trust_domain,
        key_type=args.key_type,
        intermediate=args.intermediate,
        now=_now(),
    )
    root = ca.roots[0]
    signer = "an intermediate under the root" if args.intermediate else "the root"
    print(f"created CA for trust domain {ca.trust_domain} in {args.ca_dir}: {args.key_type} keys, "
          f"leaves signed by {signer}, root serial {format_serial(root.serial_number)}")
    return 0


def command_ca_issue(args: argparse.Namespace) -> int:
    ca = CertificateAuthority.load(args.ca_dir, now=_now())
    issued, key_pem = ca.issue(args.spiffe_id, ttl=args.ttl, now=_now())
    out_dir: Path = args.out_dir
    out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_secret_file(out_dir / "svid.key", key_pem)
    write_file(out_dir / "svid.pem", "".join(issued.cert_chain_pem).encode(), mode=PUBLIC_FILE_MODE)
    bundle = "".join(certificate_to_pem(root) for root in ca.trust_bundle().roots)
    write_file(out_dir / "bundle.pem", bundle.encode(), mode=PUBLIC_FILE_MODE)
    print(f"issued {issued.spiffe_id} serial {format_serial(issued.serial)}, valid until {issued.not_after.isoformat()}, "
          f"in {out_dir}")
    return 0


def command_token_create(args: argparse.Namespace) -> int:
    # Reading the CA directory is the authority check: only its owner can read join-token.key.
    ca = CertificateAuthority.load(args.ca_dir)
    key = load_join_token_key(args.ca_dir, create=False)
    issuer = JoinTokenIssuer(key, trust_domain=ca.trust_domain)
    print(issuer.mint(args.spiffe_id, ttl=args.ttl, now=_now()))
    return 0


def command_serve(args: argparse.Namespace) -> int:
    # Imported here so that the one-shot commands start without loading grpc and aiohttp.
    from controlplane.server.serve import ServeOptions, load_or_create_ca, run

    try:
        options = ServeOptions(
            ca_dir=args.ca_dir,
            ca_secret=args.ca_secret,
            trust_domain=args.trust_domain or DEFAULT_TRUST_DOMAIN,
            root_namespace=args.root_namespace,
            grpc_address=args.grpc_address,
            bootstrap_address=args.bootstrap_address,
            admin_address=args.admin_address,
            source=args.source,
            local_addresses=args.local_addresses,
            kubeconfig=args.kubeconfig,
            kube_context=args.context,
            webhook_address=args.webhook_address,
            sidecar_control_plane=args.sidecar_control_plane,
            **({"proxy_image": args.proxy_image} if args.proxy_image else {}),
        )
    except ConfigError as exc:
        args.usage_error(str(exc))
    logging_setup.configure(level=args.log_level, json=args.log_format == "json")
    ca = None
    if options.ca_dir is not None:
        ca, created = load_or_create_ca(options.ca_dir, trust_domain=options.trust_domain, now=_now())
        if args.trust_domain is not None and ca.trust_domain != args.trust_domain:
            raise ConfigError(
                f"the CA in {options.ca_dir} is for trust domain {ca.trust_domain}, not {args.trust_domain}; "
                "leave out --trust-domain to serve the CA's own, or use a CA directory for "
                f"{args.trust_domain}",
                trust_domain=args.trust_domain,
            )
        if created:
            print(f"created a new CA for trust domain {ca.trust_domain} in {options.ca_dir}", flush=True)
    asyncio.run(run(options, ca, clock=_now, announce=lambda line: print(line, flush=True)))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.handler is not command_serve:
        # One-shot commands print results on stdout; only problems go to the log on stderr.
        logging_setup.configure(level="warning")
    try:
        return args.handler(args)
    except MeshError as exc:
        print(f"{PROGRAM}: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
