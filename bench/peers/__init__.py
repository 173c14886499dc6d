"""Peers and floors of firebox's benchmark: one module each, one interface (base.Peer).

    from peers import PEERS            # with bench/ on sys.path, as bench's scripts have it
    for cls in PEERS:
        peer = cls()
        if (reason := peer.available()) is not None:
            print(f"{peer.name}: skipped: {reason}")
            continue
        with peer:                     # setup() … teardown()
            samples = peer.create_to_first_command(5)   # list[float] ms, or base.Unsupported

How each peer is measured: README.md here, and each class's ``notes``.
"""

from __future__ import annotations

from .bare_bwrap import BareBwrap
from .bare_python import BarePython
from .base import Peer, Unsupported
from .cold_qemu import ColdQemu
from .epicbox_peer import Epicbox
from .gvisor import Gvisor
from .llm_sandbox_bwrap import LlmSandboxBwrap
from .llm_sandbox_docker import LlmSandboxDocker

# floors first, then the peers; the Docker ones last, side by side (they share one engine)
PEERS: list[type[Peer]] = [
    BarePython,
    BareBwrap,
    ColdQemu,
    Gvisor,
    LlmSandboxBwrap,
    LlmSandboxDocker,
    Epicbox,
]

METRICS = [
    "create_to_first_command",
    "create_to_first_python",
    "command_round_trip",
    "python_round_trip",
    "file_throughput",
    "idle_memory_mb",
]


def by_name(name: str) -> type[Peer]:
    for cls in PEERS:
        if cls.name == name:
            return cls
    raise KeyError(f"no peer {name!r}: {', '.join(c.name for c in PEERS)}")


__all__ = ["METRICS", "PEERS", "Peer", "Unsupported", "by_name"]
