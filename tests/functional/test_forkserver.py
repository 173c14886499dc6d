"""Python interpreters forked from the sandbox's fork server (firebox/agent/forkserver.py)."""

from __future__ import annotations

import json
import shlex

from firebox import Sandbox
from firebox.agent import forkserver
from tests.conftest import Daemon

# The sandbox's processes, seen from inside: pid, parent, uid, effective capabilities, state
# and command line of each.
PROCESSES = r"""
import json, os
out = []
for p in os.listdir("/proc"):
    if not p.isdigit():
        continue
    try:
        cmd = open(f"/proc/{p}/cmdline", "rb").read().replace(b"\0", b" ").decode()
        comm = open(f"/proc/{p}/comm").read().strip()
        fields = dict(l.split(":\t", 1) for l in open(f"/proc/{p}/status").read().splitlines())
    except (OSError, ValueError):
        continue
    out.append({"pid": int(p), "ppid": int(fields["PPid"]), "uid": int(fields["Uid"].split()[0]),
                "caps": fields["CapEff"].strip(), "state": fields["State"][0], "cmd": cmd,
                "comm": comm})
print(json.dumps(out))
"""


def _processes(sbx: Sandbox) -> list[dict]:
    return json.loads(sbx.commands.run(f"python3 -c {shlex.quote(PROCESSES)}", user="root").stdout)


def _servers(sbx: Sandbox) -> list[dict]:
    return [p for p in _processes(sbx) if p["comm"] == forkserver.NAME]


def test_a_new_context_is_forked_by_the_users_fork_server(sbx: Sandbox) -> None:
    ctx = sbx.create_code_context(cwd="/tmp")
    info = json.loads(
        sbx.run_code(
            "import os, sys, json; print(json.dumps({'pid': os.getpid(), 'ppid': os.getppid(), "
            "'uid': os.getuid(), 'cwd': os.getcwd(), 'path0': sys.path[0], "
            "'argv': sys.argv, 'home': os.environ['HOME']}))",
            context=ctx,
        ).logs.stdout[0]
    )
    servers = _servers(sbx)
    assert len(servers) == 1, servers
    server = servers[0]
    user_uid = int(sbx.commands.run("id -u").stdout)
    # the user's own process, with no capability: it can give its forks nothing more
    assert server["uid"] == user_uid and int(server["caps"], 16) == 0
    me = next(p for p in _processes(sbx) if p["pid"] == info["pid"])
    assert me["cmd"] == server["cmd"]  # a fork of it, not a python started anew
    # ... reparented to the agent, which waits for it, as for an interpreter it started
    agent = next(p for p in _processes(sbx) if p["pid"] == info["ppid"])
    assert "firebox.agent" in agent["cmd"] and agent["uid"] == 0
    # what an interpreter started for the user in /tmp would be
    assert (info["uid"], info["cwd"], info["path0"], info["argv"]) == (user_uid, "/tmp", "", [""])
    assert info["home"] == "/home/user"
    sbx.remove_code_context(ctx)


def test_forked_contexts_are_independent_and_draw_their_own_random_numbers(sbx: Sandbox) -> None:
    a, b = sbx.create_code_context(), sbx.create_code_context()
    sbx.run_code("v = 'a'", context=a)
    assert sbx.run_code("v", context=b).error.name == "NameError"  # type: ignore[union-attr]
    draw = "import random; random.getrandbits(64)"
    assert sbx.run_code(draw, context=a).text != sbx.run_code(draw, context=b).text
    for ctx in (a, b):
        sbx.remove_code_context(ctx)


def test_exit_statuses_are_reported_and_nothing_is_left_a_zombie(sbx: Sandbox) -> None:
    ctx = sbx.create_code_context()
    ex = sbx.run_code("import os; os._exit(3)", context=ctx)
    assert ex.error is not None and "3" in ex.error.value, ex.error
    assert sbx.run_code("1 + 1", context=ctx).text == "2"  # restarted: forked again
    sbx.restart_code_context(ctx)
    sbx.remove_code_context(ctx)
    zombies = [p for p in _processes(sbx) if p["state"] == "Z"]
    assert zombies == []


def test_a_killed_fork_server_is_replaced_and_its_forks_live_on(sbx: Sandbox) -> None:
    ctx = sbx.create_code_context()
    sbx.run_code("kept = 5", context=ctx)
    (server,) = _servers(sbx)
    sbx.commands.run(f"kill -9 {server['pid']}")  # the user may: it is their process
    fresh = sbx.create_code_context()  # at once: it may find the server dying, not yet dead
    pid = int(sbx.run_code("import os; os.getpid()", context=fresh).text or 0)
    assert sbx.run_code("kept", context=ctx).text == "5"
    (replacement,) = _servers(sbx)
    assert replacement["pid"] != server["pid"]
    me = next(p for p in _processes(sbx) if p["pid"] == pid)
    assert me["cmd"] == replacement["cmd"]  # forked by the new one, not started
    for c in (ctx, fresh):
        sbx.remove_code_context(c)


def test_a_root_context_has_a_fork_server_of_its_own(daemon: Daemon, sbx: Sandbox) -> None:
    # the SDK starts contexts as the sandbox's user; the REST API takes another
    with daemon.client() as c:
        base = f"/sandboxes/{sbx.sandbox_id}/contexts"
        created = c.post(base, json={"language": "python", "user": "root"})
        assert created.status_code == 201, created.text
        cid = created.json()["id"]
        ran = c.post(
            f"/sandboxes/{sbx.sandbox_id}/code",
            json={"code": "import os; os.getuid()", "context_id": cid},
        )
        results = [json.loads(line) for line in ran.text.splitlines()]
        assert {"text/plain": "0"} in [r.get("data") for r in results], results
        user_uid = int(sbx.commands.run("id -u").stdout)
        assert sorted(p["uid"] for p in _servers(sbx)) == [0, user_uid]
        assert c.delete(f"{base}/{cid}").status_code == 204


def test_many_python_contexts_fit_in_a_default_sandbox(sbx: Sandbox, backend_name: str) -> None:
    """Each context a fork sharing the server's pages: six with pandas in use fit in the
    default memory (a microVM with six started interpreters ran out of it). On gVisor a fork
    shares its parent's memory in far larger pieces (~80 MB of copies per python context
    with pandas, measured), so six take a sandbox of 1 GB (docs/BACKENDS.md)."""
    if backend_name == "gvisor":
        with Sandbox.create(timeout=600, limits={"memory_mb": 1024}) as big:
            _six_contexts(big)
        return
    _six_contexts(sbx)


def _six_contexts(sbx: Sandbox) -> None:
    contexts = [sbx.create_code_context() for _ in range(6)]
    for i, ctx in enumerate(contexts):
        ex = sbx.run_code(
            f"import pandas as pd; len(pd.DataFrame({{'a': range({i})}}))", context=ctx
        )
        assert ex.error is None and ex.text == str(i), ex.error
    for ctx in contexts:
        assert sbx.run_code("1", context=ctx).text == "1"  # none was killed meanwhile
        sbx.remove_code_context(ctx)
