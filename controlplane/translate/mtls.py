"""The effective PeerAuthentication mode of a workload port, with Istio's precedence.

The most specific policy wins: one that selects the workload by labels, then one for the whole
namespace (no selector), then one for the whole mesh (no selector, in the root namespace),
then `MeshConfig.default_mtls_mode`. A level whose mode is UNSET inherits from the next one.
`portLevelMtls` counts only on a policy with a selector, and its keys are workload (target)
ports. When several policies tie at one level, the first by name wins, because the model
carries no creation time to pick the oldest as Istio does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from controlplane.errors import TranslationError
from controlplane.model.types import MeshState, MtlsMode, PeerAuthentication


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """True when every `selector` label is on the workload (an empty selector selects all)."""
    return all(labels.get(key) == value for key, value in selector.items())


@dataclass(frozen=True, slots=True)
class MtlsPolicy:
    """The PeerAuthentication levels that apply to one workload, resolved once per proxy."""

    workload: PeerAuthentication | None
    namespace: PeerAuthentication | None
    mesh: PeerAuthentication | None
    default: MtlsMode
    problems: tuple[TranslationError, ...] = ()

    def mode_for_port(self, port: int) -> MtlsMode:
        """Return STRICT, PERMISSIVE or DISABLE for connections to `port`."""
        if self.workload is not None:
            port_mode = self.workload.port_level.get(port, "UNSET")
            if port_mode != "UNSET":
                return _checked(self.workload, port_mode)
        for level in (self.workload, self.namespace, self.mesh):
            if level is not None and (level.error or level.mode != "UNSET"):
                return _checked(level, level.mode)
        return "PERMISSIVE" if self.default == "UNSET" else self.default


def _checked(policy: PeerAuthentication, mode: MtlsMode) -> MtlsMode:
    # A PeerAuthentication that could not be parsed fails closed: mTLS is required.
    return "STRICT" if policy.error else mode


def _first(policies: list[PeerAuthentication]) -> PeerAuthentication | None:
    return min(policies, key=lambda p: p.name) if policies else None


def resolve_mtls(state: MeshState, *, namespace: str, labels: Mapping[str, str]) -> MtlsPolicy:
    """Find the PeerAuthentication levels for the workload with `labels` in `namespace`."""
    root = state.config.root_namespace
    workload_level: list[PeerAuthentication] = []
    namespace_level: list[PeerAuthentication] = []
    mesh_level: list[PeerAuthentication] = []
    for policy in state.peer_authentications:
        has_selector = bool(policy.selector)
        if policy.namespace == namespace and has_selector and selects(policy.selector, labels):
            workload_level.append(policy)
        elif policy.namespace == namespace and not has_selector:
            namespace_level.append(policy)
        elif policy.namespace == root and not has_selector:
            mesh_level.append(policy)

    chosen = (_first(workload_level), _first(namespace_level), _first(mesh_level))
    problems = tuple(
        TranslationError(
            f"{policy.ref}: {policy.error}; mTLS is required (STRICT) for the workloads it selects",
            object=str(policy.ref),
        )
        for policy in chosen
        if policy is not None and policy.error
    )
    return MtlsPolicy(*chosen, default=state.config.default_mtls_mode, problems=problems)
