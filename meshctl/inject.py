"""`meshctl inject -f FILE`: apply the webhook's sidecar template offline to manifests.

Pods and the pod templates of Deployments, StatefulSets, DaemonSets, ReplicaSets,
ReplicationControllers, Jobs and CronJobs go through the same `inject_pod` as the admission
webhook. Every other object passes through unchanged. Injection is idempotent, so running the
command on its own output changes nothing. Comments and quoting of the input YAML are not kept.

Namespace labels come from a Namespace object in the same input, else from
`--namespace-labels`, else the namespace counts as unlabelled. One line per pod-bearing object
on stderr says whether it was injected and why.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from typing import Any, Mapping

import yaml

from controlplane.errors import MeshError
from controlplane.injector.settings import InjectionSettings
from controlplane.injector.template import inject_pod
from meshctl.errors import EXIT_OK, UsageError

# Path of the pod template inside each workload kind; () is the object itself.
POD_TEMPLATE_PATHS: dict[str, tuple[str, ...]] = {
    "Pod": (),
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "ReplicationController": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}


class InjectInputError(MeshError):
    """Input that cannot be read as Kubernetes objects; `source` names the file."""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "inject",
        help="add the idmesh sidecar to Pods and workload pod templates in manifests",
        description="Apply the sidecar injection template to every Pod and workload pod template "
        "in FILE and print all objects, injected or not. The same rules as the admission webhook "
        "decide which pods get a sidecar.",
    )
    parser.add_argument("-f", "--filename", required=True, metavar="FILE", help="YAML or JSON manifests, several documents allowed; - reads stdin")
    parser.add_argument("-o", "--output", choices=("yaml", "json"), default="yaml", help="output format (default: yaml)")
    parser.add_argument("-n", "--namespace", default="default", help="namespace of objects that name none (default: default)")
    parser.add_argument("--namespace-labels", default="", metavar="K=V,...",
                        help="labels of namespaces that the input does not define, such as idmesh.io/injection=enabled")
    defaults = InjectionSettings()
    parser.add_argument("--proxy-image", default=defaults.proxy_image, help=f"sidecar image (default: {defaults.proxy_image})")
    parser.add_argument("--control-plane", default=defaults.control_plane_address,
                        help=f"control plane HOST:PORT the sidecar connects to (default: {defaults.control_plane_address})")
    parser.add_argument("--trust-domain", default=defaults.trust_domain, help=f"trust domain (default: {defaults.trust_domain})")
    parser.set_defaults(run=run)


add_parser = register


def run(args: argparse.Namespace) -> int:
    default_labels = parse_namespace_labels(args.namespace_labels)
    settings = InjectionSettings(proxy_image=args.proxy_image, control_plane_address=args.control_plane,
                                 trust_domain=args.trust_domain)
    documents = read_documents(args.filename, getattr(args, "stdin", None) or sys.stdin)
    output, notes = inject_documents(documents, settings=settings, default_namespace=args.namespace,
                                     default_labels=default_labels)
    for note in notes:
        args.stderr.write(f"meshctl inject: {note}\n")
    args.stdout.write(render_documents(output, args.output))
    return EXIT_OK


def parse_namespace_labels(text: str) -> dict[str, str]:
    """Parse `k=v,k2=v2`; raise `UsageError` for an item without `=` or key."""
    labels: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, separator, value = item.partition("=")
        if not separator or not key:
            raise UsageError(f"--namespace-labels: {item!r} is not KEY=VALUE")
        labels[key] = value
    return labels


def read_documents(filename: str, stdin: Any) -> list[dict[str, Any]]:
    """Read every non-empty YAML (or JSON) document; a `List` contributes its items."""
    try:
        text = stdin.read() if filename == "-" else open(filename, encoding="utf-8").read()
    except OSError as exc:
        raise UsageError(f"{filename}: cannot read: {exc.strerror}") from exc
    try:
        loaded = [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as exc:
        raise InjectInputError(f"{filename}: invalid YAML: {exc}", source=filename) from exc
    documents: list[dict[str, Any]] = []
    for index, doc in enumerate(loaded):
        if not isinstance(doc, dict):
            raise InjectInputError(f"{filename}: document {index + 1} is a {type(doc).__name__}, not a Kubernetes object",
                                   source=filename)
        documents.extend(doc["items"] if doc.get("kind") == "List" and isinstance(doc.get("items"), list) else [doc])
    return documents


def inject_documents(
    documents: list[dict[str, Any]],
    *,
    settings: InjectionSettings,
    default_namespace: str,
    default_labels: Mapping[str, str],
) -> tuple[list[dict[str, Any]], list[str]]:
    """Inject every pod-bearing object; return all objects in input order and one note per pod template."""
    namespace_labels = {
        str((doc.get("metadata") or {}).get("name")): dict((doc.get("metadata") or {}).get("labels") or {})
        for doc in documents
        if doc.get("kind") == "Namespace"
    }
    output: list[dict[str, Any]] = []
    notes: list[str] = []
    for doc in documents:
        kind = str(doc.get("kind"))
        path = POD_TEMPLATE_PATHS.get(kind)
        if path is None:
            output.append(doc)
            continue
        metadata = doc.get("metadata") or {}
        name = str(metadata.get("name") or metadata.get("generateName") or "")
        namespace = str(metadata.get("namespace") or default_namespace)
        ref = f"{kind} {namespace}/{name}"
        template = _at(doc, path)
        if not isinstance(template, dict):
            raise InjectInputError(f"{ref}: {'.'.join(path)} is not an object", source=ref)
        result = inject_pod(template, namespace_labels=namespace_labels.get(namespace, default_labels),
                            settings=settings, owner_kind=kind, workload=name)
        output.append(_replaced(doc, path, result.patched_pod))
        notes.append(f"{ref}: {'injected' if result.injected else 'not injected'}: {result.reason}")
        notes += [f"{ref}: warning: {warning}" for warning in result.warnings]
    return output, notes


def _at(doc: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = doc
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _replaced(doc: dict[str, Any], path: tuple[str, ...], template: dict[str, Any]) -> dict[str, Any]:
    if not path:
        return template
    result = copy.deepcopy(doc)
    parent = _at(result, path[:-1])
    parent[path[-1]] = template
    return result


def render_documents(documents: list[dict[str, Any]], output: str) -> str:
    """Render as multi-document YAML, or as JSON: one object, or a `List` of several."""
    if output == "json":
        body: Any = documents[0] if len(documents) == 1 else {"apiVersion": "v1", "kind": "List", "items": documents}
        return json.dumps(body, indent=2, ensure_ascii=False) + "\n"
    return yaml.safe_dump_all(documents, sort_keys=False, explicit_start=True, allow_unicode=True)
