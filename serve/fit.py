"""Whether the deployments can be placed: every replica's resource request against the nodes
of the cluster and the node types its autoscaler can launch, checked before deploying.

Without it, a deployment nothing can host (DeviceHead asking for 0.1 CPU on a cluster whose
only `device` node offers Ray no CPUs) leaves the app DEPLOYING with nothing said but Ray's
autoscaler line; with it, `twostep serve` stops at once, naming the deployment, its request and
the flag that changes it."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

# Where `ray up` leaves the cluster's config (its node types) on the head node.
BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"


@dataclass(frozen=True)
class Request:
    """What one replica of a deployment asks Ray for, and the flag that changes it."""

    deployment: str
    resources: dict[str, float]
    flag: str

    def actor_options(self) -> dict:
        """Serve's `ray_actor_options` for this request."""
        custom = {k: v for k, v in self.resources.items() if k != "CPU"}
        return {"num_cpus": self.resources.get("CPU", 0.0), **({"resources": custom} if custom else {})}


def requests_of(router_cpus: float, head_cpus: float, tail_cpus: float, device: dict,
                edge: dict) -> list[Request]:
    """The three deployments' requests (`device`, `edge`: the custom resources of placement)."""
    placed = " (or --placement local)" if device or edge else ""
    return [Request("Router", {"CPU": router_cpus, **edge}, f"--router-cpus{placed if edge else ''}"),
            Request("DeviceHead", {"CPU": head_cpus, **device},
                    f"--head-cpus (0 runs it on a node that offers Ray no CPUs){placed if device else ''}"),
            Request("EdgeTail", {"CPU": tail_cpus, **edge}, f"--replica-cpus{placed if edge else ''}")]


def fits(request: Mapping[str, float], offer: Mapping[str, float]) -> bool:
    """Whether a node offering `offer` (its total resources) can host one such replica."""
    return all(offer.get(name, 0.0) >= amount for name, amount in request.items() if amount > 0)


def node_types(config: Mapping | None) -> dict[str, dict[str, float]]:
    """The worker node types a cluster config (cluster.yaml) lets the autoscaler launch, with
    their resources (not the head's type; not those with `max_workers: 0`)."""
    config = config or {}
    types, head = config.get("available_node_types") or {}, config.get("head_node_type")
    return {name: {k: float(v) for k, v in (spec.get("resources") or {}).items()}
            for name, spec in types.items() if name != head and spec.get("max_workers", 1) != 0}


def read_cluster_config(path: str | os.PathLike | None) -> dict | None:
    """The cluster config at `path`, else `ray up`'s copy on this head node, else None."""
    import yaml

    file = Path(path).expanduser() if path else Path(BOOTSTRAP_CONFIG).expanduser()
    if not file.is_file():
        if path:
            raise ValueError(f"--cluster-config {str(path)!r} does not exist")
        return None
    try:
        return yaml.safe_load(file.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"--cluster-config {str(file)!r} is not YAML: {err}") from None


def unplaceable(requests: Iterable[Request], nodes: Iterable[Mapping[str, float]],
                launchable: Mapping[str, Mapping[str, float]]) -> list[str]:
    """One line per deployment that no alive node and no launchable node type can host."""
    nodes, lines = list(nodes), []
    for request in _not_hosted_now(requests, nodes):
        if _types_for(request, launchable):
            continue
        shown = {"CPU", "GPU", *request.resources}
        offered = "; ".join(sorted({_describe({k: v for k, v in node.items() if k in shown})
                                    for node in nodes})) or "none"
        typed = (f"; node types the autoscaler can launch: {', '.join(launchable)}" if launchable else
                 "; no cluster config names node types an autoscaler could launch: give "
                 "--cluster-config FILE where one will")
        lines.append(f"{request.deployment} asks for {_describe(request.resources)} per replica and "
                     f"no node offers it (nodes: {offered}{typed}); change {request.flag}")
    return lines


def waiting_for_autoscaler(requests: Iterable[Request], nodes: Iterable[Mapping[str, float]],
                           launchable: Mapping[str, Mapping[str, float]]) -> list[str]:
    """One line per deployment only a node the autoscaler has yet to launch can host."""
    return [f"{request.deployment} ({_describe(request.resources)}) waits for the autoscaler to "
            f"launch a node of type {' or '.join(names)}"
            for request in _not_hosted_now(requests, nodes)
            if (names := _types_for(request, launchable))]


def _not_hosted_now(requests: Iterable[Request], nodes: Iterable[Mapping[str, float]]) -> list[Request]:
    nodes = list(nodes)
    return [r for r in requests if not any(fits(r.resources, node) for node in nodes)]


def _types_for(request: Request, launchable: Mapping[str, Mapping[str, float]]) -> list[str]:
    return [name for name, offer in launchable.items() if fits(request.resources, offer)]


def deployment_news(status, app_names: Iterable[str], seen: set) -> list[str]:
    """What Serve says of deployments that are not healthy yet (replicas waiting to be
    scheduled, failing to start), each message once: `status` is `serve.status()`."""
    lines = []
    for app_name in app_names:
        app = status.applications.get(app_name)
        for name, deployment in (app.deployments.items() if app else ()):
            message = (deployment.message or "").strip()
            status = getattr(deployment.status, "value", deployment.status)  # a str enum in Ray
            if status != "HEALTHY" and message and (name, message) not in seen:
                seen.add((name, message))
                lines.append(f"{app_name}/{name} {status}: {message}")
    return lines


def _describe(resources: Mapping[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(resources.items())) + "}"
