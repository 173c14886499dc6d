"""Custom templates: how long a build takes, cold and with a warm cache, and how fast a sandbox
of a template with a running server starts against the default template, pool off and on.

    .venv/bin/python bench/templates.py [--creates N] [--backends jail,microvm]

As root, after the README's set-up. Per backend and pool setting, one daemon of its own (its
own FIREBOX_HOME, stopped by PID; its layers and trees land in the shared image cache, named
by content):

- build time of a small template (a file copied, a RUN, an env, a start command with a port
  ready check) with every step made anew (``skip_cache``), then again with only its last
  step changed (every earlier layer cached);
- create → first command result (``true``) for that template, against the same for the
  default template, alternated create by create, medians and their ratio (the target: within
  10 %); after the timed part, the template's server must answer (``curl``) in each.

Prints a table; writes the samples to bench/results/templates-<date>.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import RESULTS

from firebox import Sandbox, Template, wait_for_port
from firebox.testing import LocalDaemon

APP = (
    "import http.server\n"
    "class H(http.server.SimpleHTTPRequestHandler):\n"
    "    def log_message(self, *a): pass\n"
    "http.server.ThreadingHTTPServer(('127.0.0.1', 8080), H).serve_forever()\n"
)


def _template(context: Path, last: str) -> Template:
    return (
        Template(file_context_path=context)
        .from_template("python")
        .copy("app", "/home/user/app/")
        .set_envs({"GREETING": "hello"})
        .set_workdir("/home/user/app")
        .run_cmd("echo ready > status.txt")
        .run_cmd(last)
        .set_start_cmd("python3 server.py", wait_for_port(8080))
    )


def _build(daemon: LocalDaemon, context: Path, last: str, skip_cache: bool) -> float:
    env = daemon.env()
    start = time.perf_counter()
    Template.build(
        _template(context, last),
        "bench-app",
        skip_cache=skip_cache,
        api_key=env["FIREBOX_API_KEY"],
        api_url=env["FIREBOX_URL"],
        build_timeout=1800,
    )
    return time.perf_counter() - start


def _first_result(daemon: LocalDaemon, template: str, check: str, expect: str) -> float:
    """ms from create to the first command's result (``true``, the same for every template);
    then, untimed, ``check`` must print ``expect`` (the template's server answers)."""
    env = daemon.env()
    start = time.perf_counter()
    sbx = Sandbox.create(
        template=template, api_key=env["FIREBOX_API_KEY"], api_url=env["FIREBOX_URL"]
    )
    try:
        sbx.commands.run("true")
        took = (time.perf_counter() - start) * 1000
        out = sbx.commands.run(check).stdout
        if expect not in out:
            raise RuntimeError(f"{template}: {check!r} gave {out!r}")
    finally:
        sbx.kill()
    return took


def measure(backend: str, pool: int, creates: int) -> dict[str, object]:
    args = ["--pool-size", str(pool)]
    with tempfile.TemporaryDirectory() as tmp, LocalDaemon(isolation=backend, args=args) as d:
        context = Path(tmp)
        (context / "app").mkdir()
        (context / "app" / "server.py").write_text(APP)
        (context / "app" / "index.html").write_text("hello from the template\n")
        stamp = str(time.time_ns())
        cold = _build(d, context, f"echo {stamp} > last.txt", skip_cache=True)
        warm = _build(d, context, f"echo {stamp}-2 > last.txt", skip_cache=False)
        custom: list[float] = []
        default: list[float] = []
        curl = "curl -s http://127.0.0.1:8080/index.html"
        _first_result(d, "bench-app", curl, "hello")  # the first create makes its pool
        _first_result(d, "python", "echo up", "up")
        for i in range(creates):
            pair = [
                lambda: custom.append(_first_result(d, "bench-app", curl, "hello")),
                lambda: default.append(_first_result(d, "python", "echo up", "up")),
            ]
            for fn in pair if i % 2 == 0 else reversed(pair):
                if pool:
                    # let the pools refill before each create: the steady state a pool serves
                    # (creates back to back outrun its refills on a 2-core host: issue 16)
                    time.sleep(3.0)
                fn()
        # what the run made goes with it (a microVM template's root disk is gigabytes)
        env = d.env()
        Template.delete("bench-app", api_key=env["FIREBOX_API_KEY"], api_url=env["FIREBOX_URL"])
        Template.prune(api_key=env["FIREBOX_API_KEY"], api_url=env["FIREBOX_URL"])
    return {
        "backend": backend,
        "pool": pool,
        "build_cold_s": cold,
        "build_warm_s": warm,
        "custom_ms": custom,
        "default_ms": default,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--creates", type=int, default=15)
    p.add_argument("--backends", default="jail,microvm")
    args = p.parse_args()
    rows = []
    for backend in args.backends.split(","):
        for pool in (0, 2):
            rows.append(measure(backend, pool, args.creates))
            print(f"{backend} pool={pool}: done", file=sys.stderr)
    lines = [
        "| backend | pool | build cold | build, last step changed "
        "| create → first result: template with server | default template | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        c, d = statistics.median(r["custom_ms"]), statistics.median(r["default_ms"])  # type: ignore[arg-type]
        lines.append(
            f"| {r['backend']} | {'on' if r['pool'] else 'off'} | {r['build_cold_s']:.1f} s | "
            f"{r['build_warm_s']:.1f} s | {c:.1f} ms | {d:.1f} ms | {c / d:.2f} |"
        )
    print("\n".join(lines))
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"templates-{time.strftime('%Y-%m-%d-%H%M%S')}.json"
    path.write_text(json.dumps({"rows": rows, "table": lines}, indent=2) + "\n")
    print(f"samples: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
