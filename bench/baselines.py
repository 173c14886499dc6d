"""The floors and peers of bench/peers, measured for the same figures as firebox's.

Each peer is set up, measured and torn down in turn (its ``teardown`` stops by PID what it
started); the Docker ones share one engine, held across them. A peer that cannot run here is
skipped with its reason; a figure it does not offer is recorded with the peer's reason.
"""

from __future__ import annotations

import contextlib
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from firebox_figures import GIB16_MB, Entry, Figures, samples
from peers import PEERS, Peer, Unsupported, docker_engine
from peers.driven import DockerDriverPeer

# peer method → (figure key, unit)
LATENCIES = {
    "create_to_first_command": "create_first_command",
    "create_to_first_python": "create_first_python",
    "command_round_trip": "command_round_trip",
    "python_round_trip": "python_round_trip",
}


@dataclass
class PeerPlan:
    runs: int  # creates; round trips get 3× as many, as firebox's
    cold_boot_runs: int  # each a cold QEMU boot under TCG: seconds apiece
    idle: int  # sandboxes up at once for the memory figure
    file_mb: int = 100
    log: Callable[[str], None] = print


def measure_peers(plan: PeerPlan, figures: Figures, details: dict[str, Any]) -> None:
    with contextlib.ExitStack() as stack:
        if docker_engine.available() is None and any(
            issubclass(c, DockerDriverPeer) for c in PEERS
        ):
            start = time.monotonic()
            try:
                stack.enter_context(docker_engine.held())  # one engine and image for all
                plan.log(f"docker engine up, image imported ({time.monotonic() - start:.1f} s)")
            except Exception as exc:  # noqa: BLE001  (its peers then fail to set up, with why)
                plan.log(f"docker engine FAILED: {exc}")
        for cls in PEERS:
            measure_peer(cls(), plan, figures, details)


def measure_peer(peer: Peer, plan: PeerPlan, figures: Figures, details: dict[str, Any]) -> None:
    info: dict[str, Any] = {"kind": peer.kind, "notes": dict(peer.notes)}
    details[peer.name] = info
    if (reason := peer.available()) is not None:
        info["skipped"] = reason
        plan.log(f"{peer.name}: skipped: {reason}")
        return
    plan.log(f"{peer.name}: setting up")
    try:
        with peer:
            with contextlib.suppress(Exception):
                info["version"] = peer.version()  # type: ignore[attr-defined]
            for method, key in LATENCIES.items():
                runs = plan.runs if method.startswith("create") else plan.runs * 3
                if peer.name == "cold_qemu":
                    runs = plan.cold_boot_runs
                put(figures, key, peer, plan, lambda m=method, r=runs: getattr(peer, m)(r), "ms")
            put_files(figures, peer, plan)
            put_idle(figures, peer, plan, info)
    except Exception as exc:  # noqa: BLE001  (set-up or teardown: the peer's figures say so)
        traceback.print_exc()
        info["failed"] = f"{type(exc).__name__}: {exc}"[:500]
        plan.log(f"{peer.name}: FAILED: {info['failed']}")


def entry(got: Any, unit: str) -> Entry:
    if isinstance(got, Unsupported):
        return {"unit": unit, "na": got.reason}
    return samples(unit, got)


def put(
    figures: Figures,
    key: str,
    peer: Peer,
    plan: PeerPlan,
    fn: Callable[[], Any],
    unit: str,
) -> Any:
    start = time.monotonic()
    try:
        got = fn()
    except Exception as exc:  # noqa: BLE001  (recorded; the peer's other figures go on)
        traceback.print_exc()
        figures.setdefault(key, {})[peer.name] = {"failed": f"{type(exc).__name__}: {exc}"[:300]}
        plan.log(f"  {peer.name}: {key} FAILED: {exc}")
        return None
    figures.setdefault(key, {})[peer.name] = entry(got, unit)
    plan.log(f"  {peer.name}: {key} ({time.monotonic() - start:.1f} s)")
    return got


def put_files(figures: Figures, peer: Peer, plan: PeerPlan) -> None:
    start = time.monotonic()
    try:
        got = peer.file_throughput(plan.file_mb)
    except Exception as exc:  # noqa: BLE001  (recorded; the peer's other figures go on)
        traceback.print_exc()
        for key in ("file_write", "file_read"):
            figures.setdefault(key, {})[peer.name] = {"failed": f"{type(exc).__name__}: {exc}"}
        plan.log(f"  {peer.name}: file_throughput FAILED: {exc}")
        return
    if isinstance(got, Unsupported):
        got = {"write_mb_s": got, "read_mb_s": got}
    for key, direction in (("file_write", "write_mb_s"), ("file_read", "read_mb_s")):
        value = got[direction]
        figures.setdefault(key, {})[peer.name] = entry(
            value if isinstance(value, Unsupported) else [value], "MB/s"
        )
    plan.log(f"  {peer.name}: file_throughput ({time.monotonic() - start:.1f} s)")


def put_idle(figures: Figures, peer: Peer, plan: PeerPlan, info: dict[str, Any]) -> None:
    got = put(figures, "idle_pss", peer, plan, lambda: peer.idle_memory_mb(plan.idle), "MB")
    shared = 0.0
    engine = getattr(peer, "engine", None)
    if isinstance(engine, docker_engine.DockerEngine):
        shared = engine.engine_pss_mb()
        info["engine_pss_mb"] = round(shared, 1)
    if isinstance(got, list) and got:
        got = sorted(got)
        per = got[len(got) // 2]
        info["idle_n"] = plan.idle
        figures.setdefault("idle_per_16gib", {})[peer.name] = {
            "unit": "sandboxes",
            "samples": [int((GIB16_MB - shared) // per)],
            "how": f"(16 GiB - {shared:.0f} MB held once) / median PSS of {plan.idle} idle",
        }
    elif isinstance(got, Unsupported):
        figures.setdefault("idle_per_16gib", {})[peer.name] = {"unit": "", "na": got.reason}


__all__ = ["PeerPlan", "measure_peers"]
