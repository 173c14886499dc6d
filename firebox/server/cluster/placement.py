"""Where a create goes: a node chosen by score among a few sampled at random.

Sampling two (the "power of two choices") spreads creates from several gateways without each
chasing the same best node; scoring picks the better of those by what each node said at its
last renewal: free places, free memory, CPU load, and whether the template is warm there.
The score only orders the candidates: the place itself is taken in a transaction
(``Nodes.reserve``), so a node that a stale score calls free but is full is skipped, never
overfilled.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

from firebox.server.cluster.nodes import Node

SAMPLE = 2  # two random choices: the classic spread without a herd
MEMORY_SCALE_MB = 8192  # free memory past this counts no more


def score(node: Node, template: str, running: int | None = None) -> float:
    """Higher is better. ``running``: the node's sandboxes now, if known (its renewal's
    count is up to a third of a lease old: creates in between would all see the same)."""
    c = node.capacity
    held = int(c.get("running", 0)) if running is None else running
    places = max(0, node.slots - held) / max(1, node.slots)
    memory = min(1.0, float(c.get("memory_free_mb", 0)) / MEMORY_SCALE_MB)
    # only a host busier than its cores counts against it: below that, load is noise (each
    # node reads it at its own moment) that would outweigh a difference of a few sandboxes
    busy = max(0.0, float(c.get("load", 0.0)) / max(1, int(c.get("cpus", 1))) - 1.0)
    warm = 0.5 if template in c.get("warm", ()) else 0.0
    return places + memory - min(busy, 1.0) + warm


def candidates(
    nodes: list[Node],
    template: str,
    running: Mapping[str, int] | None = None,
    rng: random.Random | None = None,
) -> list[Node]:
    """Active nodes in the order to try: the sampled ones by score, then the others (tried
    only when every sampled one is full). ``running``: sandboxes per node, counted now."""
    active = [n for n in nodes if n.state == "active" and n.lease_left > 0]
    sampled = (rng or random).sample(active, min(SAMPLE, len(active)))
    rest = [n for n in active if n not in sampled]

    def key(n: Node) -> float:
        return score(n, template, None if running is None else running.get(n.name, 0))

    return sorted(sampled, key=key, reverse=True) + sorted(rest, key=key, reverse=True)
