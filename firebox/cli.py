"""The `firebox` command: thin; it parses arguments and calls the SDK, the server or the images.

firebox serve [--host H] [--port P] [--isolation auto|microvm|gvisor|jail]
firebox image build [TEMPLATE] [--force]
firebox sandbox create [--template T] [--timeout S] [--metadata k=v ...]
firebox sandbox list [--metadata k=v ...]
firebox sandbox kill ID
firebox sandbox exec ID -- COMMAND...
firebox run (--code CODE | FILE) [--language L] [--sandbox ID] [--out DIR] [--timeout S]
firebox template build (Dockerfile | FILE.py) --name NAME [--tag T ...] [--cpu N] [--memory MB]
                       [--skip-cache] [--build-arg K=V ...] [--context DIR]
firebox template list | show NAME | delete NAME | prune
firebox doctor
firebox e2b env
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from firebox import cli_cluster
from firebox.images import DEFAULT_TEMPLATE
from firebox.server.auth import e2b_shaped
from firebox.server.config import DEFAULT_PORT, ServerConfig, default_home
from firebox.settings import Limits

if TYPE_CHECKING:
    from firebox import LogEntry
    from firebox._core.template import TemplateClass


def _pairs(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"firebox: expected key=value, got {item!r}")
        out[key] = value
    return out


def cmd_serve(args: argparse.Namespace) -> int:
    import logging

    from firebox.server import daemon

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        limits = Limits(**{name: getattr(args, name) for name in Limits.model_fields})
    except ValueError as e:  # pydantic's ValidationError: which flag, and its bounds
        print(f"firebox serve: {e}".replace("\n", "; "), file=sys.stderr)
        return 2
    config = ServerConfig(
        home=Path(args.home),
        host=args.host,
        port=args.port,
        isolation=args.isolation,
        domain=args.domain,
        pool_size=args.pool_size,
        max_sandboxes=args.max_sandboxes,
        max_memory_mb=args.max_memory_mb,
        min_free_memory_mb=args.min_free_memory_mb,
        min_free_disk_mb=args.min_free_disk_mb,
        max_output_mb=args.max_output_mb,
        limits=limits,
        max_sandbox_memory_mb=args.max_sandbox_memory_mb,
        max_sandbox_cpus=args.max_sandbox_cpus,
        egress_resolve=args.egress_resolve,
        egress_permit=args.egress_permit,
        max_builds=args.max_builds,
        build_allow=args.build_allow,
        build_disk_mb=args.build_disk_mb,
        max_build_memory_mb=args.max_build_memory_mb,
        build_timeout=args.build_timeout,
        build_step_timeout=args.build_step_timeout,
        paused_ttl=args.paused_ttl_hours * 3600,
        max_paused_mb_per_key=args.max_paused_mb_per_key,
        keep_sandboxes_on_stop=args.on_stop == "keep",
    )
    cli_cluster.node_config(args, config)
    from firebox.server.egress import parse_resolve
    from firebox.server.egress_policy import PolicyError, parse_networks

    try:  # checked here so that a typo is one clear line, not a traceback from the app
        parse_resolve(config.egress_resolve)
        parse_networks(config.egress_permit)
    except PolicyError as e:
        print(f"firebox serve: {e}", file=sys.stderr)
        return 2
    return daemon.run(config)


def cmd_image_build(args: argparse.Namespace) -> int:
    from firebox import images

    path = images.build_image(
        args.template, progress=lambda m: print(f"[image] {m}"), force=args.force
    )
    print(f"[image] {args.template} ready at {path}")
    if not args.no_microvm:
        _build_microvm_pieces(args.template)
    return 0


def _build_microvm_pieces(template: str) -> None:
    """The same image for microVMs: kernel, root disk, and the template's snapshot."""
    import asyncio

    from firebox.backends.microvm.backend import MicroVMBackend
    from firebox.backends.owner import Owner
    from firebox.server.boot import spec_for

    # An owner of its own: a daemon may be serving ``home`` meanwhile, and its VMs' state is
    # none of this run's business (backends/owner.py).
    backend = MicroVMBackend(Owner.of_process("image-build"), ServerConfig().uid_base)
    verdict = backend.availability()
    if not verdict.ok:
        print(f"[image] no microVM pieces: the microvm backend cannot run here ({verdict.reason})")
        return

    async def prepare() -> None:
        try:
            await backend.prepare(spec_for(template, ServerConfig().limits))
        finally:
            await backend.close()

    print(f"[image] microVM: {verdict.reason}")
    asyncio.run(prepare())
    print(f"[image] {template} snapshot for microVMs ready")


def cmd_doctor(args: argparse.Namespace) -> int:
    from firebox import images
    from firebox.backends.base import BackendError
    from firebox.backends.owner import Owner
    from firebox.backends.select import consequence, report, select
    from firebox.confine import criu

    ok_any = False
    uid_base = ServerConfig().uid_base
    for name, verdict in report(uid_base).items():
        mark = "ok " if verdict.ok else "no "
        ok_any |= verdict.ok
        print(f"{mark} {name:8} {verdict.reason}")
        if advice := verdict.details.get("advice"):
            print(f"    warning: {advice}")
    try:
        chosen = select("auto", Owner.of_process("doctor"), uid_base)
        print(f"    auto: {chosen.name}: {consequence(chosen)}")
    except BackendError as e:
        print(f"    auto: {e}")
    print(f"    pause (jail): {criu.pause_line(criu.verdict())}")
    for template in images.known_templates():
        path = images.image_path(template)
        state = f"built at {path}" if path else f"not built (run `firebox image build {template}`)"
        print(f"    image {template}: {state}")
    if not ok_any:
        print("no isolation backend works on this host; see the reasons above")
    return 0 if ok_any else 1


def cmd_sandbox(args: argparse.Namespace) -> int:
    from firebox import CommandExitException, Sandbox, SandboxQuery

    if args.action == "create":
        sbx = Sandbox.create(
            template=args.template,
            timeout=args.timeout,
            metadata=_pairs(args.metadata),
            snapshot=args.snapshot,
        )
        print(sbx.sandbox_id)
    elif args.action == "snapshot":
        snap = Sandbox.create_snapshot(args.id, name=args.name)
        print(f"{snap.snapshot_id}  keeps {snap.keeps}  {snap.size_bytes >> 20} MB")
    elif args.action == "snapshots":
        for s in Sandbox.list_snapshots():
            print(
                f"{s.snapshot_id}  {s.name or '-':16} of {s.sandbox_id}  {s.template:10} "
                f"keeps {s.keeps:11} {s.size_bytes >> 20} MB  {s.created_at:%Y-%m-%d %H:%M:%S}"
            )
    elif args.action == "delete-snapshot":
        if not Sandbox.delete_snapshot(args.ref):
            raise SystemExit(f"firebox: no snapshot {args.ref!r} of this key")
    elif args.action == "fork":
        failed = 0
        for made in Sandbox.fork(args.id, count=args.count, timeout=args.timeout):
            if isinstance(made, Sandbox):
                print(made.sandbox_id)
            else:
                failed += 1
                print(f"firebox: a fork failed: {made}", file=sys.stderr)
        return 1 if failed else 0
    elif args.action == "list":
        query = SandboxQuery(state=args.state) if args.state else None
        for info in Sandbox.list(metadata=_pairs(args.metadata) or None, query=query):
            when = f"ends {info.end_at:%Y-%m-%d %H:%M:%S}"
            if info.paused_at is not None:
                when = f"paused {info.paused_at:%Y-%m-%d %H:%M:%S}"
            print(
                f"{info.sandbox_id}  {info.template:10} {info.state:8} {when}  "
                f"{json.dumps(info.metadata)}"
            )
    elif args.action == "kill":
        Sandbox.kill(args.id)  # not connect: that would resume a paused one first
    elif args.action == "pause":
        Sandbox.pause(args.id)
        info = Sandbox.get_info(args.id)
        kept = {"disk": "memory and disk on disk", "memory": "frozen in memory"}
        print(f"{args.id} paused ({kept.get(info.pause_keeps or '', 'kept')})")
    elif args.action == "resume":
        Sandbox.resume(args.id, timeout=args.timeout)
        info = Sandbox.get_info(args.id)
        print(f"{args.id} running, ends {info.end_at:%Y-%m-%d %H:%M:%S}")
    elif args.action == "top":
        from firebox.top import top

        return top(once=args.once, interval=args.interval)
    elif args.action == "shell":
        from firebox.terminal import shell

        return shell(args.id, user=args.user, cmd=args.cmd)
    elif args.action == "exec":
        argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
        if not argv:
            raise SystemExit("firebox: give the command after --, e.g. `exec ID -- ls -la`")
        sbx = Sandbox.connect(args.id)
        line = argv[0] if len(argv) == 1 else shlex.join(argv)
        try:
            result = sbx.commands.run(
                line,
                user=args.user,
                timeout=args.timeout,
                on_stdout=lambda s: print(s, end="", flush=True),
                on_stderr=lambda s: print(s, end="", file=sys.stderr, flush=True),
            )
        except CommandExitException as e:
            return e.exit_code
        return result.exit_code
    return 0


def cmd_mcp(args: argparse.Namespace) -> int:
    from firebox.mcp_stdio import main

    return main()


def cmd_e2b_env(args: argparse.Namespace) -> int:
    """Print the environment that points E2B's own SDKs at this daemon, for a shell to eval:
    the control API under /e2b, in-sandbox traffic at the daemon itself, and the key."""
    from firebox._core.config import resolve_config
    from firebox.exceptions import FireboxException

    try:
        config = resolve_config()
    except FireboxException as e:
        raise SystemExit(f"firebox: {e}") from None
    env = {
        "E2B_API_URL": f"{config.api_url}/e2b",
        "E2B_SANDBOX_URL": config.api_url,
        "E2B_API_KEY": config.api_key,
    }
    if not e2b_shaped(config.api_key):
        # a key minted before keys took E2B's form: E2B's JavaScript SDK would refuse it
        env["E2B_VALIDATE_API_KEY"] = "false"
    for name, value in env.items():
        print(f"export {name}={shlex.quote(value)}")
    return 0


def _load_template(args: argparse.Namespace) -> TemplateClass:
    """The template to build: a Dockerfile, parsed, or a Python file's ``template``."""
    from firebox import Template
    from firebox._core.template import TemplateBase, TemplateBuilder, TemplateFinal

    path = Path(args.file)
    if path.suffix == ".py":
        import runpy

        if args.build_arg:
            raise SystemExit("firebox: --build-arg applies to Dockerfiles only")
        namespace = runpy.run_path(str(path), run_name="__firebox_template__")
        template = namespace.get("template")
        if not isinstance(template, TemplateBase | TemplateBuilder | TemplateFinal):
            raise SystemExit(
                f"firebox: {path} must define a module-level `template`, e.g. "
                "template = Template().from_debian_image().apt_install('curl')"
            )
        return template
    if not path.is_file():
        raise SystemExit(f"firebox: no Dockerfile at {path}")
    context = Path(args.context) if args.context else path.parent
    return Template(file_context_path=context).from_dockerfile(
        str(path.resolve()), build_args=_pairs(args.build_arg)
    )


def _print_log(entry: LogEntry) -> None:
    stream = sys.stderr if entry.level in ("warn", "error") else sys.stdout
    print(f"[{entry.timestamp:%H:%M:%S}] {entry.message}", file=stream, flush=True)


def cmd_template(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from firebox import Template

    if args.action == "build":
        info = Template.build(
            _load_template(args),
            args.name,
            tags=args.tag or None,
            cpu_count=args.cpu,
            memory_mb=args.memory,
            skip_cache=args.skip_cache,
            on_build_logs=_print_log,
        )
        print(f"template {info.name} ready ({info.template_id}, build {info.build_id})")
    elif args.action == "list":
        for t in Template.list():
            size = f"{t.size_bytes / 1e6:.0f} MB" if t.size_bytes is not None else "-"
            built = f"{t.built_at:%Y-%m-%d %H:%M}" if t.built_at else "-"
            print(f"{t.name:24} {','.join(t.tags) or '-':16} {size:>8}  built {built}")
    elif args.action == "show":
        print(json.dumps(asdict(Template.get(args.name)), indent=2, default=str))
    elif args.action == "delete":
        if not Template.delete(args.name):
            print(f"firebox: no template {args.name}", file=sys.stderr)
            return 1
    elif args.action == "prune":
        print(json.dumps(Template.prune(), indent=2, default=str))
    return 0


IMAGE_SUFFIXES = {"png": "png", "jpeg": "jpg", "svg": "svg", "pdf": "pdf"}


def cmd_run(args: argparse.Namespace) -> int:
    """Run a cell: text results and output to the terminal, image results to files."""
    import base64

    from firebox import Sandbox

    if (args.code is None) == (args.file is None):
        raise SystemExit("firebox: give either --code '...' or a file to run")
    code = args.code if args.code is not None else Path(args.file).read_text()
    language = args.language
    if language is None and args.file is not None:
        language = {".js": "javascript", ".sh": "bash"}.get(Path(args.file).suffix, "python")
    sbx = Sandbox.connect(args.sandbox) if args.sandbox else Sandbox.create()
    try:
        execution = sbx.run_code(
            code,
            language=language,
            timeout=args.timeout,
            on_stdout=lambda m: print(m.line, end="", flush=True),
            on_stderr=lambda m: print(m.line, end="", file=sys.stderr, flush=True),
        )
    finally:
        if not args.sandbox:
            sbx.kill()
    out = Path(args.out)
    for i, result in enumerate(execution.results):
        saved = False
        for form, suffix in IMAGE_SUFFIXES.items():
            data = getattr(result, form)
            if data is None:
                continue
            out.mkdir(parents=True, exist_ok=True)
            path = out / f"result-{execution.execution_count or 0}-{i}.{suffix}"
            path.write_bytes(data.encode() if form == "svg" else base64.b64decode(data))
            print(f"[{form} written to {path}]")
            saved = True
        if result.chart is not None:
            print(json.dumps(result.chart, indent=2, default=str))
        if not saved and result.text is not None:
            print(result.text)
    if execution.error is not None:
        error = execution.error
        print(error.traceback or f"{error.name}: {error.value}", file=sys.stderr)
        return 1
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="firebox", description="Sandboxes for untrusted code.")
    p.add_argument("--home", default=str(default_home()), help="state dir (FIREBOX_HOME)")
    sub = p.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the daemon")
    serve.add_argument("--host", default="127.0.0.1", help="listen address (default loopback)")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT)
    serve.add_argument(
        "--isolation",
        default="auto",
        choices=["auto", "microvm", "gvisor", "jail"],
        help="auto: a microVM with KVM, else gVisor, else a microVM under emulation; the jail "
        "(sharing the host's kernel) only by name",
    )
    serve.add_argument(
        "--domain",
        default="",
        help="preview hosts are <port>-<sandbox id>.<domain>, routed by their Host header "
        "(default localhost:<port>, which browsers resolve to loopback; point a wildcard DNS "
        "name at the daemon, or at a TLS proxy in front of it, and name it here)",
    )
    serve.add_argument(
        "--pool-size",
        type=int,
        default=ServerConfig().pool_size,
        help="booted sandboxes kept waiting per template (0 disables the warm pool)",
    )
    defaults = ServerConfig()
    for flag, default, what in (
        ("--max-sandboxes", defaults.max_sandboxes, "live and pooled sandboxes on this host"),
        ("--max-memory-mb", defaults.max_memory_mb, "their memory limits summed (0: no bound)"),
        ("--min-free-memory-mb", defaults.min_free_memory_mb, "host memory kept available"),
        ("--min-free-disk-mb", defaults.min_free_disk_mb, "disk kept free where sandboxes write"),
        ("--max-output-mb", defaults.max_output_mb, "the most output_mb a create may ask"),
        ("--max-sandbox-memory-mb", defaults.max_sandbox_memory_mb, "the most a create may ask"),
        ("--max-sandbox-cpus", defaults.max_sandbox_cpus, "the most a create may ask (0: all)"),
    ):
        serve.add_argument(
            flag, type=type(default), default=default, help=f"{what} (default {default})"
        )
    # a sandbox's limits unless its create asks for others: one flag per limit
    for name, info in Limits.model_fields.items():
        default = getattr(defaults.limits, name)
        serve.add_argument(
            "--" + name.replace("_", "-"),
            type=type(default),
            default=default,
            help=f"unless a create asks: {info.description} (default {default})",
        )
    serve.add_argument(
        "--egress-resolve",
        action="append",
        default=[],
        metavar="NAME=ADDR[,ADDR]",
        help="a name the egress proxy resolves to these addresses instead of asking DNS",
    )
    serve.add_argument(
        "--egress-permit",
        action="append",
        default=[],
        metavar="CIDR",
        help="lift this range off the always-denied floor (e.g. an internal package mirror); "
        "a sandbox's policy must still allow it",
    )
    serve.add_argument(
        "--on-stop",
        choices=["keep", "end"],
        default="keep",
        help="what a stopping daemon does with its sandboxes: keep them running for the next "
        "daemon to adopt (default), or end them",
    )
    serve.add_argument(
        "--paused-ttl-hours",
        type=float,
        default=defaults.paused_ttl / 3600,
        help=f"hours a paused sandbox is kept before it is ended (default "
        f"{defaults.paused_ttl / 3600:g})",
    )
    serve.add_argument(
        "--max-paused-mb-per-key",
        type=int,
        default=defaults.max_paused_mb_per_key,
        help="what one key's paused sandboxes may hold of the host, in MB (default "
        f"{defaults.max_paused_mb_per_key})",
    )
    serve.add_argument(
        "--max-builds", type=int, default=1, help="template builds run at once (default 1)"
    )
    serve.add_argument(
        "--build-allow",
        action="append",
        default=[],
        metavar="HOST",
        help="a host template builds may reach besides the package sources this host uses",
    )
    serve.add_argument(
        "--build-disk-mb",
        type=int,
        default=4096,
        help="what one template build step may write, in MB (default 4096)",
    )
    serve.add_argument(
        "--max-build-memory-mb",
        type=int,
        default=8192,
        help="the most memory a template build may ask for, in MB (default 8192)",
    )
    serve.add_argument(
        "--build-timeout",
        type=float,
        default=3600.0,
        help="seconds a whole template build may take (default 3600)",
    )
    serve.add_argument(
        "--build-step-timeout",
        type=float,
        default=1200.0,
        help="seconds one step of a template build may take (default 1200)",
    )
    cli_cluster.add_node_flags(serve)
    serve.set_defaults(func=cmd_serve)
    cli_cluster.add_commands(sub)

    image = sub.add_parser("image", help="guest images")
    image_sub = image.add_subparsers(dest="action", required=True)
    build = image_sub.add_parser("build", help="build (or reuse) a template's root filesystem")
    build.add_argument("template", nargs="?", default=DEFAULT_TEMPLATE)
    build.add_argument("--force", action="store_true", help="rebuild even if cached")
    build.add_argument(
        "--no-microvm",
        action="store_true",
        help="only the root tree (skip the microVM kernel, root disk and snapshot)",
    )
    build.set_defaults(func=cmd_image_build)

    sandbox = sub.add_parser(
        "sandbox", help="create, list, pause, resume, kill sandboxes and run commands"
    )
    sandbox_sub = sandbox.add_subparsers(dest="action", required=True)
    create = sandbox_sub.add_parser("create")
    create.add_argument("--template", default=DEFAULT_TEMPLATE)
    create.add_argument("--timeout", type=int, default=300)
    create.add_argument("--metadata", nargs="*", default=[], metavar="K=V")
    create.add_argument("--snapshot", help="start from this snapshot (id or name)")
    snap = sandbox_sub.add_parser("snapshot", help="save a running sandbox to start others from")
    snap.add_argument("id")
    snap.add_argument("--name", help="a name to find it by, unique per key")
    sandbox_sub.add_parser("snapshots", help="list this key's snapshots")
    delsnap = sandbox_sub.add_parser("delete-snapshot", help="delete a snapshot")
    delsnap.add_argument("ref", metavar="ID_OR_NAME")
    fork = sandbox_sub.add_parser("fork", help="new sandboxes starting where one is now")
    fork.add_argument("id")
    fork.add_argument("--count", type=int, default=1)
    fork.add_argument("--timeout", type=int, default=300)
    lst = sandbox_sub.add_parser("list")
    lst.add_argument("--metadata", nargs="*", default=[], metavar="K=V")
    lst.add_argument("--state", nargs="*", choices=["running", "paused"], default=[])
    kill = sandbox_sub.add_parser("kill")
    kill.add_argument("id")
    pause = sandbox_sub.add_parser("pause", help="pause a sandbox, keeping all of it")
    pause.add_argument("id")
    resume = sandbox_sub.add_parser("resume", help="resume a paused sandbox")
    resume.add_argument("id")
    resume.add_argument("--timeout", type=int, help="seconds from now, if longer than it had")
    tp = sandbox_sub.add_parser("top", help="live CPU, memory and disk of your sandboxes")
    tp.add_argument("--once", action="store_true", help="print once and exit")
    tp.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    sh = sandbox_sub.add_parser("shell", help="an interactive terminal in a sandbox")
    sh.add_argument("id")
    sh.add_argument("--user", default="user", choices=["user", "root"])
    sh.add_argument("--cmd", help="run this instead of a login shell")
    exe = sandbox_sub.add_parser("exec")
    exe.add_argument("id")
    exe.add_argument("--user", default="user", choices=["user", "root"])
    exe.add_argument("--timeout", type=float, default=60)
    exe.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND")
    sandbox.set_defaults(func=cmd_sandbox)

    run = sub.add_parser("run", help="run code in a sandbox (a new one unless --sandbox)")
    run.add_argument("file", nargs="?", help="a file of code (.py, .js, .sh)")
    run.add_argument("--code", help="the code itself")
    run.add_argument("--language", choices=["python", "javascript", "typescript", "bash"])
    run.add_argument("--sandbox", help="run in this running sandbox instead of a new one")
    run.add_argument("--out", default=".", help="where image results are written")
    run.add_argument("--timeout", type=float, default=60)
    run.set_defaults(func=cmd_run)

    template = sub.add_parser("template", help="build, list, show and delete custom templates")
    template_sub = template.add_subparsers(dest="action", required=True)
    tbuild = template_sub.add_parser(
        "build", help="build a template from a Dockerfile or a .py file defining `template`"
    )
    tbuild.add_argument("file", help="a Dockerfile, or a Python file with a module-level template")
    tbuild.add_argument("--name", required=True, help="the template's name (name or name:tag)")
    tbuild.add_argument("--tag", action="append", default=[], help="also tag it so (repeatable)")
    tbuild.add_argument("--cpu", type=int, default=2, help="CPUs of its sandboxes (default 2)")
    tbuild.add_argument("--memory", type=int, default=2048, help="memory MB (default 2048)")
    tbuild.add_argument("--skip-cache", action="store_true", help="build every step again")
    tbuild.add_argument(
        "--build-arg", action="append", default=[], metavar="K=V", help="a Dockerfile ARG"
    )
    tbuild.add_argument("--context", help="the Dockerfile's build context (default: its directory)")
    template_sub.add_parser("list", help="the templates this key can use")
    for action, what in (("show", "one template, as JSON"), ("delete", "delete a template")):
        template_sub.add_parser(action, help=what).add_argument("name")
    template_sub.add_parser("prune", help="drop build cache no template needs (admin key)")
    template.set_defaults(func=cmd_template)

    mcp = sub.add_parser(
        "mcp", help="serve the daemon's MCP tools over stdio (for desktop agents and IDEs)"
    )
    mcp.set_defaults(func=cmd_mcp)
    doctor = sub.add_parser("doctor", help="which isolation backends work here, and why not")
    doctor.set_defaults(func=cmd_doctor)

    e2b = sub.add_parser("e2b", help="use E2B's own SDKs with this daemon")
    e2b_sub = e2b.add_subparsers(dest="action", required=True)
    e2b_env = e2b_sub.add_parser(
        "env", help='print the environment for E2B\'s SDKs: eval "$(firebox e2b env)"'
    )
    e2b_env.set_defaults(func=cmd_e2b_env)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from firebox.exceptions import FireboxException

    try:
        return int(args.func(args))
    except FireboxException as e:
        print(f"firebox: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
