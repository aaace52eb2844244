"""`meshctl certs WORKLOAD`: the certificate chain and trust bundle loaded in a sidecar's Envoy.

Read from Envoy itself, not from the control plane: the PEM of the `default` secret (the
workload SVID chain) and of `ROOTCA` (the trust bundle) from the admin `config_dump` of active
secrets, in which Envoy redacts the private key. Envoy's `/certs` lists the serials that its TLS
contexts use. A leaf whose serial is missing there is loaded but not yet in use, and the output
states it.
"""

from __future__ import annotations

import argparse
import base64
from datetime import datetime, timedelta, timezone
from typing import Any

from cryptography import x509
from cryptography.x509.oid import ExtensionOID

from controlplane.identity.svid import format_serial
from controlplane.cli import parse_duration
from controlplane.translate.resources import ROOTCA_SECRET, WORKLOAD_SECRET
from meshctl.errors import EXIT_OK, EXIT_PROBLEMS, UsageError
from meshctl.client import (
    AdminApiError,
    NotFoundError,
    add_connection_arguments,
    admin_client,
    envoy_get_json,
    split_workload,
)
from meshctl.output import Column, add_output_argument, render
from meshctl.status import format_duration, time_left

SECRETS_DUMP = "/config_dump?resource=dynamic_active_secrets"
DEFAULT_THRESHOLD = timedelta(hours=6)

COLUMNS = (
    Column("ROLE", "role"),
    Column("SUBJECT", "subject"),
    Column("URI SAN", "uri_san"),
    Column("SERIAL", "serial"),
    Column("EXPIRES IN", "time_left"),
    Column("ISSUER", "issuer", wide=True),
    Column("NOT BEFORE", "not_before", wide=True),
    Column("NOT AFTER", "not_after", wide=True),
    Column("IN USE", "in_use", wide=True),
)

EPILOG = """examples:
  meshctl certs payments/ledger                  the ledger's chain and trust bundle
  meshctl certs ledger -n payments -o wide       with issuer and validity
  meshctl certs ledger -n payments --expiry-threshold 24h
  meshctl certs ledger -n payments --envoy-admin-url http://127.0.0.1:15000   (after kubectl port-forward)

Prints a warning on stderr for each certificate that expires within the threshold; exits 1
when a certificate has expired.
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "certs",
        help="show the certificate chain and trust bundle loaded in a sidecar's Envoy",
        description="Read the workload certificate chain and the trust bundle from the Envoy of "
        "WORKLOAD (NAME with -n, or NAMESPACE/NAME) and show subject, URI SAN, serial, issuer, "
        "validity and time left.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("workload", metavar="WORKLOAD", help="NAME (in -n, default: default) or NAMESPACE/NAME")
    parser.add_argument("-n", "--namespace", default=None, help="namespace of WORKLOAD")
    parser.add_argument("--expiry-threshold", type=parse_duration, default=DEFAULT_THRESHOLD, metavar="DURATION",
                        help="warn about certificates that expire sooner than this, e.g. 30m or 24h (default: 6h)")
    parser.add_argument("--envoy-admin-url", metavar="URL", default=None,
                        help="Envoy admin base URL (default: the proxy's address, port 15000, in local mode)")
    add_output_argument(parser)
    add_connection_arguments(parser)
    parser.set_defaults(run=run)


def connected_proxy(client: Any, namespace: str, name: str) -> dict[str, Any]:
    """Return the first connected proxy of a workload; the error tells apart unknown and unconnected."""
    proxies = client.get_json("/debug/syncz").get("proxies", [])
    for proxy in proxies:
        if proxy.get("namespace") == namespace and proxy.get("workload") == name:
            return {**proxy, "workload": f"{namespace}/{name}"}
    try:
        client.get_json(f"/debug/workloads/{namespace}/{name}")
    except NotFoundError as exc:
        raise NotFoundError(f"workload {namespace}/{name} is not in the mesh; check the name and -n",
                            namespace=namespace, name=name) from exc
    raise NotFoundError(f"workload {namespace}/{name} has no sidecar connected to the control plane",
                        namespace=namespace, name=name)


def resolve_workload(args: argparse.Namespace) -> tuple[str, str]:
    try:
        return split_workload(args.workload, args.namespace)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def secret_pems(dump: dict[str, Any]) -> dict[str, bytes]:
    """PEM bytes by secret name: the certificate chain of TLS certificates, trusted CAs of
    validation contexts."""
    pems = {}
    for config in dump.get("configs", []):
        # With `?resource=` each config is one DynamicSecret; without it, a SecretsConfigDump.
        entries = config.get("dynamic_active_secrets", []) if "secret" not in config else [config]
        for entry in entries:
            secret = entry.get("secret", {})
            source = (secret.get("tls_certificate", {}).get("certificate_chain")
                      or secret.get("validation_context", {}).get("trusted_ca") or {})
            if "inline_bytes" in source:
                pems[secret.get("name", entry.get("name"))] = base64.b64decode(source["inline_bytes"])
            elif "inline_string" in source:
                pems[secret.get("name", entry.get("name"))] = source["inline_string"].encode()
    return pems


def serials_in_use(certs: dict[str, Any]) -> set[int]:
    """Serials of the certificate chains Envoy's TLS contexts use, from admin `/certs`."""
    return {
        int(cert["serial_number"], 16)
        for context in certs.get("certificates", [])
        for cert in context.get("cert_chain", [])
        if cert.get("serial_number")
    }


def certificate_record(cert: x509.Certificate, *, role: str, now: datetime, in_use: set[int] | None) -> dict[str, Any]:
    try:
        sans = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
        uris = sans.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    not_after = cert.not_valid_after_utc
    return {
        "role": role,
        "subject": cert.subject.rfc4514_string(),
        "uri_san": ",".join(uris),
        "serial": format_serial(cert.serial_number),
        "issuer": cert.issuer.rfc4514_string(),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": not_after.isoformat(),
        "time_left": time_left(not_after, now),
        "seconds_left": int((not_after - now).total_seconds()),
        "in_use": None if in_use is None else cert.serial_number in in_use,
    }


def chain_records(pems: dict[str, bytes], in_use: set[int], *, now: datetime) -> list[dict[str, Any]]:
    records = []
    chain = x509.load_pem_x509_certificates(pems[WORKLOAD_SECRET]) if WORKLOAD_SECRET in pems else []
    for index, cert in enumerate(chain):
        role = "leaf" if index == 0 else "intermediate"
        records.append(certificate_record(cert, role=role, now=now, in_use=in_use if index == 0 else None))
    roots = x509.load_pem_x509_certificates(pems[ROOTCA_SECRET]) if ROOTCA_SECRET in pems else []
    records += [certificate_record(cert, role="trust bundle root", now=now, in_use=None) for cert in roots]
    return records


def run(args: argparse.Namespace) -> int:
    namespace, name = resolve_workload(args)
    client = admin_client(args)
    proxy = connected_proxy(client, namespace, name)
    envoy = args.envoy_admin_url or client.envoy_admin_url(proxy)
    try:
        pems = secret_pems(envoy_get_json(envoy, SECRETS_DUMP))
        in_use = serials_in_use(envoy_get_json(envoy, "/certs"))
    except AdminApiError as exc:
        raise AdminApiError(f"cannot read certificates from the Envoy of {namespace}/{name} at {envoy}: {exc}",
                            url=envoy) from exc
    if WORKLOAD_SECRET not in pems:
        raise AdminApiError(f"the Envoy of {namespace}/{name} at {envoy} has not loaded a {WORKLOAD_SECRET!r} certificate yet",
                            url=envoy)
    now = datetime.now(timezone.utc)
    records = chain_records(pems, in_use, now=now)
    args.stdout.write(render(records, COLUMNS, args.output))
    threshold = int(args.expiry_threshold.total_seconds())
    for record in records:
        if record["seconds_left"] < threshold:
            when = record["time_left"] if record["seconds_left"] <= 0 else f"expires in {record['time_left']}"
            args.stderr.write(
                f"warning: {record['role']} {record['serial']} ({record['uri_san'] or record['subject']}) "
                f"{when}, within the {format_duration(threshold)} threshold\n"
            )
    if records[0]["in_use"] is False:
        args.stderr.write(f"warning: Envoy loaded leaf {records[0]['serial']} but no TLS context uses it yet\n")
    return EXIT_PROBLEMS if any(record["seconds_left"] <= 0 for record in records) else EXIT_OK
