"""From raw samples to what the benchmark says: medians, p95, ratios, targets, the Markdown.

``summarize(results)`` adds ``summary`` (median, p95, n of every figure of every subject),
``ratios`` (each firebox subject's median ÷ each baseline's) and ``targets`` (the stretch
targets, met or not) to the results; ``markdown(results)`` renders them; ``write(results)``
saves the raw samples as JSON (run-<date>.json and latest.json) and the table as latest.md.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import compute
from common import RESULTS
from firebox_figures import BACKENDS, DEFAULT_POOL, subject

# key, title, unit, what is better
FIGURES: list[tuple[str, str, str, str]] = [
    ("create_first_command", 'create → first `commands.run("true")` result', "ms", "lower"),
    ("create_first_python", 'create → first `run_code("1+1")` result', "ms", "lower"),
    ("command_round_trip", '`commands.run("true")` round trip', "ms", "lower"),
    ("python_round_trip", '`run_code("x += 1")` round trip', "ms", "lower"),
    ("file_write", "`files.write` of a 100 MB file", "MB/s", "higher"),
    ("file_read", "`files.read` of a 100 MB file", "MB/s", "higher"),
    ("creates_per_s_1", "creates per second, 1 client", "/s", "higher"),
    ("creates_per_s_2", "creates per second, 2 concurrent clients", "/s", "higher"),
    ("creates_per_s_8", "creates per second, 8 concurrent clients", "/s", "higher"),
    ("idle_pss", "memory per idle sandbox (PSS, host /proc)", "MB", "lower"),
    ("idle_fit_budget", "idle sandboxes grown within the memory budget", "", "higher"),
    ("idle_per_16gib", "idle sandboxes per 16 GiB (extrapolated)", "", "higher"),
]
FIREBOX = [subject(b, pool) for b in BACKENDS for pool in (False, True)]
FLOORS = ["bare_python", "bare_bwrap", "cold_qemu"]
PEERS = ["gvisor", "llm_sandbox_bwrap", "llm_sandbox_docker", "epicbox"]
BASELINES = FLOORS + PEERS

# the stretch targets (bench/results/RUNS.md): (figure, firebox subject, "<=" or ">=", value)
TARGETS: list[tuple[str, str, str, float]] = [
    ("create_first_python", "firebox microvm", "<=", 250),
    ("create_first_python", "firebox microvm +pool", "<=", 50),
    ("create_first_python", "firebox jail", "<=", 25),
    ("create_first_python", "firebox jail +pool", "<=", 5),
    # issue 16's targets on this host: ≤ 500 ms without a pool, ≤ 100 ms with one
    ("create_first_python", "firebox gvisor", "<=", 500),
    ("create_first_python", "firebox gvisor +pool", "<=", 100),
    *(
        (fig, subject(b, pool), "<=", limit)
        for fig, limits in (
            ("python_round_trip", {"microvm": 30, "jail": 2}),
            ("command_round_trip", {"microvm": 30, "jail": 3}),
        )
        for b, limit in limits.items()
        for pool in (False, True)
    ),
    *(
        (fig, subject(b, pool), ">=", limit)
        for fig in ("file_write", "file_read")
        for b, limit in (("microvm", 50), ("jail", 300))
        for pool in (False, True)
    ),
    ("creates_per_s_8", "firebox microvm +pool", ">=", 10),
    ("creates_per_s_8", "firebox microvm", ">=", 10),
    ("creates_per_s_8", "firebox jail +pool", ">=", 50),
    ("creates_per_s_8", "firebox jail", ">=", 50),
    ("idle_per_16gib", "firebox microvm", ">=", 200),
    ("idle_per_16gib", "firebox jail", ">=", 1000),
]
# against the peers: (figure, firebox subject, peer, the most firebox's median may be, × theirs)
PEER_TARGETS: list[tuple[str, str, str, float, str]] = [
    *(
        (fig, subject("jail", pool), "llm_sandbox_bwrap", 1.0, "faster than")
        for fig in ("create_first_command", "create_first_python")
        for pool in (False, True)
    ),
    *(
        (fig, who, "llm_sandbox_docker", 0.5, "at most half of")
        for fig in ("create_first_command", "create_first_python")
        for who in FIREBOX
    ),
]


def p95(values: list[float]) -> float:
    """Nearest rank: the smallest sample at or above 95 % of them."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def summarize(results: dict[str, Any]) -> None:
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for key, by in results["figures"].items():
        for who, entry in by.items():
            if entry.get("samples"):
                s = entry["samples"]
                summary.setdefault(key, {})[who] = {
                    "median": statistics.median(s),
                    "p95": p95(s),
                    "n": len(s),
                }
    ratios: dict[str, dict[str, dict[str, float]]] = {}
    for key, by in summary.items():
        for who in FIREBOX:
            if who not in by:
                continue
            for base in BASELINES:
                if base in by and by[base]["median"]:
                    ratios.setdefault(key, {}).setdefault(who, {})[base] = (
                        by[who]["median"] / by[base]["median"]
                    )
    targets = []
    for key, who, op, limit in TARGETS:
        value = summary.get(key, {}).get(who, {}).get("median")
        met = None if value is None else (value <= limit if op == "<=" else value >= limit)
        sign = "≤" if op == "<=" else "≥"
        targets.append(
            {"figure": key, "subject": who, "target": f"{sign} {limit:g}", "value": value}
        )
        targets[-1]["met"] = met
    for key, who, peer, factor, words in PEER_TARGETS:
        value = summary.get(key, {}).get(who, {}).get("median")
        theirs = summary.get(key, {}).get(peer, {}).get("median")
        met = None
        if value is not None and theirs is not None:
            met = value < theirs if factor == 1.0 else value <= factor * theirs
        targets.append(
            {
                "figure": key,
                "subject": who,
                "target": f"{words} {peer}",
                "value": value,
                "theirs": theirs,
                "met": met,
            }
        )
    results["summary"] = summary
    results["ratios"] = ratios
    results["targets"] = targets


# --- Markdown ---------------------------------------------------------------------------------


def fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "—"
    if unit == "ms":
        text = f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 100 else f"{value:.0f}"
    elif unit in ("", "sandboxes"):
        text = f"{value:.0f}"
    else:
        text = f"{value:.1f}" if value < 100 else f"{value:.0f}"
    return f"{text} {unit}".strip()


def ratio(value: float) -> str:
    return f"{value:.3f}×" if value < 0.1 else f"{value:.2f}×" if value < 10 else f"{value:.0f}×"


def title_of(key: str) -> tuple[str, str, str]:
    for k, title, unit, better in FIGURES:
        if k == key:
            return title, unit, better
    return key, "", ""


def why_not(entry: dict[str, Any]) -> str:
    if "na" in entry:
        return f"n/a: {entry['na']}"
    if "failed" in entry:
        return f"FAILED: {entry['failed']}"
    return "—"


def markdown(results: dict[str, Any]) -> str:
    meta = results["meta"]
    out = [
        f"# firebox benchmark, {meta['date']}",
        "",
        f"`{meta['command']}` on {meta['machine']}; wall time {meta['wall_s'] / 60:.1f} min "
        f"({meta['runs']} samples per create figure, {meta['runs'] * 3} per round trip; "
        f"started {meta['started']}). Raw samples: `bench/results/{meta['json_name']}`.",
        "",
        "## Stretch targets, medians of this run",
        "",
        "| figure | firebox | median | target | met |",
        "|---|---|---|---|---|",
    ]
    for t in results["targets"]:
        title, unit, _ = title_of(t["figure"])
        target = t["target"]
        if "theirs" in t:
            target += f" ({fmt(t['theirs'], unit)})"
        elif unit not in ("", "sandboxes"):
            target += f" {unit}"
        met = {True: "met", False: "**not met**", None: "not measured"}[t["met"]]
        out.append(f"| {title} | {t['subject']} | {fmt(t['value'], unit)} | {target} | {met} |")
    out += ["", "## Every figure beside every baseline", ""]
    out.append(
        "Each table: median, p95 (nearest rank) and n of each subject, then firebox's median "
        "÷ each baseline's that has the figure. firebox subjects: each backend with the warm "
        f"pool off (`--pool-size 0`) and on (`+pool`: the default pool, {DEFAULT_POOL} per "
        "template)."
    )
    for key, title, unit, better in FIGURES:
        by = results["figures"].get(key, {})
        summary = results["summary"].get(key, {})
        if not by:
            continue
        bases = [b for b in BASELINES if b in summary]
        out += ["", f"### {title} ({unit or 'count'}, {better} is better)", ""]
        head = ["", "median", "p95", "n", *(f"÷ {b}" for b in bases)]
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "---|" * len(head))
        for who in FIREBOX + BASELINES:
            if who not in by:
                continue
            s = summary.get(who)
            if s is None:
                out.append(f"| {who} | {why_not(by[who])} |" + " |" * (len(head) - 2))
                continue
            cells = [who, fmt(s["median"], unit), fmt(s["p95"], unit), str(s["n"])]
            for b in bases:
                r = results["ratios"].get(key, {}).get(who, {}).get(b)
                cells.append(ratio(r) if r is not None else "")
            out.append("| " + " | ".join(cells) + " |")
    out += overhead_section(results)
    out += density_section(results)
    out += compute.markdown_lines(results["compute"]) if results.get("compute") else []
    out += notes_section(results)
    return "\n".join(out) + "\n"


OVERHEAD_ROWS = [
    ("http_floor_get", "HTTP floor: GET of a bare ASGI app (same uvicorn stack, same client)"),
    ("http_floor_stream", "HTTP floor: POST answered with 2 streamed NDJSON lines"),
    ("health", "`GET /health` (FastAPI, no auth)"),
    ("get_sandbox", "`GET /sandboxes/{id}` (auth, lookup; never reaches the agent)"),
    ("agent_command", "agent alone: `true` through the backend and AgentClient, no daemon"),
    ("raw_command", "`POST /sandboxes/{id}/commands` of `true`, whole answer"),
    ("sdk_command", 'async SDK `commands.run("true")` (total)'),
    ("agent_code", "agent alone: cell `x += 1`, no daemon"),
    ("raw_code", "`POST /sandboxes/{id}/code` of `x += 1`, whole answer"),
    ("sdk_code", 'async SDK `run_code("x += 1")` (total)'),
    ("health.app", "Server-Timing `app` of `GET /health`"),
    ("get_sandbox.app", "Server-Timing `app` of `GET /sandboxes/{id}`"),
    ("raw_command.app", "Server-Timing `app` of the command's POST (to its first byte)"),
    ("raw_command.agent", "Server-Timing `agent` of it (the wait for the process's start)"),
    ("raw_code.app", "Server-Timing `app` of the cell's POST (to its first event)"),
    ("raw_code.agent", "Server-Timing `agent` of it (a cell's wait is not counted)"),
]
DERIVED_ROWS = [
    ("daemon_http_sdk_command", "⇒ command: daemon + HTTP + SDK = SDK total − agent alone"),
    ("daemon_own_command", "⇒ command: **the daemon's own** = POST − agent alone − HTTP floor"),
    ("daemon_own_command_share", "⇒ command: the daemon's own share of the SDK total"),
    ("sdk_own_command", "⇒ command: the SDK's own = SDK total − POST"),
    ("daemon_own_code", "⇒ cell: **the daemon's own** = POST − agent alone − HTTP floor"),
    ("daemon_own_code_share", "⇒ cell: the daemon's own share of the SDK total"),
    ("daemon_fixed_get", "⇒ an authenticated call's fixed cost: `GET /sandboxes/{id}` − floor"),
    ("daemon_fixed_health", "⇒ FastAPI's minimum: `GET /health` − HTTP floor"),
    (
        "st_daemon_command_first_byte",
        "⇒ Server-Timing: the daemon's own to a command's first byte = app − agent",
    ),
    ("st_daemon_get_sandbox", "⇒ Server-Timing: the daemon's whole time for `GET /sandboxes/{id}`"),
    (
        "st_outside_get_sandbox",
        "⇒ `GET /sandboxes/{id}` outside the daemon's app (HTTP server, "
        "loopback, client) = round trip − app",
    ),
]


def overhead_section(results: dict[str, Any]) -> list[str]:
    over = results.get("overhead", {})
    failed = [
        f"- {who}: FAILED: {e['failed']}"
        for who, e in results["figures"].get("overhead", {}).items()
        if "failed" in e
    ]
    if not over:
        return ["", "## The daemon's own overhead per API call", "", *failed] if failed else []
    backends = [b for b in BACKENDS if b in over]
    out = [
        "",
        "## The daemon's own overhead per API call (medians, ms)",
        "",
        "Measured from outside the daemon (bench/overhead.py), in rounds: each round makes "
        "every call below once, in a shuffled order, from one event loop with the SDK's own "
        "async HTTP client, on the pool-off daemon's live sandbox. The HTTP floor is a bare "
        "ASGI app under the same server stack as `firebox serve` (uvicorn, uvloop, httptools); "
        "*agent alone* is a sandbox of the same backend started in the benchmark's process with"
        " the daemon's own code (`firebox.server.pool.boot`, `AgentClient`): no daemon, no "
        "HTTP. Derived rows (⇒) are medians over rounds of each round's difference.",
        "",
        "Beside that, the daemon's own word: its `Server-Timing` header (`app`: from the "
        "request's arrival in the app to the answer's first byte; `agent`: the part spent "
        "waiting for the agent's first reply to a request). It does not see a streamed "
        "answer's tail (a command's exit, a cell's end), nor a cell's wait for its first "
        "event, nor uvicorn's own HTTP parsing.",
        "",
        "| call | " + " | ".join(backends) + " |",
        "|---|" + "---|" * len(backends),
    ]
    for key, label in OVERHEAD_ROWS:
        cells = []
        for b in backends:
            s = over[b].get("medians", {}).get(key)
            cells.append(f"{s:.2f}" if s is not None else "—")
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    for key, label in DERIVED_ROWS:
        cells = []
        for b in backends:
            v = over[b].get("derived", {}).get(key)
            if v is None:
                cells.append("—")
            elif key.endswith("share"):
                cells.append(f"{v * 100:.0f} %")
            else:
                cells.append(f"{v:.2f}")
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    return out + ([""] + failed if failed else [])


def density_section(results: dict[str, Any]) -> list[str]:
    dens = results.get("density", {})
    if not dens:
        return []
    out = [
        "",
        "## Density",
        "",
        'Idle sandboxes (each created on a pool-off daemon, then `run_code("1")` once) are '
        "added, in steps that halve as the budget nears, while the PSS summed over every "
        "process of every sandbox's cgroup (`/proc/<pid>/smaps_rollup`), plus what is held "
        "once for all of them (the microvm's template RAM in its daemon, a memfd; the jail's "
        "zygote, by its PSS), stays within the budget. The daemon's --max-sandboxes and "
        "--min-free-memory-mb are set out of the way.",
        "",
        "| | budget | reached | PSS sum there | held once | stopped by | per 16 GiB | "
        "idle CPU per sandbox | daemon's own PSS |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for who, d in dens.items():
        cpu = d.get("idle_cpu_pct_per_sandbox")
        out.append(
            f"| {who} | {d['budget_mb']} MB | {d['reached']} | {d['pss_sum_mb_at_reached']} MB "
            f"| {d['shared_mb']} MB | {d['stopped_by']} | {d['per_16gib']} | "
            f"{'—' if cpu is None else f'{cpu:.2f} % of a core'} | {d['daemon_pss_mb']} MB |"
        )
    return out


def notes_section(results: dict[str, Any]) -> list[str]:
    meta = results["meta"]
    out = [
        "",
        "## Notes",
        "",
        f"- Machine: {meta['machine']}. Other work may have run on it at the same time.",
        "- create → first result: `Sandbox.create()` then the first call returned, the kill "
        "after the clock; paced (bench/common.first_result) so a pool has refilled.",
        f"- Round trips: in one live sandbox ({meta['runs'] * 3} samples after 2 warm-ups). "
        "Peers' python round trip is their own python call (a new interpreter each time for "
        "all of them but firebox, which keeps state: `x += 1`).",
        f"- Files: {meta['file_runs']} × (write then read) of {meta['file_mb']} MB of random "
        "bytes, MB = 2^20 bytes; one request each way.",
        f"- Creates per second: {meta['creates']} creates, each followed by its kill, shared "
        "by 1, 2 or 8 concurrent `AsyncSandbox` clients; completed creates ÷ wall seconds, one "
        f"run each. `+pool` is the default pool of {DEFAULT_POOL} per template, full at the "
        "start: with more than a couple of clients most creates are cold starts, and the "
        "pool's refills compete with them for the CPU.",
        "- Peers' idle sandboxes per 16 GiB: (16 GiB − what is held once: the Docker engine's "
        "PSS for the Docker peers) ÷ the median PSS of their idle sandboxes; not grown.",
        "- How each baseline is measured: bench/peers/README.md, and `baselines.<name>.notes` "
        "in the JSON.",
    ]
    for name, info in results.get("baselines", {}).items():
        if "skipped" in info:
            out.append(f"- {name}: skipped: {info['skipped']}")
        elif "failed" in info:
            out.append(f"- {name}: FAILED: {info['failed']}")
        elif "version" in info:
            out.append(f"- {name}: version {info['version']}")
    for line in results.get("leftovers", []):
        out.append(f"- LEFT BEHIND: {line}")
    if not results.get("leftovers"):
        out.append("- Left behind after the run (processes, mounts, cgroups of this run): nothing.")
    return out


def write(results: dict[str, Any]) -> tuple[Path, Path]:
    RESULTS.mkdir(parents=True, exist_ok=True)
    raw = RESULTS / results["meta"]["json_name"]
    text = json.dumps(results, indent=1, ensure_ascii=False)
    raw.write_text(text)
    (RESULTS / "latest.json").write_text(text)
    md = RESULTS / "latest.md"
    md.write_text(markdown(results))
    return raw, md


def json_name() -> str:
    return f"run-{time.strftime('%Y-%m-%d-%H%M%S')}.json"


__all__ = ["FIGURES", "json_name", "markdown", "summarize", "write"]
