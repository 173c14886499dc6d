"""A custom template whose web app is already running when a sandbox starts.

Builds the template `template-app` on firebox's `python` template: the app beside this file
(template_app/server.py, standard library only) is copied in, environment variables and a
working directory are set, and the app is the template's start command, ready once something
listens on port 8080. A sandbox made from it answers on that port the moment the create
returns. Nothing is installed from the internet: the build needs no network.

Needs a running daemon (`firebox serve`); the SDK finds it through FIREBOX_URL and
FIREBOX_API_KEY, or the local defaults. Run it again and every step is CACHED. The CLI builds
the same template: `firebox template build examples/template_app.py --name template-app`.
"""

import time
from pathlib import Path

from firebox import LogEntry, Sandbox, Template, wait_for_port

template = (
    Template(file_context_path=Path(__file__).with_name("template_app"))
    .from_template("python")
    .copy("server.py", "/home/user/app/")
    # values are expanded by the build's shell, in order: APP_URL sees PORT
    .set_envs({"GREETING": "hello from template-app", "PORT": "8080"})
    .set_envs({"APP_URL": "http://localhost:$PORT/"})
    .set_workdir("/home/user/app")
    .set_start_cmd("python3 server.py", wait_for_port(8080))
)


def show(entry: LogEntry) -> None:
    print(f"[build] {entry.message}", flush=True)


if __name__ == "__main__":  # `firebox template build` takes `template` and runs nothing else
    started = time.monotonic()
    Template.build(template, "template-app", on_build_logs=show)
    build_s = time.monotonic() - started

    started = time.monotonic()
    with Sandbox.create(template="template-app", timeout=60) as sbx:
        create_ms = (time.monotonic() - started) * 1000
        # no waiting and no retry: the app was ready before the create returned
        print("curl -s localhost:8080 ->", sbx.commands.run("curl -s localhost:8080").stdout)
        print(sbx.commands.run("echo APP_URL=$APP_URL").stdout, end="")
    print(f"build {build_s:.1f} s, create {create_ms:.0f} ms")
