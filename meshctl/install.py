"""`meshctl install` and `meshctl uninstall`: put the control plane into a cluster, or take it out.

The objects come from manifests/base (the same files `kubectl apply -k` takes), set to the
flags' values by `controlplane.install.render`. `--dry-run` prints them as YAML on stdout and
contacts no cluster. Progress goes to stderr, one line per object, as kubectl prints it.

Exit codes: 0 success, 1 the cluster rejected a request, the rollout timed out or the manifests
are broken, 2 invalid flag values, including a `--cert-ttl` over the manifests' maximum.
"""

from __future__ import annotations

import argparse
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from kubernetes.client import ApiClient

from controlplane.errors import MeshError
from controlplane.install import values as install_values
from controlplane.install.cluster import Cluster
from controlplane.install.errors import InstallError
from controlplane.install.render import DEFAULT_MANIFESTS, load_base, mesh_settings, render, to_yaml
from controlplane.install.steps import install, uninstall, uninstall_objects
from controlplane.install.values import WEBHOOK_FAILURE_POLICIES, InstallValues
from controlplane.model.meshconfig import format_duration
from controlplane.model.types import DEFAULT_ROOT_NAMESPACE
from meshctl.errors import UsageError

EXIT_OK = 0
EXIT_FAILURE = 1


def _flag(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """Turn an `InstallError` from `parse` into the usage error argparse reports."""

    def parse_flag(text: str) -> Any:
        try:
            return parse(text)
        except InstallError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc

    return parse_flag


def _add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-n", "--namespace", type=_flag(install_values.parse_namespace), default=DEFAULT_ROOT_NAMESPACE,
                        help="root namespace of the mesh, where the control plane runs (default %(default)s)")
    parser.add_argument("--kubeconfig", default=None, metavar="PATH",
                        help="kubeconfig file (default: $KUBECONFIG, then ~/.kube/config, or in-cluster settings)")
    parser.add_argument("--context", default=None, metavar="NAME", help="kubeconfig context (default: the current one)")
    parser.add_argument("--manifests", type=Path, default=DEFAULT_MANIFESTS, metavar="DIR",
                        help="the manifests directory holding base/ and crds/ (default: the one in this source tree)")


def register(subparsers: Any) -> None:
    """Add the `install` and `uninstall` commands."""
    parser = subparsers.add_parser(
        "install",
        help="install or upgrade the control plane in a cluster",
        description="Apply the CRDs, RBAC, mesh settings, CA Secret, control plane and webhook, in that order, "
        "then wait until the control plane is ready. Running it again updates what changed.",
    )
    parser.add_argument("--trust-domain", type=_flag(install_values.parse_trust_domain), default=None,
                        help="SPIFFE trust domain of every workload (default: the manifests' cluster.local)")
    parser.add_argument("--cert-ttl", type=_flag(install_values.parse_cert_ttl), default=None, metavar="DURATION",
                        help="lifetime of workload certificates, such as 24h or 90m: whole seconds, at least 1m and "
                        "at most the manifests' maxCertificateTTL (default: the manifests' 24h)")
    parser.add_argument("--image", type=_flag(install_values.parse_image), default=None,
                        help="control plane container image (default: the manifests' image)")
    parser.add_argument("--proxy-image", type=_flag(install_values.parse_image), default=None, metavar="IMAGE",
                        help="image of the sidecar and init containers that the webhook injects into pods "
                        "(default: the manifests' ghcr.io/idmesh/proxy:0.1.0)")
    parser.add_argument("--replicas", type=_flag(install_values.parse_replicas), default=None, metavar="N",
                        help="control plane replicas; 1 leaves out the PodDisruptionBudget (default: the manifests' 2)")
    parser.add_argument("--ca-source", type=_flag(install_values.parse_ca_source), default=install_values.GENERATED,
                        metavar="generated|secret:NAME",
                        help="generated: create a CA in Secret idmesh-ca unless it exists; secret:NAME: use a Secret "
                        "made from a `controlplane ca init` directory (default generated)")
    parser.add_argument("--webhook-failure-policy", choices=WEBHOOK_FAILURE_POLICIES, default=None,
                        help="what the API server does with a pod when the webhook cannot be reached "
                        "(default: the manifests' Fail)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the objects as YAML on stdout and contact no cluster")
    parser.add_argument("--wait", action=argparse.BooleanOptionalAction, default=True,
                        help="wait until the control plane Deployment is ready before registering the webhook "
                        "(default: wait)")
    parser.add_argument("--timeout", type=_flag(install_values.parse_go_duration), default=300.0, metavar="DURATION",
                        help="how long to wait for the control plane, such as 90s or 5m (default 5m)")
    _add_cluster_arguments(parser)
    parser.set_defaults(run=run)

    remove = subparsers.add_parser(
        "uninstall",
        help="remove the control plane from a cluster",
        description="Delete the webhook, control plane, settings and RBAC in reverse install order. The CRDs "
        "(and so every policy), the namespace and the CA Secret stay unless --purge is given.",
    )
    remove.add_argument("--purge", action="store_true",
                        help="also delete the CA Secret idmesh-ca, the namespace and the CRDs with every policy")
    remove.add_argument("--dry-run", action="store_true", help="list what would be deleted and contact no cluster")
    _add_cluster_arguments(remove)
    remove.set_defaults(run=run)


# The name the install commands' callers may also use.
add_parser = register


def run(args: argparse.Namespace) -> int:
    """Run the command that `args.command` names (`install` or `uninstall`); return the exit code."""
    stdout, stderr = args.stdout, args.stderr

    def progress(line: str) -> None:
        stderr.write(f"{line}\n")
        stderr.flush()

    try:
        base = load_base(args.manifests)
        if args.command == "install":
            return _install(args, base, stdout, progress)
        return _uninstall(args, base, stdout, progress)
    except UsageError:
        # meshctl's main reports it with exit code 2.
        raise
    except MeshError as exc:
        stderr.write(f"meshctl {args.command}: error: {exc}\n")
        return EXIT_FAILURE


def _values(args: argparse.Namespace) -> InstallValues:
    # Written back in the settings' own form, so 1440m becomes 24h.
    cert_ttl = format_duration(args.cert_ttl) if args.cert_ttl is not None else None
    return InstallValues(
        namespace=args.namespace,
        trust_domain=args.trust_domain,
        cert_ttl=cert_ttl,
        image=args.image,
        proxy_image=args.proxy_image,
        replicas=args.replicas,
        ca_source=args.ca_source,
        webhook_failure_policy=args.webhook_failure_policy,
    )


def _install(args: argparse.Namespace, base: list[dict[str, Any]], stdout: Any, progress: Callable[[str], None]) -> int:
    _check_cert_ttl(args.cert_ttl, base)
    values = _values(args)
    # Rendering checks every value, so bad settings fail before any cluster is contacted.
    objects = render(base, values)
    if args.dry_run:
        stdout.write(to_yaml(objects))
        progress(f"dry run: the CA Secret {values.ca_source.secret_name} and the webhook's caBundle are not shown; "
                 "they come from the cluster at install time")
        return EXIT_OK
    cluster = Cluster(_api_client(args))
    install(cluster, base, values, wait=args.wait, timeout=args.timeout, now=datetime.now(timezone.utc),
            progress=progress)
    return EXIT_OK


def _check_cert_ttl(cert_ttl: float | None, base: list[dict[str, Any]]) -> None:
    """Raise `UsageError` when `cert_ttl` exceeds the maximum the manifests' mesh settings allow.

    The flag's parser checks the rest of the rule; this part needs the manifests.
    """
    if cert_ttl is None:
        return
    maximum = mesh_settings(base).max_cert_ttl_seconds
    if cert_ttl > maximum:
        raise UsageError(
            f"argument --cert-ttl: invalid certificate TTL {format_duration(cert_ttl)}: it is longer than "
            f"maxCertificateTTL ({format_duration(maximum)}) in the manifests' mesh settings; "
            f"choose at most {format_duration(maximum)}"
        )


def _uninstall(args: argparse.Namespace, base: list[dict[str, Any]], stdout: Any, progress: Callable[[str], None]) -> int:
    if args.dry_run:
        for obj in reversed(uninstall_objects(base, args.namespace, purge=args.purge)):
            stdout.write(f"{obj['kind'].lower()}/{obj['metadata']['name']}\n")
        return EXIT_OK
    uninstall(Cluster(_api_client(args)), base, args.namespace, purge=args.purge, progress=progress)
    return EXIT_OK


def _api_client(args: argparse.Namespace) -> ApiClient:
    from controlplane.sources.kubernetes import load_client_configuration

    return ApiClient(load_client_configuration(kubeconfig=args.kubeconfig, context=args.context))
